"""Per-sample uncertainty scores: the one registry of them, :data:`UNCERTAINTY_SCORES`; higher always means more uncertain.

Each score reads some of these arrays (numpy or torch), named as the predictions table's columns hold them:

* ``distance`` ``(N,)``: the decision's distance from the predicted code to the decided class's code
  (``ClassificationResult.uncertainty``; the ``uncertainty`` column).
* ``distances`` ``(N, K)``: the distance to every class code (``dist_k``), or per-draw ``(R, N, K)``,
  averaged over the draws first.
* ``spread`` ``(N,)``: the fraction of noise draws disagreeing with their majority class
  (:func:`draw_spread` of the per-draw distances; the ``spread`` column).
* ``scores`` ``(N, K)``: the per-class scores the decision's ACC / AUC come from (``score_k``): the class
  posterior read from a one-hot code (``evaluation#score posterior``) or ``softmax(-d / tau)``.

The scores (see :data:`UNCERTAINTY_SCORES` for the text the reports print):

* ``distance`` (the papers' score): the decision's own distance.
* ``margin``: ``-(d_second_nearest - d_nearest)``; a small gap between the two nearest codes means
  the prediction could easily flip, so the negated gap grows with uncertainty.
* ``spread``: the draws' disagreement, ties (it takes only multiples of ``1/R``) ordered by the distance.
* ``entropy``: the Shannon entropy of the class scores, read as a distribution (negative posterior
  estimates clipped to 0, each row renormalised), ties (the clipped, certain rows) ordered by the distance.
* ``combined``: the mean of the normalised ranks of ``distance``, ``margin`` and ``entropy``; no weights
  to fit, so a validation split only has to choose it over the single scores, not tune it.

All scores return float64 numpy arrays of shape ``(N,)``; :func:`uncertainty_score` computes one by name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.stats import rankdata

from medsymmflow.codes import majority_class

__all__ = [
    "UNCERTAINTY_SCORES",
    "UncertaintyScore",
    "class_entropy",
    "combined_uncertainty",
    "distance_uncertainty",
    "draw_spread",
    "entropy_uncertainty",
    "majority_vote",
    "margin_uncertainty",
    "score_distribution",
    "spread_uncertainty",
    "uncertainty_score",
]


def _as_float_array(values: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Any numpy / torch / sequence input -> finite, non-empty float64 numpy array (ValueError otherwise)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype == torch.bfloat16:
            values = values.float()
        values = values.numpy()
    arr = np.asarray(values)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real, got complex dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN or infinite value(s)")
    return arr


def _check_distances(distances: np.ndarray | torch.Tensor, allowed_ndim: tuple[int, ...]) -> np.ndarray:
    d = _as_float_array(distances, "distances")
    if d.ndim not in allowed_ndim:
        shapes = " or ".join({2: "(N, K)", 3: "(R, N, K)"}[n] for n in allowed_ndim)
        raise ValueError(f"distances must have shape {shapes}, got {d.shape}")
    if d.shape[-1] < 2:
        raise ValueError(f"distances need at least 2 classes on the last axis, got K={d.shape[-1]}")
    if d.min() < 0:
        raise ValueError(
            f"distances must be >= 0, got a minimum of {d.min():g}; pass distances, not scores such as -distance"
        )
    return d


def _check_per_sample(values: np.ndarray | torch.Tensor, name: str, n: int | None = None) -> np.ndarray:
    v = _as_float_array(values, name)
    if v.ndim != 1 or (n is not None and v.shape[0] != n):
        raise ValueError(f"{name} must have shape (N,){'' if n is None else f' with N={n}'}, got {v.shape}")
    if v.min() < 0:
        raise ValueError(f"{name} must be >= 0, got a minimum of {v.min():g}")
    return v


def distance_uncertainty(distance: np.ndarray | torch.Tensor) -> np.ndarray:
    """The decision's distance from the predicted code to the decided class's code, ``(N,)``, as float64."""
    return _check_per_sample(distance, "distance")


def margin_uncertainty(distances: np.ndarray | torch.Tensor) -> np.ndarray:
    """Negated gap between the second-nearest and nearest code, ``-(d_(2) - d_(1))``; in ``[-inf, 0]``."""
    d = _check_distances(distances, (2, 3))
    if d.ndim == 3:
        d = d.mean(axis=0)
    two_smallest = np.partition(d, 1, axis=1)[:, :2]
    return -(two_smallest[:, 1] - two_smallest[:, 0])


def _vote_counts(d: np.ndarray) -> np.ndarray:
    """Per-sample vote counts ``(N, K)`` of the per-draw nearest class."""
    r, n, k = d.shape
    per_draw = d.argmin(axis=2)  # (R, N)
    counts = np.zeros((n, k), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(n), (r, n)), per_draw), 1)
    return counts


def majority_vote(draw_distances: np.ndarray | torch.Tensor) -> np.ndarray:
    """Majority of the per-draw nearest classes over draws ``(R, N, K)`` -> int64 ``(N,)``.

    Ties follow :func:`medsymmflow.codes.majority_class`, the classifier's ``vote`` rule: the smaller
    mean distance over the draws, then the lower index.
    """
    d = _check_distances(draw_distances, (3,))
    return majority_class(torch.from_numpy(_vote_counts(d)), torch.from_numpy(d.mean(axis=0))).numpy().astype(np.int64)


def draw_spread(draw_distances: np.ndarray | torch.Tensor) -> np.ndarray:
    """Fraction of noise draws ``(R, N, K)`` whose nearest class is not their :func:`majority_vote`, ``(N,)``."""
    d = _check_distances(draw_distances, (3,))
    nearest = d.argmin(axis=2)  # (R, N)
    return (nearest != majority_vote(d)[None]).mean(axis=0)


def spread_uncertainty(spread: np.ndarray | torch.Tensor, distance: np.ndarray | torch.Tensor) -> np.ndarray:
    """The draws' disagreement ``spread`` ``(N,)``, ties ordered by the decision's ``distance`` ``(N,)``.

    ``spread`` takes few values (multiples of ``1/R``), so samples are ordered by it first and, among
    equal ``spread``, by ``distance`` (both larger = more uncertain); equal pairs keep their order. The
    score is each sample's position in that order, ``0 .. N-1``.
    """
    s = _as_float_array(spread, "spread")
    if s.ndim != 1:
        raise ValueError(f"spread must have shape (N,), got {s.shape}")
    return _ranks_breaking_ties(s, _check_per_sample(distance, "distance", s.shape[0]))


def score_distribution(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """Class scores ``(N, K)`` as distributions: negative values clipped to 0, each row renormalised to sum 1."""
    p = _as_float_array(scores, "scores")
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"scores must have shape (N, K) with K >= 2, got {p.shape}")
    # a posterior read from a predicted one-hot code can fall slightly below 0; such a class has no mass
    p = np.clip(p, 0.0, None)
    totals = p.sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        raise ValueError(f"scores: {int((totals <= 0).sum())} row(s) have no positive class score, so no distribution")
    return p / totals


def class_entropy(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """Shannon entropy (nats) of each row of class scores ``(N, K)`` read as a distribution; in ``[0, log K]``."""
    p = score_distribution(scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def entropy_uncertainty(scores: np.ndarray | torch.Tensor, distance: np.ndarray | torch.Tensor) -> np.ndarray:
    """The :func:`class_entropy` of ``scores`` ``(N, K)``, ties ordered by the decision's ``distance`` ``(N,)``.

    A posterior read from a one-hot code that overshoots the code is clipped to one certain class, so
    many samples share an entropy of exactly 0 (a third of a PneumoniaMNIST split); the distance orders
    them. The score is each sample's position in that order, ``0 .. N-1``, as for :func:`spread_uncertainty`.
    """
    entropy = class_entropy(scores)
    return _ranks_breaking_ties(entropy, _check_per_sample(distance, "distance", entropy.shape[0]))


def _ranks_breaking_ties(primary: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Each sample's position ``0 .. N-1`` when ordered by ``primary``, equal ones by ``distance`` (stable)."""
    order = np.lexsort((distance, primary))
    ranks = np.empty(order.shape[0], dtype=np.float64)
    ranks[order] = np.arange(order.shape[0])
    return ranks


