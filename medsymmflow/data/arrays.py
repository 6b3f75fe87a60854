"""A segmentation split as arrays: the images and label maps a transform pipeline gives, stacked for synthesis metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medsymmflow.io import to_uint8_images

__all__ = ["SegmentationArrays", "segmentation_arrays"]


@dataclass
class SegmentationArrays:
    """One split as arrays: uint8 ``images`` ``(N, H, W, C)``, int64 ``label_maps`` ``(N, H, W)`` (ignore values kept), ``ids``."""

    images: np.ndarray
    label_maps: np.ndarray
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        """The number of image / label-map pairs."""
        return int(self.label_maps.shape[0])


def segmentation_arrays(
    data: Sequence[Mapping[str, Any]],
    transform: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    image_key: str = "image",
    label_key: str = "label",
) -> SegmentationArrays:
    """Run ``transform`` (the evaluation pipeline) over ``data`` (e.g. :func:`celebamask_hq_dicts`) and stack the results.

    ``transform`` must give a channel-first float image in [-1, 1] (what the network sees) and a label map
    ``(1, H, W)``; the images come back as uint8 with :func:`~medsymmflow.io.to_uint8_images`
    (``round((x + 1) * 127.5)``), so the arrays are the evaluator's own inputs on the 8-bit scale. Every pair
    must come out at one size (a crop to a fixed size ensures it); a ValueError names the first that does not.
    """
    if len(data) == 0:
        raise ValueError("segmentation_arrays: the split holds no image / label-map pairs")
    images, labels, ids = [], [], []
    for i, item in enumerate(data):
        out = transform(dict(item))
        image = torch.as_tensor(out[image_key]).float()
        label = torch.as_tensor(out[label_key])
        where = item.get("id", item.get(image_key, i))
        if image.ndim != 3 or label.ndim != 3 or label.shape[0] != 1 or label.shape[1:] != image.shape[1:]:
            raise ValueError(
                f"{where}: the transform gave an image of shape {tuple(image.shape)} and a label map of shape "
                f"{tuple(label.shape)}; segmentation arrays need (C, H, W) and (1, H, W) on one grid"
            )
        if images and image.shape != images[0].shape:
            raise ValueError(
                f"{where}: the transform gave {tuple(image.shape[1:])} px but the first pair {tuple(images[0].shape[1:])} px; "
                "crop every pair to one size"
            )
        images.append(image)
        labels.append(label[0].round().long())
        ids.append(str(item.get("id", i)))
    return SegmentationArrays(
        images=to_uint8_images(torch.stack(images)), label_maps=torch.stack(labels).numpy(), ids=ids
    )
