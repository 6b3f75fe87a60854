"""Calibration of distance-based class probabilities: temperature fitting, ECE, Brier score, reliability bins.

SymmFlow classifies by the nearest class code; ``softmax(-d / tau)`` over the distances ``d`` (``(N, K)``)
turns them into probabilities. :func:`fit_temperature` picks ``tau`` by minimising the negative
log-likelihood on a validation split (temperature scaling, Guo et al. 2017).

Definitions used here:

* ECE is the standard top-label, equal-width-bin, L1 calibration error: confidence = max class
  probability, bins ``((m-1)/M, m/M]`` (a confidence of 0 falls in the first bin),
  ``ECE = sum_m (n_m / N) |acc_m - conf_m|``. It equals torchmetrics' ``MulticlassCalibrationError(norm="l1")``
  except for confidences lying exactly on a bin edge: torchmetrics uses ``[lo, hi)`` bins, gives an exact
  confidence of 1.0 a bin of its own and casts to float32, which matters for the sharp probabilities a
  small ``tau`` produces. Computing ECE from :func:`reliability_diagram_data` keeps the number and the
  plot on one binning rule.
* Brier score is the multi-class, unhalved form ``mean_n sum_k (p_nk - onehot_nk)^2`` in ``[0, 2]``
  (sklearn's ``brier_score_loss(..., scale_by_half=False)``); for a binary task it is twice the usual
  binary Brier score.

``probs`` may be ``(N, K)`` or, for binary tasks, ``(N,)`` holding ``P(class 1)``. ``labels`` are class
indices of shape ``(N,)`` or ``(N, 1)`` (as MedMNIST stores them).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch

from medsymmflow.checks import positive_float, positive_int
from medsymmflow.codes import distance_logits, distance_softmax
from medsymmflow.metrics.uncertainty import _as_float_array, _check_distances, score_distribution

__all__ = [
    "ReliabilityBins",
    "brier_score",
    "calibration_metrics",
    "distance_nll",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_diagram_data",
    "score_distances",
    "softmax_from_distances",
]

_PROB_ATOL = 1e-4  # float32 softmax rows sum to 1 within ~1e-6; looser sums mean the input is not probabilities
_NLL_EPS = 1e-12
_SCORE_FLOOR = 1e-6  # a class score of 0 would be an infinite distance; this is its largest, -log 1e-6 = 13.8
_LOG_TAU_HALF_RANGE = 12.0  # search tau within a factor e^12 of the typical distance spread


class ReliabilityBins(NamedTuple):
    """Per-bin mean confidence, accuracy (NaN for empty bins) and sample count; edges are ``linspace(0, 1, M+1)``."""

    confidences: np.ndarray
    accuracies: np.ndarray
    counts: np.ndarray


def _check_labels(labels: np.ndarray | torch.Tensor, num_classes: int, n: int) -> np.ndarray:
    """Class indices (N,) or (N, 1) -> int64 (N,), checked against ``num_classes`` and the sample count ``n``."""
    raw = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if raw.dtype == np.bool_:
        raise TypeError("labels must be integer class indices, got booleans")
    lab = _as_float_array(raw, "labels")
    if lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab[:, 0]
    if lab.ndim != 1:
        raise ValueError(f"labels must have shape (N,) or (N, 1), got {lab.shape}")
    if lab.shape[0] != n:
        raise ValueError(f"length mismatch: {n} predictions but {lab.shape[0]} labels")
    if not np.array_equal(lab, np.round(lab)):
        raise ValueError("labels must hold whole class indices, got fractional values")
    if lab.min() < 0 or lab.max() >= num_classes:
        raise ValueError(
            f"label out of range: found values in [{int(lab.min())}, {int(lab.max())}] "
            f"but there are {num_classes} classes (0..{num_classes - 1})"
        )
    return lab.astype(np.int64)


def _check_probs(probs: np.ndarray | torch.Tensor) -> np.ndarray:
    """Probabilities (N, K) or binary P(class 1) (N,) -> float64 (N, K) with rows summing to 1."""
    p = _as_float_array(probs, "probs")
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (N, K) or (N,) for binary tasks, got {p.shape}")
    if p.shape[1] < 2:
        raise ValueError(f"probs need at least 2 classes, got K={p.shape[1]}")
    if p.min() < -_PROB_ATOL or p.max() > 1 + _PROB_ATOL:
        raise ValueError(
            f"probs must lie in [0, 1], got values in [{p.min():g}, {p.max():g}]; "
            "convert scores or distances first (e.g. softmax_from_distances)"
        )
    worst = np.abs(p.sum(axis=1) - 1.0).max()
    if worst > _PROB_ATOL:
        raise ValueError(
            f"each row of probs must sum to 1, but a row is off by {worst:.3g}; "
            "convert scores or distances first (e.g. softmax_from_distances)"
        )
    return np.clip(p, 0.0, 1.0)


def softmax_from_distances(distances: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities ``softmax(-d / tau)`` (:func:`medsymmflow.codes.distance_softmax`) from distances ``(N, K)`` -> float64 ``(N, K)``."""
    d = _check_distances(distances, (2,))
    return distance_softmax(torch.from_numpy(d), temperature).numpy()


