"""Velocity networks ``(x_t, y_t, t) -> (v_x, v_y)``: the MONAI UNet wrapper, its presets, an MLP, EMA."""

from medsymmflow.networks.ema import create_ema
from medsymmflow.networks.mlp import SymmFlowMLP
from medsymmflow.networks.presets import NET_PRESETS, build_network, count_parameters
from medsymmflow.networks.unet import SymmFlowUNet

__all__ = ["NET_PRESETS", "SymmFlowMLP", "SymmFlowUNet", "build_network", "count_parameters", "create_ema"]
