"""Per-sample uncertainty scores from codebook distances; higher always means more uncertain.

Every score reads the distances between the predicted code and every class code, as returned by
``ClassCodebook.decode(...).distances`` (numpy or torch):

* ``distance`` (the papers' score): distance to the predicted (nearest) code, ``min_k d[n, k]``.
* ``margin``: ``-(d_second_nearest - d_nearest)``; a small gap between the two nearest codes means
  the prediction could easily flip, so the negated gap grows with uncertainty.
* ``spread``: disagreement of ``R`` noise draws, for distances of shape ``(R, N, K)`` (see
  :func:`spread_uncertainty` for the exact rule).

``distance`` and ``margin`` also accept ``(R, N, K)``: the draws are averaged first, matching a
prediction made from the averaged distances. All scores return float64 numpy arrays of shape ``(N,)``.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch

__all__ = [
    "UNCERTAINTY_SCORES",
    "distance_uncertainty",
    "majority_vote",
    "margin_uncertainty",
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


def distance_uncertainty(distances: np.ndarray | torch.Tensor) -> np.ndarray:
    """Distance to the nearest class code, ``min_k d[n, k]``, from ``(N, K)`` or draws ``(R, N, K)``."""
    d = _check_distances(distances, (2, 3))
    if d.ndim == 3:
        d = d.mean(axis=0)
    return d.min(axis=1)


def margin_uncertainty(distances: np.ndarray | torch.Tensor) -> np.ndarray:
    """Negated gap between the second-nearest and nearest code, ``-(d_(2) - d_(1))``; in ``[-inf, 0]``."""
    d = _check_distances(distances, (2, 3))
    if d.ndim == 3:
        d = d.mean(axis=0)
    two_smallest = np.partition(d, 1, axis=1)[:, :2]
    return -(two_smallest[:, 1] - two_smallest[:, 0])


def majority_vote(distances: np.ndarray | torch.Tensor) -> np.ndarray:
    """Most frequent per-draw nearest class over draws ``(R, N, K)`` -> int64 ``(N,)``; ties go to the lower index."""
    d = _check_distances(distances, (3,))
    votes = _vote_counts(d)
    return votes.argmax(axis=1).astype(np.int64)


def _vote_counts(d: np.ndarray) -> np.ndarray:
    """Per-sample vote counts ``(N, K)`` of the per-draw nearest class."""
    r, n, k = d.shape
    per_draw = d.argmin(axis=2)  # (R, N)
    counts = np.zeros((n, k), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(n), (r, n)), per_draw), 1)
    return counts


def spread_uncertainty(distances: np.ndarray | torch.Tensor) -> np.ndarray:
    """Disagreement of ``R >= 2`` noise draws ``(R, N, K)`` with their majority vote, tie-broken by distance spread.

    Rule: ``score = f + g / R`` with ``f = 1 - (votes for the majority class) / R`` (the fraction of draws
    whose nearest code is not the majority class; a multiple of ``1/R``) and ``g = s / (1 + s)`` where
    ``s`` is the standard deviation (``ddof=0``) over draws of the per-draw nearest distance. As
    ``0 <= g < 1`` the tie-break term stays below one disagreement step, so samples are ordered by ``f``
    first and, among equal ``f``, by ``s`` (both larger = more uncertain). The score lies in ``[0, 1)``.
    """
    d = _check_distances(distances, (3,))
    r = d.shape[0]
    if r < 2:
        raise ValueError(f"the spread score needs at least 2 noise draws on the first axis, got R={r}")
    disagreement = 1.0 - _vote_counts(d).max(axis=1) / r
    s = d.min(axis=2).std(axis=0)
    return disagreement + (s / (1.0 + s)) / r


UNCERTAINTY_SCORES: dict[str, Callable[..., np.ndarray]] = {
    "distance": distance_uncertainty,
    "margin": margin_uncertainty,
    "spread": spread_uncertainty,
}


def uncertainty_score(name: str, **arrays: np.ndarray | torch.Tensor) -> np.ndarray:
    """Uncertainty score ``name`` from ``UNCERTAINTY_SCORES``, e.g. ``uncertainty_score("margin", distances=d)``."""
    if name not in UNCERTAINTY_SCORES:
        raise ValueError(f"unknown uncertainty score {name!r}; choose one of {', '.join(UNCERTAINTY_SCORES)}")
    expected = set(inspect.signature(UNCERTAINTY_SCORES[name]).parameters)
    if set(arrays) != expected:
        raise TypeError(f"uncertainty score {name!r} takes {sorted(expected)} as keywords, got {sorted(arrays)}")
    return UNCERTAINTY_SCORES[name](**arrays)
