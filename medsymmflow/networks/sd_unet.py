"""SymmFlowSDUNet: the joint velocity field ``(x_t, y_t, t) -> (v_x, v_y)`` on diffusers' UNet2DConditionModel.

SymmFlow's natural-image models (CelebAMask-HQ, COCO-Stuff at 512 px) run Stable Diffusion 2.1's UNet on
the 64 x 64 x 4 VAE latents of the image and of its colour code mask: the two latents are concatenated
on the channel axis (8 channels in and out) and the output is split back into ``(v_x, v_y)``. The
constructor's defaults are SD 2.1-base's UNet (diffusers config of ``stabilityai/stable-diffusion-2-1-base``
``unet/``: widths 320/640/1280/1280, 2 layers per block, 5/10/20/20 heads of 64 channels, cross-attention
dimension 1024, linear projections in the transformers, three cross-attention levels and a plain
coarsest one), with ``in_channels = out_channels = x_channels + y_channels``.

No text encoder: the cross-attention reads one constant context of shape ``(1, context_tokens,
cross_attention_dim)``, repeated over the batch. By default it is a learned parameter (initialised from a
standard normal, about the scale of CLIP's layer-normed token features), so no file is needed. The
authors' released code uses a fixed empty-prompt CLIP embedding instead; pass it as ``context`` (a tensor
or a ``.pt`` file holding one, e.g. ``text_encoder(tokenizer("", padding="max_length").input_ids)[0]``
of SD 2.1's OpenCLIP text encoder, shape ``(1, 77, 1024)``) and it is kept fixed. Either way the context
is in the state dict under ``context``, so a checkpoint rebuilds with the plain preset.

Time: ``t`` in [0, 1] is multiplied by ``time_scale`` before SD's sinusoidal embedding. It is 1.0 (the
authors' released code: raw t) for random weights and 999.0 (SD's timestep range 0-999, which its
pretrained time MLP was trained on) with ``pretrained`` weights. The value travels in the state dict
(``_extra_state``), so a checkpoint restores the scale it was trained with.

Pretrained initialisation (``pretrained=`` or :meth:`SymmFlowSDUNet.init_from_pretrained`) copies every
weight of an SD UNet (a Hugging Face name such as ``stabilityai/stable-diffusion-2-1-base``, a pipeline
folder with ``unet/``, or a folder written by ``UNet2DConditionModel.save_pretrained``) and doubles the
channels of the first and last convolutions, as an earlier revision of the authors' code did:

* ``conv_in``: weight ``cat([W, W], dim=1) / 2``, bias unchanged, so the doubled convolution on
  ``[x, x]`` equals the pretrained one on ``x`` (the authors concatenated without halving, which doubles
  the input the first block sees);
* ``conv_out``: weight and bias repeated along the output channels, ``cat([W, W], dim=0)``.

Hence, with the same context and timestep, ``forward(x, x, t) == (u(x, s t), u(x, s t))`` exactly, where
``u`` is the pretrained UNet and ``s`` the time scale. diffusers is imported inside the constructor only
(importing it costs seconds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from medsymmflow.checks import positive_float, positive_int
from medsymmflow.io import load_checkpoint
from medsymmflow.networks.latent import _looks_like_repo_id, _offline
from medsymmflow.networks.unet import _as_tuple, check_group_widths, check_velocity_inputs

__all__ = ["SD21_BASE", "SD_TIME_SCALE", "SymmFlowSDUNet", "UNetLoadError", "load_pretrained_unet"]

SD21_BASE = "stabilityai/stable-diffusion-2-1-base"
SD_TIME_SCALE = 999.0

_CROSS_ATTENTION_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D")


class UNetLoadError(RuntimeError):
    """Pretrained UNet weights could not be loaded (offline hub name, missing folder, other architecture)."""


def _how_to_get_a_unet() -> str:
    return (
        f"To start from Stable Diffusion 2.1's UNet, run on a machine with internet `hf download {SD21_BASE} "
        "--include 'unet/*' --local-dir <dir>` (older huggingface_hub: `huggingface-cli download ...` with the same "
        "arguments), copy <dir> here and pass that folder as the pretrained source; a folder written by "
        "UNet2DConditionModel.save_pretrained works too. Without a source the network starts from random weights, "
        "as the authors' released code does."
    )


def load_pretrained_unet(source: str | os.PathLike, local_files_only: bool | None = None) -> nn.Module:
    """A diffusers ``UNet2DConditionModel`` from a Hugging Face name, a pipeline folder (``unet/``) or a UNet folder.

    The hub is not contacted when ``local_files_only`` is true or ``HF_HUB_OFFLINE`` is set. Any failure
    raises :class:`UNetLoadError` naming what was tried and what to place where.
    """
    text = os.fspath(source).strip() if isinstance(source, (str, os.PathLike)) else None
    if text is None:
        raise TypeError(f"the pretrained source must be a Hugging Face name or a folder, got {type(source).__name__}")
    if not text:
        raise UNetLoadError(f"the pretrained UNet source is empty. {_how_to_get_a_unet()}")
    try:
        from diffusers import UNet2DConditionModel
    except ImportError as e:
        raise UNetLoadError(f"loading the pretrained UNet {text!r} needs diffusers (pip install diffusers): {e}") from e
    path = Path(text).expanduser()
    offline = _offline() if local_files_only is None else bool(local_files_only)
    kwargs: dict[str, Any] = {"local_files_only": offline}
    if path.is_dir():
        if (path / "config.json").is_file():
            tried = f"the local folder {path}"
        elif (path / "unet" / "config.json").is_file():
            tried, kwargs["subfolder"] = f"the local folder {path / 'unet'}", "unet"
        else:
            raise UNetLoadError(
                f"the folder {path} is not a diffusers UNet: neither {path / 'config.json'} nor "
                f"{path / 'unet' / 'config.json'} exists. {_how_to_get_a_unet()}"
            )
        kwargs["local_files_only"] = True
    elif path.exists():
        raise UNetLoadError(f"the pretrained UNet source {path} is a file; pass the folder holding it. {_how_to_get_a_unet()}")
    elif _looks_like_repo_id(text):
        tried, kwargs["subfolder"] = f"the Hugging Face name {text!r} (no local folder of that name exists either)", "unet"
    else:
        raise UNetLoadError(f"the pretrained UNet folder {path} does not exist. {_how_to_get_a_unet()}")
    try:
        unet = UNet2DConditionModel.from_pretrained(text, **kwargs)
    except Exception as e:  # hub, file-system and format errors come in many types
        reason = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        where = " (offline: HF_HUB_OFFLINE is set or local_files_only=True)" if offline and not path.is_dir() else ""
        raise UNetLoadError(
            f"cannot load a diffusers UNet2DConditionModel from {tried}{where}: {type(e).__name__}: {reason}. "
            f"{_how_to_get_a_unet()}"
        ) from e
    return unet


def _context_tensor(context: torch.Tensor | str | os.PathLike) -> torch.Tensor:
    """The context as a float tensor ``(1, tokens, dim)`` from a tensor or a ``.pt`` file holding one."""
    what = "context"
    if isinstance(context, (str, os.PathLike)):
        what = f"the context file {os.fspath(context)}"
        try:
            context = load_checkpoint(context)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"{what} cannot be read ({e}); save the context with torch.save(tensor, path)") from e
    if not isinstance(context, torch.Tensor):
        raise ValueError(f"{what} must hold one tensor of shape (tokens, dim) or (1, tokens, dim), got {type(context).__name__}")
    if context.ndim == 2:
        context = context[None]
    if context.ndim != 3 or context.shape[0] != 1 or not context.is_floating_point():
        raise ValueError(
            f"{what} must be a float tensor of shape (tokens, dim) or (1, tokens, dim), got {context.dtype} {tuple(context.shape)}"
        )
    return context.detach().float().clone()


class SymmFlowSDUNet(nn.Module):
    """Joint velocity field for SymmFlow: diffusers' UNet2DConditionModel over ``cat([x_t, y_t])`` with a constant context.

    Args:
        x_channels: channels of the image state ``x_t`` (4 for SD latents).
        y_channels: channels of the code-mask state ``y_t`` (4 for SD latents).
        block_out_channels: width of each UNet level.
        layers_per_block: residual (+ transformer) layers per level.
        attention_head_dim: heads per level, in diffusers' naming (SD 2.1: 5/10/20/20 heads, i.e. 64 channels each).
        cross_attention_dim: width of the context tokens.
        down_block_types: diffusers down-block class names, one per level.
        up_block_types: diffusers up-block class names, one per level (coarsest first).
        use_linear_projection: linear instead of 1x1-convolution projections around the transformers (SD 2.x).
        upcast_attention: compute attention scores in float32 (SD 2.1-768's setting; 2.1-base has False).
        transformer_layers_per_block: transformer layers in each attention layer.
        norm_num_groups: GroupNorm groups.
        norm_eps: GroupNorm epsilon.
        dropout: dropout in the residual blocks.
        sample_size: latent side the UNet is meant for (metadata only: any size runs).
        context_tokens: tokens of the constant context (77 as CLIP's).
        context: a fixed context (tensor or ``.pt`` file, ``(tokens, dim)`` or ``(1, tokens, dim)``); ``None``
            learns one.
        learn_context: whether the context is a trained parameter; ``None``: learned when ``context`` is
            ``None``, fixed when given.
        time_scale: factor applied to t before the time embedding; ``None``: 999 with ``pretrained``, 1 without.
        pretrained: initialise from an SD UNet (Hugging Face name or folder), channels doubled (see the module).
        local_files_only: never contact the hub for ``pretrained``; ``None`` follows ``HF_HUB_OFFLINE``.
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% more time).
        decoupled_time: separate image and label times (see :class:`SymmFlowUNet`); not implemented for this
            network, so only False is accepted (it is here so that configs can pass the setting to any preset).
    """

    def __init__(
        self,
        x_channels: int,
        y_channels: int,
        *,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        attention_head_dim: int | Sequence[int] = (5, 10, 20, 20),
        cross_attention_dim: int = 1024,
        down_block_types: Sequence[str] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types: Sequence[str] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        use_linear_projection: bool = True,
        upcast_attention: bool = False,
        transformer_layers_per_block: int = 1,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        sample_size: int = 64,
        context_tokens: int = 77,
        context: torch.Tensor | str | os.PathLike | None = None,
        learn_context: bool | None = None,
        time_scale: float | None = None,
        pretrained: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        gradient_checkpointing: bool = False,
        decoupled_time: bool = False,
    ) -> None:
        super().__init__()
        if decoupled_time is not False:
            raise ValueError(
                "SymmFlowSDUNet has one time input (decoupled_time is only implemented for the MONAI presets): "
                f"train it with coupled times (training#time_decoupled 0), got decoupled_time={decoupled_time!r}"
            )
        self.decoupled_time = False
        x_channels, y_channels = positive_int(x_channels, "x_channels"), positive_int(y_channels, "y_channels")
        widths = tuple(int(c) for c in block_out_channels)
        if not widths or any(c < 1 for c in widths):
            raise ValueError(f"block_out_channels must be a non-empty sequence of positive widths, got {widths}")
        levels = len(widths)
        down, up = tuple(str(b) for b in down_block_types), tuple(str(b) for b in up_block_types)
        if len(down) != levels or len(up) != levels:
            raise ValueError(
                f"down_block_types ({len(down)}) and up_block_types ({len(up)}) need one entry per level "
                f"of block_out_channels={widths} ({levels})"
            )
        norm_num_groups = check_group_widths(widths, norm_num_groups, "block_out_channels")
        heads = _as_tuple(attention_head_dim, levels, "attention_head_dim")
        # the up path runs the levels coarsest first; the middle block attends at the last width
        attends = [i for i in range(levels) if down[i] in _CROSS_ATTENTION_BLOCKS or up[levels - 1 - i] in _CROSS_ATTENTION_BLOCKS]
        for i in sorted(set(attends) | {levels - 1}):
            if heads[i] < 1 or widths[i] % heads[i]:
                raise ValueError(
                    f"attention_head_dim (heads) {heads[i]} must divide the width {widths[i]} of level {i}"
                )
        cross_attention_dim = positive_int(cross_attention_dim, "cross_attention_dim")
        context_tokens = positive_int(context_tokens, "context_tokens")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if time_scale is None:
            time_scale = SD_TIME_SCALE if pretrained is not None else 1.0
        from diffusers import UNet2DConditionModel  # seconds to import: only when such a network is built

        self.x_channels, self.y_channels = x_channels, y_channels
        self.spatial_dims = 2
        self.time_scale = positive_float(time_scale, "time_scale")
        channels = x_channels + y_channels
        self.unet = UNet2DConditionModel(
            sample_size=positive_int(sample_size, "sample_size"),
            in_channels=channels,
            out_channels=channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=widths,
            layers_per_block=positive_int(layers_per_block, "layers_per_block"),
            attention_head_dim=heads,
            cross_attention_dim=cross_attention_dim,
            use_linear_projection=bool(use_linear_projection),
            upcast_attention=bool(upcast_attention),
            transformer_layers_per_block=positive_int(transformer_layers_per_block, "transformer_layers_per_block"),
            norm_num_groups=norm_num_groups,
            norm_eps=positive_float(norm_eps, "norm_eps"),
            dropout=float(dropout),
        )
        if context is None:
            value = torch.randn(1, context_tokens, cross_attention_dim)
            learn = True if learn_context is None else bool(learn_context)
        else:
            value = _context_tensor(context)
            if tuple(value.shape[1:]) != (context_tokens, cross_attention_dim):
                raise ValueError(
                    f"the context has {value.shape[1]} tokens of width {value.shape[2]}, but the network takes "
                    f"context_tokens={context_tokens} of cross_attention_dim={cross_attention_dim}"
                )
            learn = False if learn_context is None else bool(learn_context)
        # one state-dict name either way, so a checkpoint loads into a network built with or without the file
        if learn:
            self.context = nn.Parameter(value)
        else:
            self.register_buffer("context", value)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        if pretrained is not None:
            self.init_from_pretrained(pretrained, time_scale=self.time_scale, local_files_only=local_files_only)

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, float]:
        """The time scale, saved with the weights so that a checkpoint restores it."""
        return {"time_scale": self.time_scale}

    def set_extra_state(self, state: Any) -> None:
        """Restore the time scale of a checkpoint."""
        if not isinstance(state, dict) or "time_scale" not in state:
            raise ValueError(f"the network's extra state must be a dict with 'time_scale', got {state!r}")
        self.time_scale = positive_float(state["time_scale"], "time_scale")

    def extra_repr(self) -> str:
        """Channels, time scale and context shape in the module's repr."""
        kind = "learned" if isinstance(self.context, nn.Parameter) else "fixed"
        return (
            f"x_channels={self.x_channels}, y_channels={self.y_channels}, time_scale={self.time_scale:g}, "
            f"context={kind} {tuple(self.context.shape)}"
        )

    # ------------------------------------------------------------------ pretrained weights
    def init_from_pretrained(
        self, source: str | os.PathLike | nn.Module, time_scale: float = SD_TIME_SCALE, local_files_only: bool | None = None
    ) -> "SymmFlowSDUNet":
        """Copy an SD UNet's weights into this network, doubling conv_in / conv_out (module docstring); return self.

        ``source`` is a Hugging Face name, a folder, or a loaded ``UNet2DConditionModel``. Its input and output
        channels must equal ``x_channels`` and ``y_channels``, and all its other tensors this network's.
        ``time_scale`` (default SD's 999) replaces the current one.
        """
        if isinstance(source, nn.Module):
            pretrained, name = source, type(source).__name__
        else:
            pretrained, name = load_pretrained_unet(source, local_files_only=local_files_only), os.fspath(source)
        config = pretrained.config
        c_in, c_out = int(config.in_channels), int(config.out_channels)
        if not c_in == c_out == self.x_channels == self.y_channels:
            raise UNetLoadError(
                f"the pretrained UNet {name} has {c_in} input and {c_out} output channels; doubling them needs "
                f"x_channels = y_channels = {c_in}, but this network has {self.x_channels} and {self.y_channels}"
            )
        state = dict(pretrained.state_dict())
        state["conv_in.weight"] = torch.cat([state["conv_in.weight"]] * 2, dim=1) / 2
        state["conv_out.weight"] = torch.cat([state["conv_out.weight"]] * 2, dim=0)
        state["conv_out.bias"] = torch.cat([state["conv_out.bias"]] * 2, dim=0)
        own = self.unet.state_dict()
        absent = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        misfit = [k for k in own if k in state and state[k].shape != own[k].shape]
        if absent or extra or misfit:
            example = misfit[0] if misfit else None
            detail = (
                f"{example} is {tuple(state[example].shape)} there, {tuple(own[example].shape)} here"
                if example else f"e.g. missing {(absent or ['-'])[0]}, unexpected {(extra or ['-'])[0]}"
            )
            raise UNetLoadError(
                f"the pretrained UNet {name} has another architecture than this network ({len(absent)} tensor(s) "
                f"missing, {len(extra)} unexpected, {len(misfit)} of another shape: {detail}); pretrained weights need "
                "the sd21 preset (Stable Diffusion 2.x's UNet) or overrides matching the source's config.json"
            )
        self.unet.load_state_dict(state)
        self.time_scale = positive_float(time_scale, "time_scale")
        return self

    # ------------------------------------------------------------------ forward
    def forward(
        self, x_t: torch.Tensor, y_t: torch.Tensor, t: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocities ``(v_x, v_y)`` with the shapes of ``(x_t, y_t)``; ``t`` is (B,) or a scalar in [0, 1]."""
        t = check_velocity_inputs(x_t, y_t, t, self.x_channels, self.y_channels, self.spatial_dims)
        h = torch.cat([x_t, y_t], dim=1)
        context = self.context.to(h.dtype).expand(h.shape[0], -1, -1)
        out = self.unet(h, t * self.time_scale, encoder_hidden_states=context, return_dict=False)[0]
        return out[:, : self.x_channels], out[:, self.x_channels :]
