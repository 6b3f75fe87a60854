"""Named velocity-network configurations: MedSymmFlow's (pixel, pixel segmentation and latent), two CPU-sized ones,
SymmFlow's Stable Diffusion 2.1 UNet with a MONAI counterpart, and test-sized ones.

Each preset names its class under ``"network"``: ``"monai"`` builds a :class:`SymmFlowUNet` (MONAI
DiffusionModelUNet), ``"diffusers"`` a :class:`SymmFlowSDUNet` (diffusers UNet2DConditionModel); the
other entries are that class's constructor arguments.

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
resolution for about half the step time; ``"cpu_patch_wide"`` is it at 1.5x the width. ``"tiny"`` is for tests.

``"sd21"`` is the natural-image model of SymmFlow (CelebAMask-HQ, COCO-Stuff at 512 px): Stable Diffusion
2.1-base's UNet on 64 x 64 VAE latents, 8 channels in and out (SymmFlowSDUNet's defaults, ~866M parameters),
random weights unless ``pretrained`` names SD weights. ``"sd21_monai"`` is a MONAI DiffusionModelUNet of the
same widths and depth (320/640/1280/1280, 2 residual blocks) with self-attention where SD has cross-attention
(the three finer levels) and 64-channel heads, for MONAI networks throughout. ``"sd21_tiny"`` is the SD
UNet's layout at test size (milliseconds at 8-16 px latents).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from medsymmflow.networks.sd_unet import SymmFlowSDUNet
from medsymmflow.networks.unet import SymmFlowUNet

__all__ = ["NET_PRESETS", "NETWORK_CLASSES", "build_network", "count_parameters"]

NETWORK_CLASSES: dict[str, type[nn.Module]] = {"monai": SymmFlowUNet, "diffusers": SymmFlowSDUNet}

NET_PRESETS: dict[str, dict[str, Any]] = {
    # MedSymmFlow Table 4; 28 px inputs are padded to 32 (4 levels need a multiple of 8)
    "paper": {
        "network": "monai",
        "channels": (64, 128, 128, 128),
        "num_res_blocks": 2,
        "attention_levels": (False, True, False, False),
        "num_head_channels": 64,
        "norm_num_groups": 32,
        "dropout": 0.0,
    },
    # MedSymmFlow Table 5 (Latent MedSymmFlow): base width 128, multipliers 1,2,2,2
    "paper_latent": {
        "network": "monai",
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
        "network": "monai",
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
        "network": "monai",
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
        "network": "monai",
        "channels": (64, 64),
        "num_res_blocks": 1,
        "attention_levels": (False, True),
        "num_head_channels": 32,
        "norm_num_groups": 8,
        "dropout": 0.0,
        "patch_size": 2,
    },
    # for tests: milliseconds per forward pass. attention_levels is left to the default (none) so
    # that overriding `channels` with more levels still builds.
    "tiny": {
        "network": "monai",
        "channels": (8, 16),
        "num_res_blocks": 1,
        "num_head_channels": 8,
        "norm_num_groups": 4,
        "dropout": 0.0,
    },
    # SymmFlow's latent model: Stable Diffusion 2.1-base's UNet (SymmFlowSDUNet's defaults are its config)
    "sd21": {
        "network": "diffusers",
    },
    # a MONAI DiffusionModelUNet of SD 2.1's widths and depth: self-attention on SD's cross-attention levels
    # (MONAI's middle block adds one at the coarsest), SD's GroupNorm epsilon, torch's memory-efficient attention
    "sd21_monai": {
        "network": "monai",
        "channels": (320, 640, 1280, 1280),
        "num_res_blocks": 2,
        "attention_levels": (True, True, True, False),
        "num_head_channels": 64,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "dropout": 0.0,
        "use_flash_attention": True,
    },
    # for tests: SD's layout (cross-attention level, plain level) at a few ten thousand parameters
    "sd21_tiny": {
        "network": "diffusers",
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "attention_head_dim": 2,
        "cross_attention_dim": 8,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "norm_num_groups": 4,
        "context_tokens": 4,
        "sample_size": 8,
    },
}
# the "cpu_patch" network for dense labels (configs/segmentation_cpu.json): its code channels predict the
# clean code mask, not the velocity (SymmFlowUNet y_prediction "data"), so the noise of y_t at t = 1 does
# not have to be copied through the UNet to cancel; with velocity output the 30-minute CelebAMask-HQ run
# kept most of that noise in its one-step masks (docs/results.md)
NET_PRESETS["cpu_segmentation"] = {**NET_PRESETS["cpu_patch"], "y_prediction": "data"}
# "cpu_patch" at 1.5x the width (about 2.2x the parameters and multiply-adds): the width lever of
# docs/results.md's unified benchmark, within its throughput target (>= 1/3 of the ResNet-18's)
NET_PRESETS["cpu_patch_wide"] = {**NET_PRESETS["cpu_patch"], "channels": (96, 96)}

def _constructor_args(cls: type[nn.Module]) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__init__).parameters) - {"self", "x_channels", "y_channels"}


def build_network(
    preset: str, x_channels: int, y_channels: int, pretrained: str | None = None, **overrides: Any
) -> SymmFlowUNet | SymmFlowSDUNet:
    """Build the velocity network of a named preset; keyword ``overrides`` replace preset entries.

    ``pretrained`` (a Hugging Face name or folder of Stable Diffusion weights, see :class:`SymmFlowSDUNet`)
    initialises a diffusers preset from those weights; ``None`` keeps random weights (any preset).
    """
    if preset not in NET_PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; valid presets: {', '.join(sorted(NET_PRESETS))}")
    kwargs = dict(NET_PRESETS[preset])
    cls = NETWORK_CLASSES[kwargs.pop("network")]
    valid = _constructor_args(cls) - {"pretrained"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(
            f"unknown {cls.__name__} argument(s) {unknown} for the preset {preset!r}; valid overrides: {', '.join(sorted(valid))}"
        )
    if pretrained is not None:
        if "pretrained" not in _constructor_args(cls):
            diffusers = sorted(k for k, v in NET_PRESETS.items() if v["network"] == "diffusers")
            raise ValueError(
                f"the preset {preset!r} ({cls.__name__}) cannot start from pretrained weights ({pretrained!r}); "
                f"pretrained Stable Diffusion weights need a diffusers preset: {', '.join(diffusers)}"
            )
        overrides["pretrained"] = pretrained
    return cls(x_channels=x_channels, y_channels=y_channels, **{**kwargs, **overrides})


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