def score_distances(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """``-log p`` of class scores ``(N, K)`` read as distributions (p floored at 1e-6), for temperature scaling them.

    ``softmax_from_distances(score_distances(s), T)`` is ``p ** (1 / T)`` renormalised: ``T = 1`` gives the
    scores back, and for scores that are ``softmax(-d / tau)`` it equals ``softmax(-d / (tau T))``, the
    distance temperature. For a posterior read from a one-hot code it scales that posterior instead.
    """
    return -np.log(np.maximum(score_distribution(scores), _SCORE_FLOOR))


def distance_nll(
    distances: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, temperature: float
) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(-d / tau)`` (natural log)."""
    d = _check_distances(distances, (2,))
    lab = _check_labels(labels, d.shape[1], d.shape[0])
    return _nll(d, lab, positive_float(temperature, "temperature"))


def _nll(d: np.ndarray, lab: np.ndarray, tau: float) -> float:
    log_p = torch.log_softmax(distance_logits(torch.from_numpy(d), tau), dim=1).numpy()
    return float(-log_p[np.arange(d.shape[0]), lab].mean())


def fit_temperature(
    distances: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    bounds: tuple[float, float] | None = None,
) -> float:
    """Temperature ``tau`` of ``softmax(-d / tau)`` minimising the NLL of ``labels`` (fit on a validation split).

    The NLL is convex in ``1 / tau``, hence unimodal in ``log tau``; a bounded Brent search over ``log tau``
    finds it. Default bounds: ``s * e^{+-12}`` with ``s`` the median per-sample range of distances. A
    RuntimeWarning flags an optimum on a bound; perfectly separated validation predictions (every label
    strictly nearest) drive ``tau`` to 0, so the lower bound is returned with a warning.
    """
    from scipy.optimize import minimize_scalar

    d = _check_distances(distances, (2,))
    lab = _check_labels(labels, d.shape[1], d.shape[0])
    present = np.unique(lab)
    if present.size < 2:
        raise ValueError(
            f"fit_temperature needs labels from at least 2 classes, but only class {int(present[0])} is present"
        )
    if bounds is None:
        spread = float(np.median(d.max(axis=1) - d.min(axis=1)))
        if spread <= 0:
            spread = float(np.max(d.max(axis=1) - d.min(axis=1)))
        if spread <= 0:
            raise ValueError("all distances are equal across classes: the temperature cannot be identified")
        lo, hi = math.log(spread) - _LOG_TAU_HALF_RANGE, math.log(spread) + _LOG_TAU_HALF_RANGE
    else:
        if len(bounds) != 2:
            raise ValueError(f"bounds must be (low, high), got {bounds!r}")
        low, high = (positive_float(b, "bounds") for b in bounds)
        if not low < high:
            raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
        lo, hi = math.log(low), math.log(high)
    d_true = d[np.arange(d.shape[0]), lab]
    d_other = np.where(np.eye(d.shape[1], dtype=bool)[lab], np.inf, d).min(axis=1)
    if np.all(d_true < d_other):
        # Every label is strictly nearest: the NLL falls towards 0 as tau -> 0 and has no finite minimiser.
        warnings.warn(
            f"every validation sample is strictly nearest its own class code, so the NLL has no finite minimiser; "
            f"returning the lower search bound tau={math.exp(lo):.3g}",
            RuntimeWarning,
            stacklevel=2,
        )
        return float(math.exp(lo))
    res = minimize_scalar(
        lambda u: _nll(d, lab, math.exp(u)), bounds=(lo, hi), method="bounded", options={"xatol": 1e-6}
    )
    if not res.success:
        raise RuntimeError(f"temperature fit did not converge: {res.message}")
    if min(res.x - lo, hi - res.x) < 1e-3:
        warnings.warn(
            f"fitted temperature {math.exp(res.x):.3g} sits on the search bound [{math.exp(lo):.3g}, "
            f"{math.exp(hi):.3g}]: the validation NLL keeps falling outside it (separable or uninformative distances)",
            RuntimeWarning,
            stacklevel=2,
        )
    return float(math.exp(res.x))


def reliability_diagram_data(
    probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, n_bins: int = 15
) -> ReliabilityBins:
    """Top-label reliability bins ``((m-1)/M, m/M]``: mean confidence, accuracy and count per bin."""
    n_bins = positive_int(n_bins, "n_bins")
    p = _check_probs(probs)
    lab = _check_labels(labels, p.shape[1], p.shape[0])
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == lab).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" puts a confidence equal to an upper edge in that bin, i.e. right-closed bins.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / counts
        mean_acc = np.bincount(idx, weights=correct, minlength=n_bins) / counts
    return ReliabilityBins(confidences=mean_conf, accuracies=mean_acc, counts=counts.astype(np.int64))


def expected_calibration_error(
    probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, n_bins: int = 15
) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins: ``sum_m (n_m / N) |acc_m - conf_m|`` (in [0, 1])."""
    bins = reliability_diagram_data(probs, labels, n_bins)
    filled = bins.counts > 0
    weights = bins.counts[filled] / bins.counts.sum()
    return float(np.sum(weights * np.abs(bins.accuracies[filled] - bins.confidences[filled])))


def brier_score(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Multi-class Brier score ``mean_n sum_k (p_nk - onehot_nk)^2`` (unhalved, in [0, 2])."""
    p = _check_probs(probs)
    lab = _check_labels(labels, p.shape[1], p.shape[0])
    onehot = np.eye(p.shape[1])[lab]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def negative_log_likelihood(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Mean ``-log p_label`` (natural log; probabilities clipped at 1e-12 so a confident miss stays finite)."""
    p = _check_probs(probs)
    lab = _check_labels(labels, p.shape[1], p.shape[0])
    return float(-np.log(np.clip(p[np.arange(p.shape[0]), lab], _NLL_EPS, 1.0)).mean())


def calibration_metrics(
    probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, n_bins: int = 15
) -> dict[str, float]:
    """ECE, Brier score and NLL of ``probs`` in one dict (keys ``ece``, ``brier``, ``nll``)."""
    return {
        "ece": expected_calibration_error(probs, labels, n_bins),
        "brier": brier_score(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
    }
