"""Exponential moving average of a network's weights, using torch's ``AveragedModel``.

``create_ema`` is for scripts and notebooks that drive the update themselves
(``ema.update_parameters(model)`` after each optimiser step). The engines do not use it: they
attach ignite's :class:`ignite.handlers.EMAHandler` to the trainer, which updates on iteration
events and whose ``momentum`` is ``1 - decay``. Both compute

    w_ema <- decay * w_ema + (1 - decay) * w_model

on parameters and buffers alike.
"""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["create_ema"]


def create_ema(model: nn.Module, decay: float = 0.999) -> AveragedModel:
    """An ``AveragedModel`` EMA of ``model`` whose every ``update_parameters`` call is one EMA step.

    torch's ``AveragedModel`` copies the weights on its first ``update_parameters`` call instead
    of averaging. That copy is done here, so the returned EMA starts equal to ``model`` and the
    caller's first update already applies ``decay`` (as ignite's EMAHandler does). The EMA has
    the model's forward contract (``ema(x_t, y_t, t) -> (v_x, v_y)``); ``ema.module`` is the
    averaged copy of the network.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(decay, bool) or not 0.0 <= float(decay) <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay!r}")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)
    ema.update_parameters(model)
    ema.requires_grad_(False)
    return ema
