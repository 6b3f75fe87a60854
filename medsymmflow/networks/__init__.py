"""Velocity networks ``(x_t, y_t, t) -> (v_x, v_y)``: the MONAI UNet wrapper, its presets, an MLP, EMA, the VAE codec, device preparation."""

from medsymmflow.networks.device import prepare_network, uses_channels_last
from medsymmflow.networks.ema import create_ema
from medsymmflow.networks.latent import (
    SD_SCALE_FACTOR,
    SD_VAE,
    VAE_PRESETS,
    LatentCodec,
    PresetAutoencoderKL,
    VAELoadError,
    build_vae,
    check_codec,
    load_vae,
    measure_scale_factor,
    save_vae,
)
from medsymmflow.networks.mlp import SymmFlowMLP
from medsymmflow.networks.presets import NET_PRESETS, build_network, count_parameters
from medsymmflow.networks.unet import SymmFlowUNet

__all__ = [
    "NET_PRESETS",
    "SD_SCALE_FACTOR",
    "SD_VAE",
    "VAE_PRESETS",
    "LatentCodec",
    "PresetAutoencoderKL",
    "SymmFlowMLP",
    "SymmFlowUNet",
    "VAELoadError",
    "build_network",
    "build_vae",
    "check_codec",
    "count_parameters",
    "create_ema",
    "load_vae",
    "measure_scale_factor",
    "prepare_network",
    "save_vae",
    "uses_channels_last",
]
