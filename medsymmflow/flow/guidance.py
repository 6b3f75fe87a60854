"""Classifier-free guidance for generation with a network trained with decoupled times.

With decoupled times the label at ``t_y = 1`` is pure noise, so the same network is also the
unconditional model; generation holds the label clean (``t = (t_x, 0)``) and the guided image velocity is::

    v_x = v_x(x_t, y_code, (t_x, 0)) + (w - 1) * [v_x(x_t, y_code, (t_x, 0)) - v_x(x_t, xi_y, (t_x, 1))]

with ``xi_y`` label noise drawn once per sample. ``w = 1`` is the conditional field itself (one network
evaluation); any other ``w`` costs two per call, run as one forward pass over both batches.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from medsymmflow.checks import nonnegative_float

__all__ = ["GuidedVelocity", "check_guidance_scale", "guidance_evaluations"]


def check_guidance_scale(scale: Any, name: str = "guidance_scale") -> float:
    """``scale`` as a finite float >= 0 (1 = no guidance, 0 = the unconditional model)."""
    return nonnegative_float(scale, name)


def guidance_evaluations(scale: float) -> int:
    """Network evaluations per velocity call at guidance scale ``scale``: 1 at ``scale == 1``, else 2."""
    return 1 if float(scale) == 1.0 else 2


class GuidedVelocity:
    """The guided field ``(x_t, y, t (B, 2)) -> (v_x, v_y)`` of ``velocity`` at scale ``scale``.

    ``unconditional_y`` (the shape of ``y``) is the label noise ``xi_y`` the unconditional branch sees at
    ``t_y = unconditional_time`` (1); ``v_y`` is the conditional one's (the solver holds ``y`` anyway).
    :attr:`network_evaluations` tells :class:`~medsymmflow.flow.SymmFlowSolver` what one call costs.
    """

    def __init__(
        self,
        velocity: Callable[..., Any],
        unconditional_y: torch.Tensor,
        scale: float,
        unconditional_time: float = 1.0,
    ) -> None:
        self.velocity = velocity
        self.unconditional_y = unconditional_y
        self.scale = check_guidance_scale(scale)
        self.unconditional_time = float(unconditional_time)
        self.network_evaluations = guidance_evaluations(self.scale)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided ``(v_x, v_y)``; ``t`` must be the decoupled ``(B, 2)`` times ``(t_x, t_y)``."""
        if t.ndim != 2 or t.shape[1] != 2:
            raise ValueError(f"guidance needs decoupled times t of shape (B, 2), got {tuple(t.shape)}")
        if self.network_evaluations == 1:
            return self.velocity(x, y, t)
        if self.unconditional_y.shape != y.shape:
            raise ValueError(
                f"unconditional_y has shape {tuple(self.unconditional_y.shape)}, the label state {tuple(y.shape)}"
            )
        t_uncond = torch.stack((t[:, 0], torch.full_like(t[:, 0], self.unconditional_time)), dim=1)
        b = x.shape[0]
        # one forward pass over the conditional and unconditional batches: per-sample layers only, so the
        # two halves do not mix, and the network runs once on a batch twice the size
        v_x, v_y = self.velocity(
            torch.cat([x, x]), torch.cat([y, self.unconditional_y.to(dtype=y.dtype)]), torch.cat([t, t_uncond])
        )
        cond, uncond = v_x[:b], v_x[b:]
        return cond + (self.scale - 1.0) * (cond - uncond), v_y[:b]
