"""SymmFlow training objective: weighted x/y velocity MSE and the time-sampling schedules."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TIME_SCHEDULES", "SymmFlowLoss", "TimeSampler"]

TIME_SCHEDULES = ("uniform", "logit_normal", "power", "mixture")


class TimeSampler:
    """Draws training times ``t`` in [0, 1].

    * ``uniform``: U(0, 1) (the papers).
    * ``logit_normal``: sigmoid(N(loc, scale)); ``loc > 0`` leans toward t=1, where one-step
      classification reads the field.
    * ``power``: ``u ** (1 / (1 + skew))``; ``skew > 0`` leans toward t=1, ``skew = 0`` is uniform.
    * ``mixture``: U(0, 1) with probability ``1 - p_one``, else t=1 exactly (the classification start).
    """

    def __init__(
        self, schedule: str = "uniform", loc: float = 0.0, scale: float = 1.0, skew: float = 0.0, p_one: float = 0.0
    ) -> None:
        if schedule not in TIME_SCHEDULES:
            raise ValueError(f"unknown time schedule {schedule!r}; choose one of {', '.join(TIME_SCHEDULES)}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if skew <= -1:
            raise ValueError(f"skew must be > -1, got {skew}")
        if not 0.0 <= p_one <= 1.0:
            raise ValueError(f"p_one must lie in [0, 1], got {p_one}")
        self.schedule, self.loc, self.scale, self.skew, self.p_one = schedule, loc, scale, skew, p_one

    def __call__(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return ``batch_size`` times, shape (B,), float32."""
        u = torch.rand(batch_size, generator=generator, device=device)
        if self.schedule == "uniform":
            return u
        if self.schedule == "logit_normal":
            z = torch.randn(batch_size, generator=generator, device=device)
            return torch.sigmoid(self.loc + self.scale * z)
        if self.schedule == "power":
            return u.pow(1.0 / (1.0 + self.skew))
        pick = torch.rand(batch_size, generator=generator, device=device) < self.p_one
        return torch.where(pick, torch.ones_like(u), u)


class SymmFlowLoss(nn.Module):
    """``w * MSE(v_x, target_x) + (1 - w) * MSE(v_y, target_y)`` (means over all elements of each half)."""

    def __init__(self, x_weight: float = 0.5, reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= x_weight <= 1.0:
            raise ValueError(f"x_weight must lie in [0, 1], got {x_weight}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.x_weight = float(x_weight)
        self.reduction = reduction

    def forward(
        self, v_x: torch.Tensor, v_y: torch.Tensor, target_x: torch.Tensor, target_y: torch.Tensor
    ) -> torch.Tensor:
        """Loss of predicted velocities against targets; ``reduction='none'`` keeps one value per sample."""
        if v_x.shape != target_x.shape or v_y.shape != target_y.shape:
            raise ValueError(
                f"prediction/target shapes differ: x {tuple(v_x.shape)} vs {tuple(target_x.shape)}, "
                f"y {tuple(v_y.shape)} vs {tuple(target_y.shape)}"
            )
        loss = self.x_weight * _per_sample_mse(v_x, target_x) + (1.0 - self.x_weight) * _per_sample_mse(v_y, target_y)
        return loss.mean() if self.reduction == "mean" else loss


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)
