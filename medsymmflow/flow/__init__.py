"""The flow: symmetric path, loss and time schedules, ODE solver, classifier-free guidance."""

from medsymmflow.flow.guidance import GuidedVelocity, check_guidance_scale, guidance_evaluations
from medsymmflow.flow.loss import TIME_SCHEDULES, SymmFlowLoss, TimeSampler
from medsymmflow.flow.path import ENDPOINT_TARGETS, SymmetricPath, SymmetricPathSample
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
    "check_guidance_scale",
    "guidance_evaluations",
    "time_grid",
]
