"""The symmetric probability path between images and class-code masks.

Time runs from t=0 (image = noise, label = clean code) to t=1 (image = clean, label = noise)::

    x_t = (1 - (1 - s) t) xi_x + t x          dx_t/dt = x - (1 - s) xi_x
    y_t = (1 - (1 - s) t) y    + t xi_y       dy_t/dt = xi_y - (1 - s) y

with ``s = sigma_min`` (1e-4 in the authors' code; 0 gives the paper's equations exactly).

At the endpoints one half of the target is pure noise the network cannot see: at t=1 the image
noise ``xi_x`` is (up to ``s``) absent from the inputs, at t=0 the label noise ``xi_y`` is. The
regression optimum there is the target's mean over that noise (``x`` and ``-(1 - s) y``).
``endpoint_targets="mean"`` trains on that mean directly: same optimum, none of the unit-variance
gradient noise that schedules putting many times exactly at t=1 (``TimeSampler("mixture")``)
otherwise feed into the shared network.

Decoupled times: ``t`` of shape (B, 2) holds ``(t_x, t_y)`` per row; the image half moves with ``t_x``
and the label half with ``t_y`` (each formula above with its own time; the targets do not depend on
time). A (B,) ``t`` is the coupled path ``t_x = t_y = t``. The endpoint means then apply per half:
the image target is ``x`` where ``t_x = 1``, the label target ``-(1 - s) y`` where ``t_y = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ENDPOINT_TARGETS", "SymmetricPath", "SymmetricPathSample", "split_times"]

ENDPOINT_TARGETS = ("sample", "mean")


def split_times(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t_x, t_y)`` of a (B,) coupled time (both are ``t``) or a (B, 2) decoupled one (its columns)."""
    if t.ndim == 2 and t.shape[1] == 2:
        return t[:, 0], t[:, 1]
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,) (coupled) or (B, 2) (decoupled t_x, t_y), got {tuple(t.shape)}")
    return t, t


@dataclass
class SymmetricPathSample:
    """One draw from the path: endpoints, time ((B,) coupled or (B, 2) ``(t_x, t_y)``), interpolants and target velocities."""

    x: torch.Tensor
    y: torch.Tensor
    noise_x: torch.Tensor
    noise_y: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor
    y_t: torch.Tensor
    dx_t: torch.Tensor
    dy_t: torch.Tensor


class SymmetricPath:
    """Affine symmetric path; ``sample(x, y, t)`` returns interpolants and target velocities."""

    def __init__(self, sigma_min: float = 1e-4, endpoint_targets: str = "sample") -> None:
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min must lie in [0, 1), got {sigma_min}")
        if endpoint_targets not in ENDPOINT_TARGETS:
            raise ValueError(f"unknown endpoint_targets {endpoint_targets!r}; choose one of {', '.join(ENDPOINT_TARGETS)}")
        self.sigma_min = float(sigma_min)
        self.endpoint_targets = endpoint_targets

    @staticmethod
    def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.reshape((-1,) + (1,) * (like.ndim - 1)).to(like.dtype)

    def _check(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or y.ndim < 2:
            raise ValueError(f"x and y need a batch and a channel axis, got shapes {tuple(x.shape)}, {tuple(y.shape)}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y batch sizes differ: {x.shape[0]} vs {y.shape[0]}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape not in ((x.shape[0],), (x.shape[0], 2)):
            raise ValueError(
                f"t must be a scalar or have shape ({x.shape[0]},) (coupled) or ({x.shape[0]}, 2) (decoupled t_x, t_y), "
                f"got {tuple(t.shape)}"
            )
        return t

    def interpolate(
        self, x: torch.Tensor, y: torch.Tensor, noise_x: torch.Tensor, noise_y: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, y_t)`` at time ``t`` (scalar, (B,) or (B, 2) ``(t_x, t_y)``)."""
        t_x, t_y = split_times(self._check(x, y, t))
        tx, ty = self._expand(t_x, x), self._expand(t_y, y)
        a = 1.0 - self.sigma_min
        return (1.0 - a * tx) * noise_x + tx * x, (1.0 - a * ty) * y + ty * noise_y

    def velocity(
        self, x: torch.Tensor, y: torch.Tensor, noise_x: torch.Tensor, noise_y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target velocities ``(dx_t/dt, dy_t/dt)``; constant in time along this path."""
        a = 1.0 - self.sigma_min
        return x - a * noise_x, noise_y - a * y

    def sample(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        noise_x: torch.Tensor | None = None,
        noise_y: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SymmetricPathSample:
        """Draw ``(x_t, y_t)`` and targets for clean ``x``, code mask ``y`` and times ``t`` ((B,) or (B, 2)); noise is N(0, I) if not given."""
        t = self._check(x, y, t)
        if noise_x is None:
            noise_x = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if noise_y is None:
            noise_y = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        if noise_x.shape != x.shape or noise_y.shape != y.shape:
            raise ValueError("noise_x / noise_y must match the shapes of x / y")
        x_t, y_t = self.interpolate(x, y, noise_x, noise_y, t)
        dx_t, dy_t = self.velocity(x, y, noise_x, noise_y)
        if self.endpoint_targets == "mean":
            dx_t, dy_t = self._endpoint_means(x, y, t, dx_t, dy_t)
        return SymmetricPathSample(x=x, y=y, noise_x=noise_x, noise_y=noise_y, t=t, x_t=x_t, y_t=y_t, dx_t=dx_t, dy_t=dy_t)

    def _endpoint_means(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, dx_t: torch.Tensor, dy_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # E[xi] = 0 for the half whose noise the inputs do not show: the image's at t=1, the label's at t=0.
        a = 1.0 - self.sigma_min
        t_x, t_y = split_times(t)
        return torch.where(self._expand(t_x, x) == 1, x, dx_t), torch.where(self._expand(t_y, y) == 0, -a * y, dy_t)

    def recover(
        self, x_t: torch.Tensor, y_t: torch.Tensor, v_x: torch.Tensor, v_y: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean ``(x, y)`` implied by a velocity at ``(x_t, y_t, t)`` (exact for the target velocity)."""
        t_x, t_y = split_times(self._check(x_t, y_t, t))
        tx, ty = self._expand(t_x, x_t), self._expand(t_y, y_t)
        a = 1.0 - self.sigma_min
        # x_t = (1 - a t) xi + t x with xi = (x - v) / a, solved for x.
        x = (x_t + (1.0 - a * tx) * v_x / a) / (tx + (1.0 - a * tx) / a)
        # y_t = (1 - a t) y + t xi with xi = v + a y, solved for y.
        y = y_t - ty * v_y
        return x, y
