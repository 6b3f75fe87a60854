"""ODE integration of a joint velocity field ``v(x_t, y_t, t) -> (v_x, v_y)`` in either time direction.

Generation integrates t: 0 -> 1 from ``(noise_x, code_mask)``; classification / segmentation
integrates t: 1 -> 0 from ``(image, noise_y)``. Fixed-step methods (``euler``, ``midpoint``,
``heun``) are implemented here; ``rk4`` (fixed-step, one step per grid interval) and the adaptive
methods (``dopri5``, ``bosh3``, ``adaptive_heun``, ...) are delegated to torchdiffeq.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from medsymmflow.checks import one_of, positive_int

__all__ = [
    "ADAPTIVE_METHODS", "FIXED_STEP_METHODS", "METHODS", "SolverResult", "SymmFlowSolver", "VelocityFn", "check_method",
    "time_grid",
]

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]

# method -> velocity evaluations per step, for the methods implemented here
FIXED_STEP_METHODS = {"euler": 1, "midpoint": 2, "heun": 2}
# torchdiffeq's fixed-grid methods: one step per interval of the time grid, tolerances unused
TORCHDIFFEQ_FIXED_STEP_METHODS = ("rk4",)
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
METHODS = tuple(FIXED_STEP_METHODS) + TORCHDIFFEQ_FIXED_STEP_METHODS + ADAPTIVE_METHODS


def check_method(method: str, name: str = "ODE method") -> str:
    """``method`` when :meth:`SymmFlowSolver.sample` can integrate with it; ValueError naming the choices."""
    return one_of(method, METHODS, name)


@dataclass
class SolverResult:
    """Final state, number of velocity evaluations and (optionally) the states at every grid time."""

    x: torch.Tensor
    y: torch.Tensor
    nfe: int
    times: torch.Tensor
    trajectory_x: torch.Tensor | None = None
    trajectory_y: torch.Tensor | None = None


def time_grid(t_start: float, t_end: float, steps: int) -> torch.Tensor:
    """``steps + 1`` evenly spaced times from ``t_start`` to ``t_end`` (either direction)."""
    steps = positive_int(steps, "steps")
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if t_start == t_end:
        raise ValueError("t_start and t_end must differ")
    return torch.linspace(float(t_start), float(t_end), int(steps) + 1, dtype=torch.float64)


class SymmFlowSolver:
    """Integrates a joint velocity field; ``sample`` returns the state at the end of the time grid."""

    def __init__(self, velocity: VelocityFn | torch.nn.Module) -> None:
        self.velocity = velocity

    def _eval(self, x: torch.Tensor, y: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
        v_x, v_y = self.velocity(x, y, tt)
        if v_x.shape != x.shape or v_y.shape != y.shape:
            raise ValueError(
                f"velocity returned shapes {tuple(v_x.shape)}, {tuple(v_y.shape)} for states "
                f"{tuple(x.shape)}, {tuple(y.shape)}"
            )
        return v_x, v_y

    def sample(
        self,
        x_init: torch.Tensor,
        y_init: torch.Tensor,
        t_start: float = 1.0,
        t_end: float = 0.0,
        steps: int = 1,
        method: str = "euler",
        times: Sequence[float] | torch.Tensor | None = None,
        return_intermediates: bool = False,
        atol: float = 1e-5,
        rtol: float = 1e-5,
    ) -> SolverResult:
        """Integrate from ``(x_init, y_init)`` at ``t_start`` to ``t_end`` in ``steps`` steps (or over ``times``)."""
        if x_init.shape[0] != y_init.shape[0]:
            raise ValueError(f"x_init and y_init batch sizes differ: {x_init.shape[0]} vs {y_init.shape[0]}")
        for name, v in (("x_init", x_init), ("y_init", y_init)):
            if not torch.isfinite(v).all():
                raise ValueError(f"{name} contains NaN or infinite values")
        grid = time_grid(t_start, t_end, steps) if times is None else torch.as_tensor(times, dtype=torch.float64)
        if grid.ndim != 1 or grid.numel() < 2:
            raise ValueError("times must be a 1-D sequence of at least two values")
        if method in FIXED_STEP_METHODS:
            return self._fixed(x_init, y_init, grid, method, return_intermediates)
        check_method(method)
        return self._torchdiffeq(x_init, y_init, grid, method, return_intermediates, atol, rtol)

    def _fixed(
        self, x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, method: str, keep: bool
    ) -> SolverResult:
        xs, ys = ([x], [y]) if keep else (None, None)
        nfe = 0
        for t0, t1 in zip(grid[:-1].tolist(), grid[1:].tolist()):
            dt = t1 - t0
            k1x, k1y = self._eval(x, y, t0)
            if method == "euler":
                x, y = x + dt * k1x, y + dt * k1y
            elif method == "midpoint":
                k2x, k2y = self._eval(x + 0.5 * dt * k1x, y + 0.5 * dt * k1y, t0 + 0.5 * dt)
                x, y = x + dt * k2x, y + dt * k2y
            else:  # heun
                k2x, k2y = self._eval(x + dt * k1x, y + dt * k1y, t1)
                x, y = x + 0.5 * dt * (k1x + k2x), y + 0.5 * dt * (k1y + k2y)
            nfe += FIXED_STEP_METHODS[method]
            if keep:
                xs.append(x)
                ys.append(y)
        return SolverResult(
            x=x, y=y, nfe=nfe, times=grid,
            trajectory_x=torch.stack(xs) if keep else None,
            trajectory_y=torch.stack(ys) if keep else None,
        )

    def _torchdiffeq(
        self, x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, method: str, keep: bool, atol: float, rtol: float
    ) -> SolverResult:
        from torchdiffeq import odeint  # lazy: only adaptive methods need it

        nfe = 0

        def rhs(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal nfe
            nfe += 1
            return self._eval(state[0], state[1], float(t))

        options = {"step_size": float(abs(grid[1] - grid[0]))} if method in TORCHDIFFEQ_FIXED_STEP_METHODS else None
        traj_x, traj_y = odeint(
            rhs, (x, y), grid.to(device=x.device, dtype=x.dtype), method=method, atol=atol, rtol=rtol, options=options
        )
        return SolverResult(
            x=traj_x[-1], y=traj_y[-1], nfe=nfe, times=grid,
            trajectory_x=traj_x if keep else None, trajectory_y=traj_y if keep else None,
        )