def _normalised_rank(values: np.ndarray) -> np.ndarray:
    """Average ranks scaled to ``[0, 1]`` (ties share their mean rank); a single sample gets 0.5."""
    if values.shape[0] == 1:
        return np.full(1, 0.5)
    return (rankdata(values) - 1.0) / (values.shape[0] - 1.0)


def combined_uncertainty(
    distance: np.ndarray | torch.Tensor, distances: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor
) -> np.ndarray:
    """Mean normalised rank of the ``distance``, ``margin`` and ``entropy`` scores, ``(N,)`` in ``[0, 1]``."""
    parts = [distance_uncertainty(distance), margin_uncertainty(distances)]
    n = parts[0].shape[0]
    if parts[1].shape[0] != n or np.shape(scores)[0] != n:
        raise ValueError(f"distance, distances and scores must cover the same samples, got {n}, {parts[1].shape[0]}, {np.shape(scores)[0]}")
    parts.append(entropy_uncertainty(scores, distance))
    return np.mean([_normalised_rank(p) for p in parts], axis=0)


@dataclass(frozen=True)
class UncertaintyScore:
    """One uncertainty score: what it measures (the text reports print) and the function computing it."""

    definition: str
    function: Callable[..., np.ndarray]

    @property
    def inputs(self) -> tuple[str, ...]:
        """The arrays the function reads, by keyword."""
        return tuple(inspect.signature(self.function).parameters)


