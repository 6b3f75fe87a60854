"""SymmFlowUNet: the joint velocity field ``(x_t, y_t, t) -> (v_x, v_y)`` on MONAI's DiffusionModelUNet.

The image state ``x_t`` (``x_channels``) and the label-code state ``y_t`` (``y_channels``, which
may differ, e.g. a 1-channel gray image with a 3-channel RGB code mask) are concatenated on the
channel axis, passed through one :class:`monai.networks.nets.DiffusionModelUNet` whose input and
output both have ``x_channels + y_channels`` channels, and the output is split back into
``(v_x, v_y)``. ``t`` is multiplied by ``time_scale`` before MONAI's sinusoidal embedding; the
default 1.0 keeps the authors' convention of feeding t in [0, 1] as is.

Spatial sizes that are not a multiple of ``2 ** (levels - 1)`` (28 px MedMNIST with 4 levels:
7 -> 4 -> 7 breaks the skip connections) are padded before the UNet and cropped after it.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock, get_timestep_embedding
from monai.networks.utils import pixelshuffle, pixelunshuffle
from torch import nn

from medsymmflow.checks import positive_int

__all__ = [
    "DATA_PREDICTION_MIN_T",
    "SymmFlowUNet",
    "Y_PREDICTIONS",
    "check_group_widths",
    "check_velocity_inputs",
    "is_decoupled",
    "predicts_data",
]


def _dropout_pre_hook(module: nn.Module, args: tuple[torch.Tensor, ...], p: float) -> tuple[torch.Tensor, ...]:
    """Forward pre-hook applying dropout to the input of ``module`` while it is in training mode."""
    return (F.dropout(args[0], p=p, training=module.training),) + tuple(args[1:])


def _as_tuple(value: int | Sequence[int], length: int, name: str) -> tuple[int, ...]:
    """Repeat an int ``length`` times, or check a sequence has ``length`` entries."""
    if isinstance(value, int):
        return (value,) * length
    values = tuple(int(v) for v in value)
    if len(values) != length:
        raise ValueError(f"{name} needs one entry per level ({length}), got {len(values)}: {values}")
    return values


def check_velocity_inputs(
    x_t: torch.Tensor,
    y_t: torch.Tensor,
    t: torch.Tensor | float,
    x_channels: int,
    y_channels: int,
    spatial_dims: int = 2,
    decoupled: bool = False,
) -> torch.Tensor:
    """Validate a velocity network's ``(x_t, y_t, t)`` and return ``t`` on ``x_t``'s device and dtype.

    The result is (B,) for a coupled network; a ``decoupled`` one gets (B, 2) ``(t_x, t_y)``, a scalar or
    (B,) ``t`` standing for ``t_x = t_y = t``. A coupled network refuses a (B, 2) ``t``.
    """
    if not isinstance(x_t, torch.Tensor) or not isinstance(y_t, torch.Tensor):
        raise TypeError(f"x_t and y_t must be torch tensors, got {type(x_t).__name__}, {type(y_t).__name__}")
    ndim = spatial_dims + 2
    for name, v, c in (("x_t", x_t, x_channels), ("y_t", y_t, y_channels)):
        if v.ndim != ndim:
            raise ValueError(
                f"{name} must have shape (B, {c}, {', '.join(['S'] * spatial_dims)}) for "
                f"spatial_dims={spatial_dims}, got {tuple(v.shape)}"
            )
        if v.shape[1] != c:
            raise ValueError(f"{name} must have {c} channels, got {v.shape[1]} (shape {tuple(v.shape)})")
    if x_t.shape[0] != y_t.shape[0]:
        raise ValueError(f"x_t and y_t batch sizes differ: {x_t.shape[0]} vs {y_t.shape[0]}")
    if x_t.shape[2:] != y_t.shape[2:]:
        raise ValueError(f"x_t and y_t spatial sizes differ: {tuple(x_t.shape[2:])} vs {tuple(y_t.shape[2:])}")
    t = torch.as_tensor(t, device=x_t.device, dtype=x_t.dtype)
    batch = x_t.shape[0]
    if t.ndim == 0 or (t.ndim == 1 and t.numel() == 1 and batch != 1):
        t = t.reshape(()).expand(batch)
    if t.shape == (batch, 2):
        if not decoupled:
            raise ValueError(
                f"t of shape ({batch}, 2) gives separate image and label times, which only a network built with "
                "decoupled_time=True takes (this one has one time input: pass t of shape (B,))"
            )
        return t
    if t.shape != (batch,):
        raise ValueError(
            f"t must be a scalar or have shape ({batch},)" + (f" or ({batch}, 2)" if decoupled else "") + f", got {tuple(t.shape)}"
        )
    return t[:, None].expand(batch, 2) if decoupled else t


Y_PREDICTIONS = ("velocity", "data")
# below this t a data-predicting network's velocity (y_t - y_hat) / t is taken at this t: the quotient
# stays bounded where y_t and y_hat are both the clean code
DATA_PREDICTION_MIN_T = 1e-3


def check_group_widths(widths: Sequence[int], norm_num_groups: int, name: str) -> int:
    """``norm_num_groups`` as an int, after checking that GroupNorm can split every width of ``widths`` (named ``name``)."""
    norm_num_groups = positive_int(norm_num_groups, "norm_num_groups")
    bad = [c for c in widths if c % norm_num_groups]
    if bad:
        raise ValueError(
            f"every width in {name}={tuple(widths)} must be divisible by norm_num_groups={norm_num_groups}; {bad} are not"
        )
    return norm_num_groups


class SymmFlowUNet(nn.Module):
    """Joint velocity field for SymmFlow: a MONAI DiffusionModelUNet over ``cat([x_t, y_t])``.

    Args:
        x_channels: channels of the image state ``x_t``.
        y_channels: channels of the code-mask state ``y_t``.
        spatial_dims: 2 or 3.
        channels: width of each UNet level; every width must be divisible by ``norm_num_groups``.
        num_res_blocks: residual blocks per level (int or one per level).
        attention_levels: self-attention on each level; ``None`` means none. MONAI's middle block
            always has self-attention, whatever this says.
        num_head_channels: channels per attention head (int or one per level); the number of heads
            is ``width // num_head_channels``.
        norm_num_groups: GroupNorm groups.
        norm_eps: GroupNorm epsilon.
        dropout: dropout before the second convolution of every residual block (the placement of
            the guided-diffusion UNet used by the authors). MONAI's block has no dropout of its own,
            so it is added with forward pre-hooks, which keeps the state dict identical to a plain
            DiffusionModelUNet's.
        time_scale: factor applied to t before the sinusoidal time embedding.
        resblock_updown: use residual blocks for down/up-sampling.
        use_flash_attention: use torch's scaled_dot_product_attention in MONAI's attention blocks.
        padding_mode: ``"replicate"`` (default) or ``"constant"`` (zeros) for the size padding.
        patch_size: side of the non-overlapping patches folded into channels before the UNet and
            unfolded after it (space-to-depth). 1 (default) keeps full resolution; 2 runs the UNet's
            first level at half the resolution with ``2 ** spatial_dims`` times the input channels,
            which removes the most expensive convolutions at small image sizes.
        y_prediction: what the UNet's code channels predict. ``"velocity"`` (default, the papers): ``v_y``
            itself. ``"data"``: the clean code ``y_hat``, turned into the velocity it implies on the path,
            ``v_y = (y_t - y_hat) / t`` (``t`` floored at :data:`DATA_PREDICTION_MIN_T`); an exact
            reparametrisation of the same field (the marginal ``E[v_y] = (y_t - E[y]) / t``) in which the
            noise ``y_t`` carries at ``t = 1`` passes through by construction. A velocity network must
            copy that noise through its layers to cancel it in ``y_t - v_y``; dense code masks of many
            channels make that copy the hard part, and a one-step segmentation keeps whatever of it
            fails as salt-and-pepper pixels (measured on CelebAMask-HQ, docs/results.md).
            :attr:`predicts_data` tells trainers to take the loss on ``y_hat``.
        decoupled_time: give the label half its own time. ``forward`` then takes ``t`` of shape (B, 2)
            ``(t_x, t_y)`` (a (B,) ``t`` still means ``t_x = t_y = t``): MONAI's time embedding reads
            ``t_x`` and a second one of the same layout (:attr:`time_embed_y`, a sinusoidal embedding and
            a two-layer MLP) reads ``t_y``; their sum conditions every residual block, as UniDiffuser
            conditions on the times of its two modalities. With ``y_prediction="data"`` the label velocity
            is ``(y_t - y_hat) / t_y``. The last layer of :attr:`time_embed_y` starts at zero, so a fresh
            decoupled network computes exactly the coupled network of the same seed: the blocks see
            embeddings of the scale MONAI's initialisation is made for (a second random embedding would
            double their variance) and the t_y branch still gets gradients from the first step on (its
            last layer's gradient is its nonzero hidden activation), the zero-initialised residual
            branch of ControlNet and adaLN-zero. A coupled network (False, default) refuses a (B, 2) ``t``
            rather than guess which column it should read; its state dict has no :attr:`time_embed_y`.

    Replicate padding is the default because the padded border is context only (it is cropped
    away and never supervised): replicating keeps a classification code mask ``y_t`` spatially
    constant and adds no artificial step edge at the image border for the convolutions to see,
    whereas zeros would put a mid-grey frame (0 in [-1, 1] units) around every input.
    """

    def __init__(
        self,
        x_channels: int,
        y_channels: int,
        spatial_dims: int = 2,
        channels: Sequence[int] = (64, 128, 128, 128),
        num_res_blocks: int | Sequence[int] = 2,
        attention_levels: Sequence[bool] | None = None,
        num_head_channels: int | Sequence[int] = 64,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        dropout: float = 0.0,
        time_scale: float = 1.0,
        resblock_updown: bool = False,
        use_flash_attention: bool = False,
        padding_mode: str = "replicate",
        patch_size: int = 1,
        y_prediction: str = "velocity",
        decoupled_time: bool = False,
    ) -> None:
        super().__init__()
        x_channels, y_channels = positive_int(x_channels, "x_channels"), positive_int(y_channels, "y_channels")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        channels = tuple(int(c) for c in channels)
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive widths, got {channels}")
        levels = len(channels)
        norm_num_groups = check_group_widths(channels, norm_num_groups, "channels")
        attention = (False,) * levels if attention_levels is None else tuple(bool(a) for a in attention_levels)
        if len(attention) != levels:
            raise ValueError(
                f"attention_levels needs one entry per level ({levels}, from channels={channels}), got {len(attention)}"
            )
        head_channels = _as_tuple(num_head_channels, levels, "num_head_channels")
        res_blocks = _as_tuple(num_res_blocks, levels, "num_res_blocks")
        if any(r < 1 for r in res_blocks):
            raise ValueError(f"num_res_blocks must be >= 1 on every level, got {res_blocks}")
        # the middle block attends at the last width even when attention_levels[-1] is False
        for i, (width, heads) in enumerate(zip(channels, head_channels)):
            if (attention[i] or i == levels - 1) and (heads < 1 or width % heads):
                where = "the middle block" if not attention[i] else f"attention level {i}"
                raise ValueError(
                    f"{where} has width {width}, which num_head_channels={heads} must divide"
                )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if not float(time_scale) > 0.0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        if padding_mode not in ("replicate", "constant"):
            raise ValueError(f"padding_mode must be 'replicate' or 'constant', got {padding_mode!r}")

        patch_size = positive_int(patch_size, "patch_size")
        if y_prediction not in Y_PREDICTIONS:
            raise ValueError(f"y_prediction must be one of {', '.join(Y_PREDICTIONS)}, got {y_prediction!r}")

        self.x_channels = x_channels
        self.y_channels = y_channels
        self.patch_size = patch_size
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.time_scale = float(time_scale)
        self.dropout = float(dropout)
        self.padding_mode = padding_mode
        self.y_prediction = y_prediction
        # each of the (levels - 1) downsamplings halves the size, and the up path must meet the skips
        self.size_multiple = patch_size * 2 ** (levels - 1)
        folded = (x_channels + y_channels) * patch_size**spatial_dims
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=folded,
            out_channels=folded,
            num_res_blocks=res_blocks,
            channels=channels,
            attention_levels=attention,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            resblock_updown=resblock_updown,
            num_head_channels=head_channels,
            use_flash_attention=use_flash_attention,
        )
        if self.dropout > 0.0:
            hook = functools.partial(_dropout_pre_hook, p=self.dropout)
            for block in self.unet.modules():
                if isinstance(block, DiffusionUNetResnetBlock):
                    block.conv2.register_forward_pre_hook(hook)
        if not isinstance(decoupled_time, bool):
            raise ValueError(f"decoupled_time must be true or false, got {decoupled_time!r}")
        self.decoupled_time = decoupled_time
        # the t_y of the forward pass running now, read by the hook on MONAI's time embedding
        self._t_y: torch.Tensor | None = None
        if decoupled_time:
            width = channels[0] * 4  # MONAI's time-embedding width
            self.time_embed_y = nn.Sequential(nn.Linear(channels[0], width), nn.SiLU(), nn.Linear(width, width))
            nn.init.zeros_(self.time_embed_y[2].weight)
            nn.init.zeros_(self.time_embed_y[2].bias)
            self.unet.time_embed.register_forward_hook(self._add_label_time)

    def _check_inputs(self, x_t: torch.Tensor, y_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Validate shapes and return ``t`` on ``x_t``'s device and dtype: (B,), or (B, 2) for a decoupled network."""
        return check_velocity_inputs(x_t, y_t, t, self.x_channels, self.y_channels, self.spatial_dims, self.decoupled_time)

    def forward(
        self, x_t: torch.Tensor, y_t: torch.Tensor, t: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocities ``(v_x, v_y)`` with the shapes of ``(x_t, y_t)``; ``t`` is a scalar, (B,) or, decoupled, (B, 2) ``(t_x, t_y)``."""
        t = self._check_inputs(x_t, y_t, t)
        if not self.decoupled_time:
            return self._velocity(x_t, y_t, t, t)
        self._t_y = t[:, 1]
        try:
            return self._velocity(x_t, y_t, t[:, 0], t[:, 1])
        finally:
            self._t_y = None

    def _velocity(
        self, x_t: torch.Tensor, y_t: torch.Tensor, t_x: torch.Tensor, t_y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass: ``t_x`` goes to MONAI's time embedding (``t_y`` to the hook's), ``t_y`` into a data prediction's quotient."""
        h = torch.cat([x_t, y_t], dim=1)
        size = h.shape[2:]
        target = [-(-s // self.size_multiple) * self.size_multiple for s in size]
        if list(size) != target:
            pad: list[int] = []
            # F.pad lists the last axis first; centre the image, any odd extra pixel goes after it
            for s, s_new in zip(reversed(size), reversed(target)):
                before = (s_new - s) // 2
                pad += [before, s_new - s - before]
            h = F.pad(h, pad, mode=self.padding_mode)
            starts = pad[-2::-2]  # the "before" amounts, first spatial axis first
            h = self._unet(h, t_x)
            h = h[(slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(starts, size))]
        else:
            h = self._unet(h, t_x)
        v_x, out_y = h[:, : self.x_channels], h[:, self.x_channels :]
        if self.y_prediction == "data":
            # in float32 (also under autocast): t near the floor makes the quotient large
            t_floor = t_y.float().clamp_min(DATA_PREDICTION_MIN_T).reshape((-1,) + (1,) * (y_t.ndim - 1))
            return v_x, (y_t.float() - out_y.float()) / t_floor
        return v_x, out_y

    @property
    def predicts_data(self) -> bool:
        """Whether the code channels predict the clean code (``y_prediction="data"``) rather than the velocity."""
        return self.y_prediction == "data"

    def _add_label_time(self, module: nn.Module, args: tuple[torch.Tensor, ...], emb: torch.Tensor) -> torch.Tensor:
        """Forward hook on MONAI's time embedding: add the embedding of the label time ``t_y`` to that of ``t_x``."""
        if self._t_y is None:
            raise RuntimeError("the decoupled time embedding ran outside SymmFlowUNet.forward, which sets t_y")
        sinusoid = get_timestep_embedding(self._t_y * self.time_scale, self.channels[0]).to(dtype=args[0].dtype)
        return emb + self.time_embed_y(sinusoid)

    def _unet(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet on ``h`` (sizes already a multiple of ``size_multiple``), folding patches around it."""
        if self.patch_size == 1:
            return self.unet(h, timesteps=t * self.time_scale)
        # space-to-depth and back: MONAI's (un)shuffle keeps torch.nn.PixelUnshuffle's channel order in 2-D
        dims = h.ndim - 2
        out = self.unet(pixelunshuffle(h, dims, self.patch_size), timesteps=t * self.time_scale)
        return pixelshuffle(out, dims, self.patch_size)


def _unwrap(network: nn.Module, attribute: str) -> nn.Module:
    """The module a DDP / EMA wrapper holds, unwrapped until one has ``attribute`` (a compiled module forwards it)."""
    while not hasattr(network, attribute) and isinstance(getattr(network, "module", None), nn.Module):
        network = network.module
    return network


def predicts_data(network: nn.Module) -> bool:
    """Whether ``network`` (or the module a DDP / EMA wrapper holds) predicts clean codes (``y_prediction="data"``)."""
    return bool(getattr(_unwrap(network, "predicts_data"), "predicts_data", False))


def is_decoupled(network: nn.Module) -> bool:
    """Whether ``network`` (or the module a DDP / EMA wrapper holds) takes separate image and label times (``decoupled_time``)."""
    return bool(getattr(_unwrap(network, "decoupled_time"), "decoupled_time", False))
