"""Classification Accuracy Score (CAS): how often a classifier trained on real images recognises generated ones.

CAS asks whether a generated "class k" image carries class k's features as a real-data classifier
sees them: generate images per class, classify them with a classifier trained on the real training
split, report the accuracy overall and per class. High FID with high CAS means images that are
off-distribution but class-faithful; low CAS means the conditioning is ignored or confused.
(This is the "real-trained classifier on generated data" reading of CAS; Ravuri & Vinyals'
original trains on generated data and tests on real.) The classifier is any callable; the ResNet-18
baseline's weights load with :func:`medsymmflow.baselines.load_resnet_classifier`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from medsymmflow.checks import positive_int
from medsymmflow.io import check_uint8_images, to_float_images

__all__ = ["Classifier", "classification_accuracy_score"]

Classifier = Callable[[torch.Tensor], torch.Tensor]


def classification_accuracy_score(
    generated_images: np.ndarray | torch.Tensor,
    generated_labels: np.ndarray | torch.Tensor,
    classifier: Classifier,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Accuracy of ``classifier`` on generated images against the classes they were generated for.

    ``generated_images``: uint8 ``(N, H, W, C)``; the classifier receives float ``(B, C, H, W)`` batches
    in [-1, 1] and returns ``(B, K)`` class probabilities (or scores: the argmax is used). Returns
    ``{"overall", "per_class", "counts", "num_samples"}``; ``per_class[k]`` is None when no sample of
    class ``k`` was given.
    """
    from torchmetrics.functional.classification import multiclass_accuracy

    images = check_uint8_images(generated_images, "generated_images")
    labels = torch.as_tensor(np.asarray(generated_labels)).long().reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} generated images but {labels.shape[0]} labels")
    if labels.numel() == 0:
        raise ValueError("no generated images to score")
    if not callable(classifier):
        raise TypeError(f"classifier must be callable images -> probabilities, got {type(classifier).__name__}")
    batch_size = positive_int(batch_size, "batch_size")
    with torch.inference_mode():
        parts = [
            torch.as_tensor(classifier(to_float_images(images[i : i + batch_size]))).detach().float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
    probs = torch.cat(parts)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"the classifier must return (N, K) probabilities, got {tuple(probs.shape)} for {labels.shape[0]} images"
        )
    k = probs.shape[1]
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(
            f"labels must lie in [0, {k - 1}] for a {k}-class classifier, got [{int(labels.min())}, {int(labels.max())}]"
        )
    overall = multiclass_accuracy(probs, labels, num_classes=k, average="micro")
    per_class = multiclass_accuracy(probs, labels, num_classes=k, average="none")
    counts = torch.bincount(labels, minlength=k)
    return {
        "overall": float(overall),
        "per_class": [float(a) if n > 0 else None for a, n in zip(per_class.tolist(), counts.tolist())],
        "counts": counts.tolist(),
        "num_samples": int(labels.numel()),
    }