UNCERTAINTY_SCORES: dict[str, UncertaintyScore] = {
    "distance": UncertaintyScore(
        "distance between the predicted code and the predicted class's code (the 'uncertainty' column; "
        "'uncertainty_mode' for the mode decision)",
        distance_uncertainty,
    ),
    "margin": UncertaintyScore(
        "-(d_second_nearest - d_nearest) over the dist_k columns (pixel-mean distances; the CSV holds no "
        "per-class distances of the mode decision, so both decisions use these)",
        margin_uncertainty,
    ),
    "spread": UncertaintyScore(
        "fraction of noise draws disagreeing with the majority vote (the 'spread' column), ties ordered by "
        "the decision's distance score",
        spread_uncertainty,
    ),
    "entropy": UncertaintyScore(
        "entropy of the class scores (the score_k columns, e.g. the posterior read from a one-hot code), "
        "negative values clipped to 0 and each row renormalised; ties ordered by the decision's distance score",
        entropy_uncertainty,
    ),
    "combined": UncertaintyScore(
        "mean of the normalised ranks (0 = most certain, 1 = least) of the distance, margin and entropy scores",
        combined_uncertainty,
    ),
}


def uncertainty_score(name: str, **arrays: np.ndarray | torch.Tensor | None) -> np.ndarray:
    """Uncertainty score ``name`` of :data:`UNCERTAINTY_SCORES`, e.g. ``uncertainty_score("margin", distances=d)``.

    ``arrays`` may hold more than the score reads (one set serves every score); arrays it does not read
    are ignored, and one it reads that is missing (or ``None``) is a TypeError naming it.
    """
    if name not in UNCERTAINTY_SCORES:
        raise ValueError(f"unknown uncertainty score {name!r}; choose one of {', '.join(UNCERTAINTY_SCORES)}")
    score = UNCERTAINTY_SCORES[name]
    missing = [k for k in score.inputs if arrays.get(k) is None]
    if missing:
        raise TypeError(f"uncertainty score {name!r} takes {list(score.inputs)} as keywords, missing {missing}")
    return score.function(**{k: arrays[k] for k in score.inputs})
