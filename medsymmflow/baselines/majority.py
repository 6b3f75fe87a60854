"""The free floor of a segmentation benchmark: every test image gets the per-pixel majority class of the training masks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medsymmflow.metrics.segmentation import SegmentationMetrics

__all__ = ["majority_class_map", "score_majority_floor"]


def majority_class_map(label_maps: np.ndarray | torch.Tensor, num_classes: int, ignore_index: int | None = 255) -> torch.Tensor:
    """``(H, W)`` int64: at every pixel the class most training masks ``(N, H, W)`` hold there (``ignore_index`` not counted).

    A tie goes to the lowest class index; a pixel unlabelled in every mask gets class 0.
    """
    maps = torch.as_tensor(np.asarray(label_maps)).long()
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"label_maps must be (N, H, W) with N >= 1, got shape {tuple(maps.shape)}")
    k = int(num_classes)
    labelled = maps != ignore_index if ignore_index is not None else torch.ones_like(maps, dtype=torch.bool)
    if bool(((maps[labelled] < 0) | (maps[labelled] >= k)).any()):
        raise ValueError(f"label_maps hold values outside 0..{k - 1}" + (f" and {ignore_index}" if ignore_index is not None else ""))
    safe = maps.where(labelled, torch.zeros_like(maps))
    counts = torch.nn.functional.one_hot(safe, k).mul_(labelled[..., None]).sum(0)  # (H, W, K)
    return counts.argmax(-1)  # argmax returns the first maximum: ties go to the lowest class


def score_majority_floor(
    train_maps: np.ndarray | torch.Tensor,
    test_maps: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int | None = 255,
    background: int | None = 0,
) -> dict[str, Any]:
    """:class:`SegmentationMetrics` of the training masks' majority map predicted for every test mask (one confusion matrix)."""
    floor = majority_class_map(train_maps, num_classes, ignore_index)
    test = torch.as_tensor(np.asarray(test_maps)).long()
    if test.ndim == 4 and test.shape[1] == 1:
        test = test[:, 0]
    if test.ndim != 3 or tuple(test.shape[1:]) != tuple(floor.shape):
        raise ValueError(f"test label maps {tuple(test.shape)} are not (N, {floor.shape[0]}, {floor.shape[1]}) like the training masks")
    metric = SegmentationMetrics(num_classes, ignore_index, background)
    metric.update(floor.expand_as(test), test)
    return metric.compute()
