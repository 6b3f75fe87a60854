"""Selective prediction: accuracy-rejection curve, risk-coverage curve, AURC and E-AURC.

Inputs are per-sample correctness ``correct`` (bool or 0/1, shape ``(N,)``) and an uncertainty score
``uncertainty`` (``(N,)``, higher = more uncertain; see :mod:`medsymmflow.metrics.uncertainty`).

Ordering rule shared by every function: samples are sorted by increasing uncertainty with a stable
sort, so tied samples keep their input order and, among ties, the *later* samples are rejected
first. Rejecting a fraction ``r`` drops ``floor(r * N)`` samples (a ``1e-9`` tolerance absorbs float
error such as ``0.7 * 10 = 6.999...``); a coverage ``c`` therefore keeps ``N - floor((1 - c) * N)``.

AURC follows Geifman et al. (ICLR 2019): with the ``k`` most certain samples kept (coverage ``k/N``,
``k = 1..N``) the selective risk is ``errors_k / k``, and ``AURC = mean_k risk_k``. E-AURC subtracts the
AURC of the optimal ranking of the same predictions (every correct sample before every error), computed
exactly on the finite sample: with ``E`` errors, ``AURC* = (1/N) sum_{k > N-E} (k - (N-E)) / k``. Its
continuous limit for error rate ``e`` is ``e + (1 - e) ln(1 - e)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from medsymmflow.metrics.uncertainty import _as_float_array

__all__ = [
    "DEFAULT_REJECTION_RATES",
    "SelectivePredictionMetrics",
    "accuracy_at_coverage",
    "accuracy_rejection_curve",
    "aurc",
    "coverage_key",
    "eaurc",
    "optimal_aurc",
    "risk_coverage_curve",
    "selective_metrics",
]

DEFAULT_REJECTION_RATES = np.round(np.arange(0.0, 0.951, 0.05), 10)
DEFAULT_REJECTION_RATES.setflags(write=False)  # a shared default must not be mutable

_FLOAT_TOL = 1e-9


def _check_correct(correct: np.ndarray | torch.Tensor | Sequence[bool]) -> np.ndarray:
    """Correctness flags -> float64 (N,) of 0/1, with a ValueError naming the problem."""
    c = _as_float_array(correct, "correct")
    if c.ndim != 1:
        raise ValueError(f"correct must be 1-D with one flag per sample, got shape {c.shape}")
    if not np.isin(c, (0.0, 1.0)).all():
        raise ValueError("correct must hold booleans or 0/1 values (1 = prediction is right)")
    return c


def _check_pair(
    correct: np.ndarray | torch.Tensor | Sequence[bool], uncertainty: np.ndarray | torch.Tensor | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Validate correctness and uncertainty together and return them as float64 arrays."""
    c = _check_correct(correct)
    u = _as_float_array(uncertainty, "uncertainty")
    if u.ndim != 1:
        raise ValueError(f"uncertainty must be 1-D with one score per sample, got shape {u.shape}")
    if u.shape[0] != c.shape[0]:
        raise ValueError(f"length mismatch: correct has {c.shape[0]} samples but uncertainty has {u.shape[0]}")
    return c, u


