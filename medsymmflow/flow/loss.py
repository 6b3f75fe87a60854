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
    """``w * MSE(v_x, target_x) + (1 - w) * MSE(v_y, target_y)`` (means over all elements of each half).

    With a ``mask`` (1 = labelled pixel, 0 = unlabelled; shape ``(B, 1, *spatial)`` or that of ``v_y``) the
    y half becomes ``sum(mask * (v_y - target_y)^2) / sum(mask * C_y)``: unlabelled pixels' code targets do
    not enter the loss, and each labelled pixel weighs the same whatever the share of unlabelled pixels in
    its image (the ``ignore_index`` rule of a cross-entropy). ``reduction='none'`` normalises each sample by
    its own labelled pixels (a sample without any contributes 0 to the y half). The image half is never
    masked: every pixel of the image is data.
    """

    def __init__(self, x_weight: float = 0.5, reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= x_weight <= 1.0:
            raise ValueError(f"x_weight must lie in [0, 1], got {x_weight}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.x_weight = float(x_weight)
        self.reduction = reduction

    def forward(
        self,
        v_x: torch.Tensor,
        v_y: torch.Tensor,
        target_x: torch.Tensor,
        target_y: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of predicted velocities against targets; ``reduction='none'`` keeps one value per sample."""
        if v_x.shape != target_x.shape or v_y.shape != target_y.shape:
            raise ValueError(
                f"prediction/target shapes differ: x {tuple(v_x.shape)} vs {tuple(target_x.shape)}, "
                f"y {tuple(v_y.shape)} vs {tuple(target_y.shape)}"
            )
        x_loss = _per_sample_mse(v_x, target_x)
        if mask is None:
            loss = self.x_weight * x_loss + (1.0 - self.x_weight) * _per_sample_mse(v_y, target_y)
            return loss.mean() if self.reduction == "mean" else loss
        weight = _check_mask(mask, v_y).expand(v_y.shape)
        err = (v_y.float() - target_y.float()).pow(2) * weight
        if self.reduction == "mean":
            y_loss = err.sum() / weight.sum().clamp_min(1.0)
            return self.x_weight * x_loss.mean() + (1.0 - self.x_weight) * y_loss
        y_loss = err.flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)
        return self.x_weight * x_loss + (1.0 - self.x_weight) * y_loss


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def _check_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` as float32 on ``like``'s device; a ValueError when it is not ``(B, 1 or C, *spatial)`` of ``like``."""
    m = torch.as_tensor(mask)
    if m.ndim != like.ndim or m.shape[0] != like.shape[0] or m.shape[2:] != like.shape[2:] or m.shape[1] not in (1, like.shape[1]):
        raise ValueError(
            f"the valid-pixel mask must have shape (B, 1, *spatial) or that of the code velocity {tuple(like.shape)}, "
            f"got {tuple(m.shape)}"
        )
    return m.to(device=like.device, dtype=torch.float32)
