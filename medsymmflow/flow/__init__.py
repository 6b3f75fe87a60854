"""The flow: symmetric path, loss and time schedules, ODE solver, classifier-free guidance."""

from medsymmflow.flow.guidance import GuidedVelocity, check_guidance_scale, guidance_evaluations
from medsymmflow.flow.loss import DECOUPLED_MODES, TIME_SCHEDULES, SymmFlowLoss, TimeSampler, check_decoupled_modes
from medsymmflow.flow.path import ENDPOINT_TARGETS, SymmetricPath, SymmetricPathSample, split_times
from medsymmflow.flow.solver import (
    ADAPTIVE_METHODS,
    DEFAULT_HELD_TIMES,
    FIXED_STEP_METHODS,
    HOLDS,
    METHODS,
    SolverResult,
    SymmFlowSolver,
    time_grid,
)

__all__ = [
    "ADAPTIVE_METHODS",
    "DECOUPLED_MODES",
    "DEFAULT_HELD_TIMES",
    "ENDPOINT_TARGETS",
    "FIXED_STEP_METHODS",
    "GuidedVelocity",
    "HOLDS",
    "METHODS",
    "TIME_SCHEDULES",
    "SolverResult",
    "SymmetricPath",
    "SymmetricPathSample",
    "SymmFlowLoss",
    "SymmFlowSolver",
    "TimeSampler",
    "check_decoupled_modes",
    "check_guidance_scale",
    "guidance_evaluations",
    "split_times",
    "time_grid",
]
