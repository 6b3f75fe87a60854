"""ODE integration of a joint velocity field ``v(x_t, y_t, t) -> (v_x, v_y)`` in either time direction.

Generation integrates t: 0 -> 1 from ``(noise_x, code_mask)``; classification / segmentation
integrates t: 1 -> 0 from ``(image, noise_y)``. Fixed-step methods (``euler``, ``midpoint``,
``heun``) are implemented here; ``rk4`` (fixed-step, one step per grid interval) and the adaptive
methods (``dopri5``, ``bosh3``, ``adaptive_heun``, ...) are delegated to torchdiffeq.

``hold`` integrates one half with the other held fixed (a network trained with decoupled times, see
:class:`~medsymmflow.networks.SymmFlowUNet`): the velocity then gets ``t`` of shape ``(B, 2)`` with columns
``(t_x, t_y)``, the held half's column fixed at ``held_time``, and the held half is returned unchanged.
``hold="y"`` with ``held_time=0`` is generation with the label kept clean (t_x: 0 -> 1, ``t = (t_x, 0)``);
``hold="x"`` with ``held_time=1`` is classification with the image kept clean (t_y: 1 -> 0, ``t = (1, t_y)``).
Without ``hold`` (the paper's coupled path) ``t`` has shape ``(B,)`` and both halves move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from medsymmflow.checks import one_of, positive_int

__all__ = [
    "ADAPTIVE_METHODS", "DEFAULT_HELD_TIMES", "FIXED_STEP_METHODS", "HOLDS", "METHODS", "SolverResult", "SymmFlowSolver",
    "VelocityFn", "check_method", "time_grid",
]

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]

# method -> velocity evaluations per step, for the methods implemented here
FIXED_STEP_METHODS = {"euler": 1, "midpoint": 2, "heun": 2}
# torchdiffeq's fixed-grid methods: one step per interval of the time grid, tolerances unused
TORCHDIFFEQ_FIXED_STEP_METHODS = ("rk4",)
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
METHODS = tuple(FIXED_STEP_METHODS) + TORCHDIFFEQ_FIXED_STEP_METHODS + ADAPTIVE_METHODS
# the half a decoupled integration keeps fixed, and the time it is held at unless told: a clean image
# (t_x = 1) for classification, a clean label (t_y = 0) for generation
HOLDS = ("x", "y")
DEFAULT_HELD_TIMES = {"x": 1.0, "y": 0.0}


def check_method(method: str, name: str = "ODE method") -> str:
    """``method`` when :meth:`SymmFlowSolver.sample` can integrate with it; ValueError naming the choices."""
    return one_of(method, METHODS, name)


@dataclass
class SolverResult:
    """Final state, number of network evaluations per sample and (optionally) the states at every grid time.

    ``nfe`` counts calls of the velocity field times its ``network_evaluations`` (2 for a guided field,
    :class:`~medsymmflow.flow.guidance.GuidedVelocity`); ``times`` is the grid of the integrated time.
    """

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

    def _eval(
        self, x: torch.Tensor, y: torch.Tensor, t: float | torch.Tensor, hold: str | None = None, held_time: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
        if hold is not None:
            held = torch.full_like(tt, held_time)
            tt = torch.stack((held, tt) if hold == "x" else (tt, held), dim=1)
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
        hold: str | None = None,
        held_time: float | None = None,
    ) -> SolverResult:
        """Integrate from ``(x_init, y_init)`` at ``t_start`` to ``t_end`` in ``steps`` steps (or over ``times``).

        ``hold`` (``"x"`` / ``"y"``): keep that half at its initial value and its time at ``held_time``
        (default :data:`DEFAULT_HELD_TIMES`: 1 for ``x``, 0 for ``y``) while the other half's time runs over
        the grid; the velocity then receives ``t`` of shape ``(B, 2)`` = ``(t_x, t_y)`` (see the module docstring).
        """
        if x_init.shape[0] != y_init.shape[0]:
            raise ValueError(f"x_init and y_init batch sizes differ: {x_init.shape[0]} vs {y_init.shape[0]}")
        for name, v in (("x_init", x_init), ("y_init", y_init)):
            if not torch.isfinite(v).all():
                raise ValueError(f"{name} contains NaN or infinite values")
        held = _held_time(hold, held_time)
        grid = time_grid(t_start, t_end, steps) if times is None else torch.as_tensor(times, dtype=torch.float64)
        if grid.ndim != 1 or grid.numel() < 2:
            raise ValueError("times must be a 1-D sequence of at least two values")
        if method in FIXED_STEP_METHODS:
            return self._fixed(x_init, y_init, grid, method, return_intermediates, hold, held)
        check_method(method)
        return self._torchdiffeq(x_init, y_init, grid, method, return_intermediates, atol, rtol, hold, held)

    def _fixed(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        grid: torch.Tensor,
        method: str,
        keep: bool,
        hold: str | None = None,
        held_time: float = 0.0,
    ) -> SolverResult:
        xs, ys = ([x], [y]) if keep else (None, None)
        nfe = 0
        cost = FIXED_STEP_METHODS[method] * _network_evaluations(self.velocity)

        def ev(a: torch.Tensor, b: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
            return self._eval(a, b, t, hold, held_time)

        def advance(
            a: torch.Tensor, b: torch.Tensor, h: float, ka: torch.Tensor, kb: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            # the held half stays the very tensor it started as, also at the intermediate stages
            return (a if hold == "x" else a + h * ka), (b if hold == "y" else b + h * kb)

        for t0, t1 in zip(grid[:-1].tolist(), grid[1:].tolist()):
            dt = t1 - t0
            k1x, k1y = ev(x, y, t0)
            if method == "euler":
                x, y = advance(x, y, dt, k1x, k1y)
            elif method == "midpoint":
                k2x, k2y = ev(*advance(x, y, 0.5 * dt, k1x, k1y), t0 + 0.5 * dt)
                x, y = advance(x, y, dt, k2x, k2y)
            else:  # heun
                k2x, k2y = ev(*advance(x, y, dt, k1x, k1y), t1)
                x, y = advance(x, y, 0.5 * dt, k1x + k2x, k1y + k2y)
            nfe += cost
            if keep:
                xs.append(x)
                ys.append(y)
        return SolverResult(
            x=x, y=y, nfe=nfe, times=grid,
            trajectory_x=torch.stack(xs) if keep else None,
            trajectory_y=torch.stack(ys) if keep else None,
        )

    def _torchdiffeq(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        grid: torch.Tensor,
        method: str,
        keep: bool,
        atol: float,
        rtol: float,
        hold: str | None = None,
        held_time: float = 0.0,
    ) -> SolverResult:
        from torchdiffeq import odeint  # lazy: only adaptive methods need it

        nfe = 0
        cost = _network_evaluations(self.velocity)

        def rhs(t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            nonlocal nfe
            nfe += cost
            if hold is None:
                return self._eval(state[0], state[1], float(t))
            # only the moving half is an ODE state; the held one enters the field as a constant
            if hold == "x":
                return (self._eval(x, state[0], float(t), hold, held_time)[1],)
            return (self._eval(state[0], y, float(t), hold, held_time)[0],)

        options = {"step_size": float(abs(grid[1] - grid[0]))} if method in TORCHDIFFEQ_FIXED_STEP_METHODS else None
        state = (x, y) if hold is None else (y,) if hold == "x" else (x,)
        traj = odeint(
            rhs, state, grid.to(device=x.device, dtype=x.dtype), method=method, atol=atol, rtol=rtol, options=options
        )
        if hold is None:
            traj_x, traj_y = traj
        elif hold == "x":
            traj_x, traj_y = x.expand((grid.numel(),) + x.shape), traj[0]
        else:
            traj_x, traj_y = traj[0], y.expand((grid.numel(),) + y.shape)
        return SolverResult(
            x=x if hold == "x" else traj_x[-1], y=y if hold == "y" else traj_y[-1], nfe=nfe, times=grid,
            trajectory_x=traj_x if keep else None, trajectory_y=traj_y if keep else None,
        )


def _held_time(hold: str | None, held_time: float | None) -> float:
    """The time the held half stays at; ValueError for an unknown ``hold`` or a time outside [0, 1]."""
    if hold is None:
        if held_time is not None:
            raise ValueError("held_time needs hold='x' or hold='y' (the half it holds)")
        return 0.0
    one_of(hold, HOLDS, "hold")
    value = DEFAULT_HELD_TIMES[hold] if held_time is None else float(held_time)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"held_time must lie in [0, 1], got {held_time}")
    return value


def _network_evaluations(velocity: object) -> int:
    """Network evaluations one call of ``velocity`` costs per sample (2 for a guided field, else 1)."""
    return int(getattr(velocity, "network_evaluations", 1))
