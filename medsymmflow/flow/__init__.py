"""The flow: symmetric path, loss and time schedules, ODE solver."""

from medsymmflow.flow.loss import DECOUPLED_MODES, TIME_SCHEDULES, SymmFlowLoss, TimeSampler, check_decoupled_modes
from medsymmflow.flow.path import ENDPOINT_TARGETS, SymmetricPath, SymmetricPathSample, split_times
from medsymmflow.flow.solver import ADAPTIVE_METHODS, FIXED_STEP_METHODS, METHODS, SolverResult, SymmFlowSolver, time_grid

__all__ = [
    "ADAPTIVE_METHODS",
    "DECOUPLED_MODES",
    "ENDPOINT_TARGETS",
    "FIXED_STEP_METHODS",
    "METHODS",
    "TIME_SCHEDULES",
    "SolverResult",
    "SymmetricPath",
    "SymmetricPathSample",
    "SymmFlowLoss",
    "SymmFlowSolver",
    "TimeSampler",
    "check_decoupled_modes",
    "split_times",
    "time_grid",
]
