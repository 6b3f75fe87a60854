"""Classification ACC / AUC from distances: torchmetrics and medmnist's own Evaluator, and run summaries."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from medsymmflow.codes import distance_softmax

__all__ = ["mean_two_sigma", "medmnist_metrics", "probabilities", "torchmetrics_metrics"]


def probabilities(distances: torch.Tensor | np.ndarray, temperature: float) -> torch.Tensor:
    """``softmax(-d / tau)`` (:func:`medsymmflow.codes.distance_softmax`) of ``(N, K)`` distances, in float64."""
    d = torch.as_tensor(np.asarray(distances, dtype=np.float64) if isinstance(distances, np.ndarray) else distances).double()
    if d.ndim != 2:
        raise ValueError(f"distances must have shape (N, K), got {tuple(d.shape)}")
    if not torch.isfinite(d).all():
        raise ValueError("distances contain NaN or infinite values")
    return distance_softmax(d, temperature)


def torchmetrics_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy (micro) and macro one-vs-rest AUROC with torchmetrics; binary AUROC uses the positive column.

    ``probs`` may be any per-class scores (e.g. posterior estimates slightly outside [0, 1]): each
    class's AUROC ranks its own column, as medmnist's Evaluator does, instead of torchmetrics'
    multiclass AUROC, which would first softmax scores that are not probabilities.
    """
    from torchmetrics.functional.classification import binary_auroc, multiclass_accuracy

    probs, labels = torch.as_tensor(probs).double(), torch.as_tensor(labels).long().reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs (N, K) and labels (N,) disagree: {tuple(probs.shape)} vs {tuple(labels.shape)}")
    k = probs.shape[1]
    acc = multiclass_accuracy(probs, labels, num_classes=k, average="micro")
    if torch.unique(labels).numel() < 2:
        auc = torch.tensor(float("nan"))
    elif k == 2:
        auc = binary_auroc(probs[:, 1], labels)
    else:
        auc = torch.stack([binary_auroc(probs[:, c], (labels == c).long()) for c in range(k)]).mean()
    return {"acc": float(acc), "auc": float(auc)}


def medmnist_metrics(
    flag: str, split: str, probs: np.ndarray | torch.Tensor, dataset_dir: str | os.PathLike, size: int = 28
) -> dict[str, float]:
    """ACC and AUC from medmnist's own ``Evaluator`` (it reads the labels from ``dataset_dir``)."""
    from medmnist import Evaluator  # lazy: importing medmnist touches ~/.medmnist

    evaluator = Evaluator(flag, split, size=size, root=str(dataset_dir))
    scores = np.asarray(torch.as_tensor(probs).double().cpu().numpy())
    if scores.shape[0] != evaluator.labels.shape[0]:
        raise ValueError(
            f"medmnist Evaluator expects {evaluator.labels.shape[0]} {split} samples of {flag}, got {scores.shape[0]}"
        )
    metrics = evaluator.evaluate(scores)
    return {"acc": float(metrics.ACC), "auc": float(metrics.AUC)}


def mean_two_sigma(values: Sequence[float]) -> dict[str, float]:
    """Mean and twice the sample standard deviation (ddof=1) over runs, as the papers report them."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to summarise")
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "two_sigma": 2.0 * std, "runs": [float(x) for x in v]}
