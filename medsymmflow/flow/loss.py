"""SymmFlow training objective: weighted x/y velocity MSE and the time-sampling schedules."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from medsymmflow.checks import fraction

__all__ = ["DECOUPLED_MODES", "TIME_SCHEDULES", "SymmFlowLoss", "TimeSampler", "check_decoupled_modes"]

TIME_SCHEDULES = ("uniform", "logit_normal", "power", "mixture")
# the (t_x, t_y) of a decoupled row, in the order of TimeSampler's decoupled_modes
DECOUPLED_MODES = ("generate", "classify", "unconditional")


class TimeSampler:
    """Draws training times ``t`` in [0, 1].

    * ``uniform``: U(0, 1) (the papers).
    * ``logit_normal``: sigmoid(N(loc, scale)); ``loc > 0`` leans toward t=1, where one-step
      classification reads the field.
    * ``power``: ``u ** (1 / (1 + skew))``; ``skew > 0`` leans toward t=1, ``skew = 0`` is uniform.
    * ``mixture``: U(0, 1) with probability ``1 - p_one``, else t=1 exactly (the classification start).

    Decoupled times (``decoupled > 0``): each row is, with probability ``decoupled``, a decoupled row whose
    image and label halves get their own times, and the output is (B, 2) ``(t_x, t_y)``; the other rows
    keep the coupled time of ``schedule`` in both columns. A decoupled row takes one of
    :data:`DECOUPLED_MODES` with probabilities proportional to the weights ``decoupled_modes``:

    * ``generate``: ``t_x ~ U(0, 1)``, ``t_y = 0``: the image is integrated next to the clean label code
      (the conditional generator).
    * ``classify``: ``t_x = 1``, ``t_y ~ U(0, 1)``: the label is integrated next to the clean image (a
      classifier that can take several steps on the label alone).
    * ``unconditional``: ``t_x ~ U(0, 1)``, ``t_y = 1``: the label is pure noise, so the image field is
      the unconditional one that classifier-free guidance contrasts with the conditional one.

    ``decoupled = 0`` (default) returns the (B,) coupled times, the same numbers for the same generator
    as before decoupled times existed.
    """

    def __init__(
        self,
        schedule: str = "uniform",
        loc: float = 0.0,
        scale: float = 1.0,
        skew: float = 0.0,
        p_one: float = 0.0,
        decoupled: float = 0.0,
        decoupled_modes: Sequence[float] = (1.0, 1.0, 1.0),
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
        self.decoupled = fraction(decoupled, "decoupled (the fraction of decoupled rows)")
        self.decoupled_modes = check_decoupled_modes(decoupled_modes)

    def __call__(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return ``batch_size`` times, float32: shape (B,), or (B, 2) ``(t_x, t_y)`` when ``decoupled > 0``."""
        t = self._coupled(batch_size, device, generator)
        if self.decoupled == 0.0:
            return t
        # drawn after the coupled times, so those are the coupled schedule's numbers whatever decoupled is
        decoupled = torch.rand(batch_size, generator=generator, device=t.device) < self.decoupled
        probs = torch.tensor(self.decoupled_modes, device=t.device)
        mode = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        u = torch.rand(batch_size, generator=generator, device=t.device)
        ones, zeros = torch.ones_like(u), torch.zeros_like(u)
        # generate (0): (u, 0); classify (1): (1, u); unconditional (2): (u, 1)
        t_x = torch.where(mode == 1, ones, u)
        t_y = torch.where(mode == 0, zeros, torch.where(mode == 1, u, ones))
        return torch.where(decoupled[:, None], torch.stack([t_x, t_y], 1), t[:, None].expand(-1, 2))

    def _coupled(
        self, batch_size: int, device: torch.device | str | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The coupled schedule's (B,) times."""
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


def check_decoupled_modes(modes: Sequence[float]) -> tuple[float, float, float]:
    """``modes`` (weights of generate, classify, unconditional) as probabilities; a ValueError unless three weights >= 0 with a positive sum."""
    try:
        values = tuple(float(p) for p in modes)
    except (TypeError, ValueError):
        values = ()
    if len(values) != len(DECOUPLED_MODES) or not all(math.isfinite(p) and p >= 0 for p in values) or sum(values) <= 0:
        raise ValueError(
            f"decoupled_modes must be three weights >= 0 with a positive sum ({', '.join(DECOUPLED_MODES)}), got {modes!r}"
        )
    total = sum(values)
    return tuple(p / total for p in values)  # type: ignore[return-value]


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