def _sorted_by_confidence(correct: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
    """Correctness flags ordered most certain first (stable, so ties keep input order)."""
    return correct[np.argsort(uncertainty, kind="stable")]


def _n_rejected(rate: float, n: int) -> int:
    """Samples dropped when rejecting a fraction ``rate`` of ``n`` (floor; at least one sample is kept)."""
    return min(int(np.floor(rate * n + _FLOAT_TOL)), n - 1)


def accuracy_rejection_curve(
    correct: np.ndarray | torch.Tensor | Sequence[bool],
    uncertainty: np.ndarray | torch.Tensor | Sequence[float],
    rejection_rates: np.ndarray | Sequence[float] = DEFAULT_REJECTION_RATES,
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy on the samples left after dropping the most uncertain fraction ``r`` -> ``(rates, accuracies)``."""
    c, u = _check_pair(correct, uncertainty)
    rates = _as_float_array(rejection_rates, "rejection_rates")
    if rates.ndim != 1:
        raise ValueError(f"rejection_rates must be 1-D, got shape {rates.shape}")
    if rates.min() < 0 or rates.max() >= 1:
        raise ValueError(f"rejection rates must lie in [0, 1), got values in [{rates.min():g}, {rates.max():g}]")
    ordered_hits = np.cumsum(_sorted_by_confidence(c, u))
    n = c.shape[0]
    kept = np.array([n - _n_rejected(r, n) for r in rates])
    return rates, ordered_hits[kept - 1] / kept


def risk_coverage_curve(
    correct: np.ndarray | torch.Tensor | Sequence[bool],
    uncertainty: np.ndarray | torch.Tensor | Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Selective risk when keeping the ``k`` most certain samples, ``k = 1..N`` -> ``(coverages k/N, risks)``."""
    c, u = _check_pair(correct, uncertainty)
    return _risk_coverage(_sorted_by_confidence(c, u))


def _risk_coverage(ordered_correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(1, ordered_correct.shape[0] + 1, dtype=np.float64)
    return k / k[-1], np.cumsum(1.0 - ordered_correct) / k


def aurc(
    correct: np.ndarray | torch.Tensor | Sequence[bool],
    uncertainty: np.ndarray | torch.Tensor | Sequence[float],
) -> float:
    """Area under the risk-coverage curve: mean selective risk over the ``N`` coverage points (lower is better)."""
    return float(risk_coverage_curve(correct, uncertainty)[1].mean())


def optimal_aurc(correct: np.ndarray | torch.Tensor | Sequence[bool]) -> float:
    """AURC of the best possible ranking of these predictions (all correct samples first), exact for finite ``N``."""
    c = _check_correct(correct)
    return float(_risk_coverage(np.sort(c)[::-1])[1].mean())


def eaurc(
    correct: np.ndarray | torch.Tensor | Sequence[bool],
    uncertainty: np.ndarray | torch.Tensor | Sequence[float],
) -> float:
    """Excess AURC: ``AURC - AURC*`` of the optimal ranking; 0 for a perfect ranking (lower is better)."""
    c, u = _check_pair(correct, uncertainty)
    return float(_risk_coverage(_sorted_by_confidence(c, u))[1].mean() - _risk_coverage(np.sort(c)[::-1])[1].mean())


def accuracy_at_coverage(
    correct: np.ndarray | torch.Tensor | Sequence[bool],
    uncertainty: np.ndarray | torch.Tensor | Sequence[float],
    coverage: float,
) -> float:
    """Accuracy on the most certain fraction ``coverage`` in ``(0, 1]`` (keeps ``N - floor((1 - coverage) N)``)."""
    coverage = _check_coverage(coverage)
    return float(accuracy_rejection_curve(correct, uncertainty, [1.0 - coverage])[1][0])


def _check_coverage(coverage: float) -> float:
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float, np.floating, np.integer)):
        raise TypeError(f"coverage must be a number in (0, 1], got {coverage!r}")
    coverage = float(coverage)
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    return coverage


def coverage_key(coverage: float) -> str:
    """Result key for the accuracy at ``coverage``: ``0.8 -> "acc@80"``, ``0.975 -> "acc@97.5"``."""
    return f"acc@{round(100.0 * _check_coverage(coverage), 6):g}"


def selective_metrics(
    correct: np.ndarray | torch.Tensor | Sequence[bool],
    uncertainty: np.ndarray | torch.Tensor | Sequence[float],
    coverages: Sequence[float] = (0.8, 0.9),
    rejection_rates: np.ndarray | Sequence[float] = DEFAULT_REJECTION_RATES,
) -> dict[str, float | np.ndarray]:
    """All selective-prediction numbers at once: accuracy, AURC, E-AURC, ``acc@<coverage%>`` and the rejection curve."""
    c, u = _check_pair(correct, uncertainty)
    rates, accuracies = accuracy_rejection_curve(c, u, rejection_rates)
    out: dict[str, float | np.ndarray] = {
        "accuracy": float(c.mean()),
        "aurc": aurc(c, u),
        "eaurc": eaurc(c, u),
    }
    for cov in coverages:
        out[coverage_key(cov)] = accuracy_at_coverage(c, u, cov)
    out["rejection_rates"] = rates
    out["rejection_accuracies"] = accuracies
    return out


class SelectivePredictionMetrics(Metric):
    """torchmetrics wrapper: accumulate ``(preds, target, uncertainty)`` and compute :func:`selective_metrics`.

    ``preds`` and ``target`` are class indices of shape ``(N,)`` (``(N, 1)`` is accepted, as MedMNIST labels
    come); ``uncertainty`` is ``(N,)``. ``compute()`` returns a dict of float64 tensors with keys
    ``accuracy``, ``aurc``, ``eaurc``, ``acc@80``, ``acc@90`` (one per ``coverages``), ``rejection_rates``
    and ``rejection_accuracies``.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        coverages: Sequence[float] = (0.8, 0.9),
        rejection_rates: np.ndarray | Sequence[float] = DEFAULT_REJECTION_RATES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.coverages = tuple(_check_coverage(c) for c in coverages)
        rates = _as_float_array(rejection_rates, "rejection_rates")
        if rates.ndim != 1 or rates.min() < 0 or rates.max() >= 1:
            raise ValueError("rejection_rates must be a 1-D sequence of values in [0, 1)")
        self.rejection_rates = rates
        self.add_state("correct", default=[], dist_reduce_fx="cat")
        self.add_state("uncertainty", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, uncertainty: torch.Tensor) -> None:
        """Add a batch of predicted classes, true classes and uncertainty scores."""
        preds, target = _as_class_vector(preds, "preds"), _as_class_vector(target, "target")
        unc = torch.as_tensor(uncertainty).detach()
        if unc.ndim == 2 and unc.shape[1] == 1:
            unc = unc[:, 0]
        if unc.ndim != 1:
            raise ValueError(f"uncertainty must have shape (N,), got {tuple(unc.shape)}")
        if not (preds.shape[0] == target.shape[0] == unc.shape[0]):
            raise ValueError(
                f"length mismatch: preds {preds.shape[0]}, target {target.shape[0]}, uncertainty {unc.shape[0]}"
            )
        if not unc.is_floating_point():
            unc = unc.double()
        if not torch.isfinite(unc).all():
            raise ValueError("uncertainty contains NaN or infinite values")
        # uint8 rather than bool: not every distributed backend gathers bool tensors.
        self.correct.append((preds == target.to(preds.device)).to(device=self.device, dtype=torch.uint8))
        self.uncertainty.append(unc.to(device=self.device, dtype=torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        """Selective-prediction metrics over every sample seen since the last reset."""
        if not self.correct:
            raise ValueError("SelectivePredictionMetrics.compute() called before any update()")
        correct = dim_zero_cat(self.correct).cpu().numpy()
        unc = dim_zero_cat(self.uncertainty).cpu().numpy()
        result = selective_metrics(correct, unc, self.coverages, self.rejection_rates)
        return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in result.items()}


def _as_class_vector(values: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Class indices of shape (N,) or (N, 1) -> int64 tensor (N,)."""
    t = torch.as_tensor(values).detach()
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise ValueError(
            f"{name} must be class indices of shape (N,), got {tuple(t.shape)}; "
            "for distances (N, K) pass distances.argmin(1)"
        )
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if t.is_floating_point():
        if not torch.isfinite(t).all() or not torch.equal(t, t.round()):
            raise ValueError(f"{name} must hold whole class indices, got non-integer values")
    return t.long()
