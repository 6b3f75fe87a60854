"""The ResNet-18 baseline's weights as a plain classifier callable, e.g. the real-data classifier of CAS."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medsymmflow.baselines.resnet import build_resnet18, predict_probabilities
from medsymmflow.io import load_checkpoint
from medsymmflow.metrics.cas import Classifier

__all__ = ["load_resnet_classifier"]


def load_resnet_classifier(
    path: str | os.PathLike,
    in_channels: int,
    num_classes: int,
    small_input: bool = True,
    device: str | torch.device = "cpu",
) -> Classifier:
    """The ResNet-18 baseline's ``model.pt`` as a callable ``(B, C, H, W) in [-1, 1] -> (B, K)`` softmax probabilities."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights not found: {path} (the ResNet-18 baseline writes model.pt)")
    state = load_checkpoint(path, map_location=device)
    model = build_resnet18(int(in_channels), int(num_classes), small_input=small_input)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(
            f"classifier weights {path} do not fit a ResNet-18 with {in_channels} input channels and "
            f"{num_classes} classes (small_input={small_input}): was it trained on another dataset? ({e})"
        ) from e
    model = model.to(device).eval()

    def classify(images: torch.Tensor) -> torch.Tensor:
        return predict_probabilities(model, images, device=device)

    return classify
