"""Exponential moving average of a network's weights, using torch's ``AveragedModel``.

Each ``ema.update_parameters(model)`` (after an optimiser step; the engines do it through
:class:`medsymmflow.engines.EMAUpdate`) computes, on parameters and buffers alike,

    w_ema <- d * w_ema + (1 - d) * w_model,   d = decay, or min(decay, (1 + n) / (10 + n)) with warm-up

where ``n`` is the number of updates so far. ``n`` is the AveragedModel's ``n_averaged`` buffer, so it
is saved and restored with the EMA's state dict and a resumed run continues the warm-up exactly.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["create_ema"]


def _warmup_ema_fn(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """EMA update whose decay ramps up with the update count, so early EMAs are not stuck at the init."""

    def update(ema_params: list[torch.Tensor], model_params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        for e, m in zip(ema_params, model_params):
            e.lerp_(m.to(e.dtype), 1.0 - d)

    return update


def create_ema(model: nn.Module, decay: float = 0.999, warmup: bool = False) -> AveragedModel:
    """An ``AveragedModel`` EMA of ``model`` whose every ``update_parameters`` call is one EMA step.

    torch's ``AveragedModel`` copies the weights on its first ``update_parameters`` call instead
    of averaging. That copy is done here, so the returned EMA starts equal to ``model`` and the
    caller's first update already applies ``decay`` (as ignite's EMAHandler does). The EMA has
    the model's forward contract (``ema(x_t, y_t, t) -> (v_x, v_y)``); ``ema.module`` is the
    averaged copy of the network. ``warmup`` uses ``min(decay, (1 + n) / (10 + n))`` at update ``n``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(decay, bool) or not 0.0 <= float(decay) <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay!r}")
    avg_fn = _warmup_ema_fn(float(decay)) if warmup else get_ema_multi_avg_fn(float(decay))
    ema = AveragedModel(model, multi_avg_fn=avg_fn, use_buffers=True)
    ema.update_parameters(model)
    ema.requires_grad_(False)
    return ema
