"""Named SymmFlowUNet configurations: the paper's (pixel, pixel segmentation and latent), two CPU-sized ones and a test-sized one.

``"paper"`` follows MedSymmFlow's appendix (Table 4, low-resolution models): base width 64 with
multipliers 1,2,2,2, two residual blocks per level, 64 channels per attention head, attention at
resolution 2 (the level after the first downsampling), dropout 0. The table's "4 heads" is
overridden by the 64 head channels, as in the guided-diffusion UNet the authors use: a width-128
level gets 128 / 64 = 2 heads. MONAI's middle block always adds self-attention as well.
``"paper_segmentation"`` is the same UNet for dense labels at 64 px and up (the CelebAMask-HQ bundle):
attention at the two coarsest levels, where a 64 px input is 16 and 8 px, so its cost stays that of the
low-resolution model's. ``"paper_latent"`` is the latent model of Table 5 (base width 128, otherwise the same), run on the
4 x 28 x 28 latents of a 224 px image. ``"cpu"`` is a 1.1M-parameter UNet at full resolution;
``"cpu_patch"`` (the CPU recipe's, ``configs/cpu.json``) the same widths with ``patch_size=2``: each 2 x 2
patch is folded into channels before the UNet and back after it, so the UNet runs at half the
resolution for about half the step time. ``"tiny"`` is for tests.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from medsymmflow.networks.unet import SymmFlowUNet

__all__ = ["NET_PRESETS", "build_network", "count_parameters"]

NET_PRESETS: dict[str, dict[str, Any]] = {
    # MedSymmFlow Table 4; 28 px inputs are padded to 32 (4 levels need a multiple of 8)
    "paper": {
        "channels": (64, 128, 128, 128),
        "num_res_blocks": 2,
        "attention_levels": (False, True, False, False),
        "num_head_channels": 64,
        "norm_num_groups": 32,
        "dropout": 0.0,
    },
    # MedSymmFlow Table 5 (Latent MedSymmFlow): base width 128, multipliers 1,2,2,2
    "paper_latent": {
        "channels": (128, 256, 256, 256),
        "num_res_blocks": 2,
        "attention_levels": (False, True, False, False),
        "num_head_channels": 64,
        "norm_num_groups": 32,
        "dropout": 0.0,
    },
    # the pixel-space segmentation / synthesis network (bundles/celebamask_hq at 64 px and up): SymmFlow's
    # pixel models are the Guided Diffusion UNet, whose widths and blocks the "paper" preset takes from
    # MedSymmFlow Table 4; the SymmFlow paper's own dense-label models are latent (Stable Diffusion 2.1's
    # UNet) and its text gives no pixel-space configuration, so this preset is that UNet with attention
    # moved to the two coarsest levels (16 and 8 px of a 64 px input) instead of the 32 px one
    "paper_segmentation": {
        "channels": (64, 128, 128, 128),
        "num_res_blocks": 2,
        "attention_levels": (False, False, True, True),
        "num_head_channels": 64,
        "norm_num_groups": 32,
        "dropout": 0.0,
    },
    # about 1M parameters; 3 levels keep 28 px unpadded (28 -> 14 -> 7); ~60 s per 4.7k-image
    # epoch on 2 CPU threads (DESIGN.md)
    "cpu": {
        "channels": (32, 64, 64),
        "num_res_blocks": 1,
        "attention_levels": (False, False, True),
        "num_head_channels": 32,
        "norm_num_groups": 8,
        "dropout": 0.0,
    },
    # the "cpu" network's budget at half the cost per step: 2 x 2 patches folded into channels
    # (space-to-depth) so the first level runs at 14 px, the second at 7 px with attention
    "cpu_patch": {
        "channels": (64, 64),
        "num_res_blocks": 1,
        "attention_levels": (False, True),
        "num_head_channels": 32,
        "norm_num_groups": 8,
        "dropout": 0.0,
        "patch_size": 2,
    },
    # the "cpu_patch" network for dense labels (configs/celebamask_cpu.json): its code channels predict the
    # clean code mask, not the velocity (SymmFlowUNet y_prediction "data"), so the noise of y_t at t = 1 does
    # not have to be copied through the UNet to cancel; with velocity output the 30-minute CelebAMask-HQ run
    # kept most of that noise in its one-step masks (docs/results.md)
    "cpu_segmentation": {
        "channels": (64, 64),
        "num_res_blocks": 1,
        "attention_levels": (False, True),
        "num_head_channels": 32,
        "norm_num_groups": 8,
        "dropout": 0.0,
        "patch_size": 2,
        "y_prediction": "data",
    },
    # for tests: milliseconds per forward pass. attention_levels is left to the default (none) so
    # that overriding `channels` with more levels still builds.
    "tiny": {
        "channels": (8, 16),
        "num_res_blocks": 1,
        "num_head_channels": 8,
        "norm_num_groups": 4,
        "dropout": 0.0,
    },
}

_CONSTRUCTOR_ARGS = frozenset(inspect.signature(SymmFlowUNet.__init__).parameters) - {"self", "x_channels", "y_channels"}


def build_network(preset: str, x_channels: int, y_channels: int, **overrides: Any) -> SymmFlowUNet:
    """Build a SymmFlowUNet from a named preset; keyword ``overrides`` replace preset entries."""
    if preset not in NET_PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; valid presets: {', '.join(sorted(NET_PRESETS))}")
    unknown = sorted(set(overrides) - _CONSTRUCTOR_ARGS)
    if unknown:
        raise TypeError(
            f"unknown SymmFlowUNet argument(s) {unknown}; valid overrides: {', '.join(sorted(_CONSTRUCTOR_ARGS))}"
        )
    kwargs = {**NET_PRESETS[preset], **overrides}
    return SymmFlowUNet(x_channels=x_channels, y_channels=y_channels, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
