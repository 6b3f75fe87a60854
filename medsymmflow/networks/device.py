"""Ready a velocity network for its device: placement, channels-last memory format, ``torch.compile``.

:func:`prepare_network` changes the network in place and returns it, so that everything holding it (the
optimiser's parameters, the checkpoint's ``save_dict``, the EMA built from it) keeps seeing the same module
with the same state-dict keys:

* ``channels_last`` converts the 4-D weights to NHWC and adds a forward pre-hook that converts the 4-D
  inputs too (a convolution mixing NCHW inputs with NHWC weights runs in NCHW again); bf16 convolutions on
  tensor-core GPUs are fastest in NHWC. Weights keep their shape, only their strides change, so a state dict
  saved from it loads into a plain network.
* ``compile`` compiles the module's call with :meth:`torch.nn.Module.compile` rather than wrapping it in
  ``torch.compile(net)``: the wrapper's state dict would prefix every key with ``_orig_mod.``, while the
  compiled call leaves the module and its keys as they are. A deep copy (``create_ema``) drops the compiled
  call (``nn.Module.__getstate__``), so the EMA and the evaluators run the network uncompiled.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["prepare_network", "uses_channels_last"]

# marks a network whose inputs the pre-hook converts: a plain bool attribute, so not in the state dict, and a
# deep copy (the EMA) keeps it along with the hook
_CHANNELS_LAST = "_medsymmflow_channels_last"


def _channels_last(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.ndim == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value


def _channels_last_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: every 4-D tensor argument in channels-last memory format."""
    return tuple(_channels_last(a) for a in args), {k: _channels_last(v) for k, v in kwargs.items()}


def uses_channels_last(net: nn.Module) -> bool:
    """Whether :func:`prepare_network` set ``net`` up for channels-last weights and inputs."""
    return bool(getattr(net, _CHANNELS_LAST, False))


def prepare_network(
    net: nn.Module,
    device: str | torch.device | None = None,
    channels_last: bool = False,
    compile: bool = False,
    compile_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Move ``net`` to ``device``, optionally to channels-last weights and inputs and a compiled forward; returns ``net`` itself.

    ``compile_options`` are passed to :func:`torch.compile` (``mode``, ``backend``, ``dynamic``, ...).
    Calling it again on a prepared network adds nothing twice.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"prepare_network takes a torch.nn.Module, got {type(net).__name__}")
    if isinstance(net, nn.parallel.DistributedDataParallel):
        raise TypeError("prepare_network must run before DistributedDataParallel wraps the network: pass the plain network")
    if device is not None:
        net.to(device)
    if channels_last and not uses_channels_last(net):
        net.to(memory_format=torch.channels_last)
        net.register_forward_pre_hook(_channels_last_inputs, with_kwargs=True)
        setattr(net, _CHANNELS_LAST, True)
    if compile and getattr(net, "_compiled_call_impl", None) is None:
        if not hasattr(nn.Module, "compile"):
            raise RuntimeError(f"compiling a network needs nn.Module.compile (PyTorch 2.2 or newer); this is torch {torch.__version__}")
        net.compile(**dict(compile_options or {}))
    return net
