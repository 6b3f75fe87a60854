"""Velocity networks ``(x_t, y_t, t) -> (v_x, v_y)``: the MONAI and diffusers UNet wrappers, their presets, an MLP, EMA, the VAE codec, device preparation."""

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
    flow_channels,
    load_vae,
    measure_scale_factor,
    save_vae,
)
from medsymmflow.networks.mlp import SymmFlowMLP
from medsymmflow.networks.presets import NET_PRESETS, NETWORK_CLASSES, build_network, count_parameters
from medsymmflow.networks.sd_unet import SD21_BASE, SD_TIME_SCALE, SymmFlowSDUNet, UNetLoadError, load_pretrained_unet
from medsymmflow.networks.unet import SymmFlowUNet, is_decoupled, predicts_data

__all__ = [
    "NETWORK_CLASSES",
    "NET_PRESETS",
    "SD21_BASE",
    "SD_SCALE_FACTOR",
    "SD_TIME_SCALE",
    "SD_VAE",
    "VAE_PRESETS",
    "LatentCodec",
    "PresetAutoencoderKL",
    "SymmFlowMLP",
    "SymmFlowSDUNet",
    "SymmFlowUNet",
    "UNetLoadError",
    "VAELoadError",
    "build_network",
    "build_vae",
    "check_codec",
    "count_parameters",
    "create_ema",
    "flow_channels",
    "is_decoupled",
    "load_pretrained_unet",
    "load_vae",
    "measure_scale_factor",
    "predicts_data",
    "prepare_network",
    "save_vae",
    "uses_channels_last",
]
