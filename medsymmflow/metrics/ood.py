"""Out-of-distribution detection from per-image scores: AUROC of in-distribution against OOD images.

Scores follow the package's convention (higher = more uncertain / less like the training data: the
uncertainty scores of :mod:`medsymmflow.metrics.uncertainty`, the velocity error of
:class:`medsymmflow.ood.VelocityErrorScorer`, ``1 - max softmax`` of a plain classifier). The AUROC is
the probability that a random OOD image scores higher than a random in-distribution one (ties count
one half): 1 separates perfectly, 0.5 is chance, below 0.5 ranks the OOD images as the more familiar.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from medsymmflow.metrics.uncertainty import _as_float_array

__all__ = ["max_softmax_uncertainty", "ood_auroc", "ood_aurocs"]


def _scores(values: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    v = _as_float_array(values, name)
    if v.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got {v.shape}")
    return v


def ood_auroc(in_scores: np.ndarray | torch.Tensor, out_scores: np.ndarray | torch.Tensor) -> float:
    """AUROC of telling ``out_scores`` (OOD images, positives) from ``in_scores`` (in-distribution) by the score."""
    from sklearn.metrics import roc_auc_score

    a, b = _scores(in_scores, "in_scores"), _scores(out_scores, "out_scores")
    labels = np.concatenate([np.zeros(a.shape[0]), np.ones(b.shape[0])])
    return float(roc_auc_score(labels, np.concatenate([a, b])))


def ood_aurocs(
    in_scores: Mapping[str, np.ndarray | torch.Tensor], out_scores: Mapping[str, np.ndarray | torch.Tensor]
) -> dict[str, float]:
    """:func:`ood_auroc` per score name; both mappings must name the same scores."""
    if set(in_scores) != set(out_scores):
        raise ValueError(f"in- and out-of-distribution scores differ: {sorted(in_scores)} vs {sorted(out_scores)}")
    return {name: ood_auroc(in_scores[name], out_scores[name]) for name in in_scores}


def max_softmax_uncertainty(probs: np.ndarray | torch.Tensor) -> np.ndarray:
    """``1 - max_k p_k`` of class probabilities ``(N, K)``: the plain classifier's uncertainty (and OOD) score."""
    p = _as_float_array(probs, "probs")
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, K) with K >= 2, got {p.shape}")
    return 1.0 - p.max(axis=1)
