"""Selective-prediction and calibration report from an evaluation bundle's ``predictions.csv``.

Inputs are predictions tables (:mod:`medsymmflow.reports.predictions` defines their columns): the ones
:class:`medsymmflow.engines.report.ClassificationReport` writes and, optionally, a baseline
classifier's, whose ``score_k`` are softmax probabilities and ``uncertainty`` is ``1 - max_k score_k``.

:func:`load_predictions` reads and checks one file, :func:`selective_report` turns the files into one
JSON-ready dict (selective metrics per decision and uncertainty score, calibration of
``softmax(-d / tau)`` and of the file's own class scores, the baseline in the same structure), and :func:`write_selective_report` writes
``selective_metrics.json``, ``accuracy_rejection.png`` and ``reliability.png``; :func:`make_selective_report`
does all three from file paths (what ``medsymmflow selective`` and the bundles' ``evaluation#selective`` run).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsymmflow.checks import positive_float, positive_int
from medsymmflow.metrics.calibration import (
    calibration_metrics,
    fit_temperature,
    reliability_diagram_data,
    score_distances,
    softmax_from_distances,
)
from medsymmflow.metrics.selective import DEFAULT_REJECTION_RATES, coverage_key, selective_metrics
from medsymmflow.metrics.uncertainty import UNCERTAINTY_SCORES, uncertainty_score
from medsymmflow.reports.predictions import (  # the table's one definition
    VAL_PREDICTIONS_FILE,
    Predictions,
    load_predictions,
    resolve_predictions_path,
)

__all__ = [
    "MEDSYMMFLOW_SCORES",
    "Predictions",
    "dataset_name",
    "load_predictions",
    "make_selective_report",
    "resolve_predictions_path",
    "selective_report",
    "write_selective_report",
]

MEDSYMMFLOW_SCORES = tuple(UNCERTAINTY_SCORES)  # the registry's names, in its order
REPORT_FILES = {"json": "selective_metrics.json", "curves": "accuracy_rejection.png", "reliability": "reliability.png"}

_SCORE_DEFINITIONS = {
    **{name: score.definition for name, score in UNCERTAINTY_SCORES.items()},
    "msp": "baseline: 1 - maximum softmax probability (the baseline's 'uncertainty' column)",
}
_BASELINE_PROB_ATOL = 1e-3  # CSV values carry ~6 significant digits; a looser row sum is not a softmax output


def dataset_name(predictions_path: str | os.PathLike) -> str | None:
    """The ``flag`` recorded in the ``metrics.json`` next to a predictions file, or ``None`` when there is none."""
    metrics = resolve_predictions_path(predictions_path).parent / "metrics.json"
    if not metrics.is_file():
        return None
    try:
        data = json.loads(metrics.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{metrics} is not valid JSON: {e}") from None
    flag = data.get("flag") if isinstance(data, dict) else None
    return str(flag) if flag else None


def _require_classes(pred: Predictions, role: str) -> None:
    """At least two classes must be present in the labels: selective and calibration metrics need both kinds."""
    present = np.unique(pred.labels)
    if present.size < 2:
        raise ValueError(
            f"only class {int(present[0])} is present in the labels of the {role} file {pred.path}; "
            "selective and calibration metrics need at least 2 classes"
        )


def _require_same_k(reference: Predictions, other: Predictions, role: str) -> None:
    if other.num_classes != reference.num_classes:
        raise ValueError(
            f"class count mismatch: {reference.path} has K={reference.num_classes} classes but the {role} file "
            f"{other.path} has K={other.num_classes}"
        )


def _score_entry(
    correct: np.ndarray, uncertainty: np.ndarray, coverages: Sequence[float], rates: np.ndarray
) -> dict[str, Any]:
    m = selective_metrics(correct, uncertainty, coverages, rates)
    entry = {"accuracy": m["accuracy"], "aurc": m["aurc"], "eaurc": m["eaurc"]}
    entry.update({coverage_key(c): m[coverage_key(c)] for c in coverages})
    entry["accuracy_rejection"] = m["rejection_accuracies"]
    return entry


def _reliability_entry(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> dict[str, Any]:
    bins = reliability_diagram_data(probs, labels, n_bins)
    return {
        **calibration_metrics(probs, labels, n_bins),
        "bins": n_bins,
        "reliability": {"confidences": bins.confidences, "accuracies": bins.accuracies, "counts": bins.counts},
    }


def _check_scores(scores: Sequence[str]) -> list[str]:
    names = [s.strip() for s in scores if s.strip()]
    unknown = [s for s in names if s not in MEDSYMMFLOW_SCORES]
    if unknown:
        raise ValueError(f"unknown uncertainty score(s) {', '.join(unknown)}; choose from {', '.join(MEDSYMMFLOW_SCORES)}")
    if not names:
        raise ValueError(f"no uncertainty score selected; choose from {', '.join(MEDSYMMFLOW_SCORES)}")
    return list(dict.fromkeys(names))


def _table_arrays(predictions: Predictions) -> dict[str, np.ndarray | None]:
    """The table's per-class and per-draw arrays, named as the registry's score functions read them."""
    return {"distances": predictions.distances, "scores": predictions.scores, "spread": predictions.spread}


_COLUMNS_OF = {"distances": "dist_k", "scores": "score_k", "spread": "spread"}


def _available_scores(names: Sequence[str], predictions: Predictions, notes: list[str]) -> list[str]:
    """The requested scores the table can compute; each one skipped gets a note saying which column it lacks."""
    arrays = _table_arrays(predictions)
    kept = []
    for name in names:
        missing = [_COLUMNS_OF[k] for k in UNCERTAINTY_SCORES[name].inputs if k in arrays and arrays[k] is None]
        if missing:
            notes.append(f"{name} skipped: the file has no {' / '.join(missing)} column(s)")
        elif name == "spread" and not np.any(predictions.spread):
            notes.append("spread skipped: every spread value is 0 (a single noise draw); evaluate with several draws")
        else:
            kept.append(name)
    return kept


def _fit_tau(distances: np.ndarray, labels: np.ndarray, where: str, notes: list[str]) -> float:
    """fit_temperature, with its RuntimeWarnings (tau on a search bound) kept as report warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        tau = fit_temperature(distances, labels)
    notes.extend(f"temperature fit on {where}: {w.message}" for w in caught if issubclass(w.category, RuntimeWarning))
    return tau


def _calibration(
    test: Predictions, val: Predictions | None, temperature: float | None, n_bins: int, warn: list[str]
) -> dict[str, Any]:
    """Temperature (and where it came from) plus ECE / Brier / NLL / reliability bins of softmax(-d / tau).

    ``scores`` holds the same for the file's class scores (``score_k``, e.g. the posterior read from a
    one-hot code) temperature-scaled as ``p ** (1 / T)``; with a fixed ``temperature`` (a distance tau)
    they are scored as written (``T = 1``). Fitted on validation, each entry also has its ``validation_ece``,
    so a caller can choose between the two without looking at the test split.
    """
    assert test.distances is not None
    if val is not None:
        assert val.distances is not None
        tau = _fit_tau(val.distances, val.labels, f"validation file {val.path}", warn)
        source = {"temperature_source": "validation", "temperature_file": str(val.path)}
    elif temperature is not None:
        tau, source = positive_float(temperature, "temperature"), {"temperature_source": "argument", "temperature_file": None}
    else:
        warn.append(
            "no validation predictions: the temperature was fitted on the test predictions themselves, "
            "so the calibration numbers are optimistic"
        )
        tau = _fit_tau(test.distances, test.labels, f"test file {test.path}", warn)
        source = {"temperature_source": "test", "temperature_file": str(test.path)}
    entry = _calibration_entry(test.distances, test, tau, source, None if val is None else val.distances, val, n_bins)
    entry["scores"] = _score_calibration(test, val, temperature is not None, n_bins, warn)
    return entry


def _calibration_entry(
    d_test: np.ndarray, test: Predictions, tau: float, source: dict[str, Any],
    d_val: np.ndarray | None, val: Predictions | None, n_bins: int,
) -> dict[str, Any]:
    """One calibration of ``softmax(-d / tau)``: tau, its source, the test reliability entry and, with a validation split, its ECE."""
    entry = {"temperature": tau, **source, **_reliability_entry(softmax_from_distances(d_test, tau), test.labels, n_bins)}
    if val is not None and d_val is not None:
        entry["validation_ece"] = calibration_metrics(softmax_from_distances(d_val, tau), val.labels, n_bins)["ece"]
    return entry


def _score_calibration(
    test: Predictions, val: Predictions | None, fixed: bool, n_bins: int, warn: list[str]
) -> dict[str, Any] | None:
    """Calibration of the class scores, temperature-scaled like the distances (None without score_k columns)."""
    if test.scores is None or (val is not None and val.scores is None):
        return None
    d_test = score_distances(test.scores)
    d_val = None if val is None else score_distances(val.scores)
    if val is not None:
        t = _fit_tau(d_val, val.labels, f"validation file {val.path} (class scores)", warn)
        source = "validation"
    elif fixed:
        t, source = 1.0, "none"
    else:
        t, source = _fit_tau(d_test, test.labels, f"test file {test.path} (class scores)", warn), "test"
    return _calibration_entry(d_test, test, t, {"temperature_source": source}, d_val, val, n_bins)


def _baseline_section(
    baseline: Predictions, test: Predictions, coverages: Sequence[float], rates: np.ndarray, n_bins: int
) -> dict[str, Any]:
    """The baseline classifier in the same structure: one decision (argmax) scored by 1 - max softmax."""
    if baseline.scores is None:
        raise ValueError(f"the baseline file {baseline.path} has no score_0..score_{{K-1}} (softmax probability) columns")
    _require_same_k(test, baseline, "baseline")
    _require_classes(baseline, "baseline")
    probs = baseline.scores
    worst = float(np.abs(probs.sum(axis=1) - 1.0).max())
    if probs.min() < 0 or probs.max() > 1 or worst > _BASELINE_PROB_ATOL:
        raise ValueError(
            f"the baseline file {baseline.path}: score_k columns must be softmax probabilities "
            f"(in [0, 1], rows summing to 1), found a row sum off by {worst:.3g}"
        )
    probs = probs / probs.sum(axis=1, keepdims=True)  # undo CSV rounding so the rows sum to 1 exactly
    notes: list[str] = []
    if baseline.num_samples != test.num_samples or not np.array_equal(np.sort(baseline.index), np.sort(test.index)):
        notes.append(
            f"the baseline covers a different sample set ({baseline.num_samples} rows) than the predictions "
            f"({test.num_samples} rows); its numbers are not paired with MedSymmFlow's"
        )
    else:
        by_index = dict(zip(test.index.tolist(), test.labels.tolist()))
        differ = sum(by_index[i] != lab for i, lab in zip(baseline.index.tolist(), baseline.labels.tolist()))
        if differ:
            raise ValueError(
                f"the baseline file {baseline.path} gives a different label than {test.path} for {differ} "
                "sample index(es): they are not predictions on the same test set"
            )
    correct = baseline.pred == baseline.labels
    return {
        "path": str(baseline.path),
        "num_samples": baseline.num_samples,
        "decisions": {"argmax": {"msp": _score_entry(correct, baseline.uncertainty, coverages, rates)}},
        "calibration": {
            "temperature": None,
            "temperature_source": "none: the baseline's softmax probabilities are used as given",
            "temperature_file": None,
            **_reliability_entry(probs, baseline.labels, n_bins),
        },
        "notes": notes,
    }


def selective_report(
    predictions: Predictions,
    val_predictions: Predictions | None = None,
    baseline: Predictions | None = None,
    scores: Sequence[str] = MEDSYMMFLOW_SCORES,
    temperature: float | None = None,
    n_bins: int = 15,
    coverages: Sequence[float] = (0.8, 0.9),
    rejection_rates: np.ndarray | Sequence[float] = DEFAULT_REJECTION_RATES,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Selective-prediction and calibration numbers for MedSymmFlow predictions (and a baseline) as a JSON-ready dict.

    For each decision (``mean``, and ``mode`` when the file has it) and each uncertainty score: accuracy,
    AURC, E-AURC, ``acc@<coverage>`` and the accuracy-rejection curve at ``rejection_rates``. Calibration of
    ``softmax(-d / tau)``: ``tau`` is fitted on ``val_predictions`` when given, else ``temperature`` is used,
    else ``tau`` is fitted on the test predictions (recorded in ``warnings``). Pass either
    ``val_predictions`` or ``temperature``, not both.
    """
    if val_predictions is not None and temperature is not None:
        raise ValueError("pass either validation predictions to fit the temperature (--val-predictions) or a fixed temperature (--temperature), not both")
    if predictions.distances is None:
        raise ValueError(
            f"{predictions.path} has no dist_0..dist_{{K-1}} columns; a baseline classifier's file goes in the "
            "baseline argument (--baseline)"
        )
    names = _check_scores(scores)
    _require_classes(predictions, "predictions")
    if val_predictions is not None:
        if val_predictions.distances is None:
            raise ValueError(f"the validation file {val_predictions.path} has no dist_0..dist_{{K-1}} columns")
        _require_same_k(predictions, val_predictions, "validation")
        _require_classes(val_predictions, "validation")
    rates = np.asarray(rejection_rates, dtype=np.float64)
    warn: list[str] = []
    notes: list[str] = []

    decisions: dict[str, tuple[np.ndarray, np.ndarray]] = {"mean": (predictions.pred, predictions.uncertainty)}
    if predictions.pred_mode is not None and predictions.uncertainty_mode is not None:
        decisions["mode"] = (predictions.pred_mode, predictions.uncertainty_mode)
    else:
        notes.append("mode decision skipped: the file has no pred_mode / uncertainty_mode values")
    reported = _available_scores(names, predictions, notes)
    section: dict[str, Any] = {"decisions": {}}
    for decision, (pred, distance) in decisions.items():
        correct = pred == predictions.labels
        # the table's arrays for this decision, named as the registry's score functions read them
        arrays = {"distance": distance, **_table_arrays(predictions)}
        section["decisions"][decision] = {
            name: _score_entry(correct, uncertainty_score(name, **arrays), coverages, rates) for name in reported
        }
    section["calibration"] = _calibration(predictions, val_predictions, temperature, n_bins, warn)
    section["notes"] = notes

    report: dict[str, Any] = {
        "dataset": dataset,
        "predictions": str(predictions.path),
        "num_samples": predictions.num_samples,
        "num_classes": predictions.num_classes,
        "rejection_rates": rates,
        "coverages": list(coverages),
        "scores": reported,
        "definitions": {k: v for k, v in _SCORE_DEFINITIONS.items() if k in names or (k == "msp" and baseline)},
        "medsymmflow": section,
        "baseline": None if baseline is None else _baseline_section(baseline, predictions, coverages, rates, n_bins),
        "warnings": warn,
    }
    from medsymmflow.io import json_safe

    return json_safe(report)


_SCORE_COLORS = {"distance": "tab:blue", "margin": "tab:orange", "spread": "tab:green", "entropy": "tab:purple", "combined": "tab:brown"}
_DECISION_STYLES = {"mean": "-", "mode": "--"}


def _report_curves(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Accuracy-rejection curves of a :func:`selective_report` dict, with a line style per decision and score."""
    rates = report["rejection_rates"]
    curves: dict[str, dict[str, Any]] = {}
    for decision, by_score in report["medsymmflow"]["decisions"].items():
        for score, entry in by_score.items():
            curves[f"MedSymmFlow {decision}, {score} (E-AURC {entry['eaurc']:.3f})"] = {
                "rates": rates,
                "accuracies": entry["accuracy_rejection"],
                "style": {"color": _SCORE_COLORS.get(score), "linestyle": _DECISION_STYLES.get(decision, "-")},
            }
    if report.get("baseline"):
        entry = report["baseline"]["decisions"]["argmax"]["msp"]
        curves[f"baseline, 1 - max softmax (E-AURC {entry['eaurc']:.3f})"] = {
            "rates": rates,
            "accuracies": entry["accuracy_rejection"],
            "style": {"color": "black", "linestyle": ":", "marker": "."},
        }
    return curves


def _report_bins(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Reliability bins of a :func:`selective_report` dict, labelled by model (and temperature)."""
    cal = report["medsymmflow"]["calibration"]
    bins = {
        f"MedSymmFlow softmax(-d/tau), tau={cal['temperature']:.3g} ({cal['temperature_source']})": {
            **cal["reliability"],
            "ece": cal["ece"],
        }
    }
    scores = cal.get("scores")
    if scores:
        bins[f"MedSymmFlow class scores, T={scores['temperature']:.3g} ({scores['temperature_source']})"] = {
            **scores["reliability"],
            "ece": scores["ece"],
        }
    if report.get("baseline"):
        base = report["baseline"]["calibration"]
        bins["baseline softmax"] = {**base["reliability"], "ece": base["ece"]}
    return bins


def write_selective_report(
    report: dict[str, Any], output_dir: str | os.PathLike, title: str | None = None
) -> dict[str, Path]:
    """Write ``selective_metrics.json``, ``accuracy_rejection.png`` and ``reliability.png`` atomically to ``output_dir``."""
    from medsymmflow.io import atomic_write
    from medsymmflow.reports.plots import plot_accuracy_rejection, plot_reliability

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    if title is None and report.get("dataset"):
        title = str(report["dataset"])
    paths = {
        "json": atomic_write(out / REPORT_FILES["json"], json.dumps(report, indent=2) + "\n"),
        "curves": plot_accuracy_rejection(
            _report_curves(report), out / REPORT_FILES["curves"], title=_title("accuracy-rejection", title)
        ),
        "reliability": plot_reliability(
            _report_bins(report), out / REPORT_FILES["reliability"], title=_title("reliability", title)
        ),
    }
    return paths


def _title(kind: str, dataset: str | None) -> str:
    return f"{dataset}: {kind}" if dataset else kind


def make_selective_report(
    predictions: str | os.PathLike,
    val_predictions: str | os.PathLike | None = None,
    baseline: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    scores: Sequence[str] | str = MEDSYMMFLOW_SCORES,
    temperature: float | None = None,
    bins: int = 15,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Read the prediction files, build the report and write its three files; returns the report and their paths.

    ``predictions``: a ``predictions.csv`` or the folder holding it. Without ``val_predictions``, a
    ``val_predictions.csv`` next to it fits tau unless ``temperature`` is given (then the file is
    ignored, with a note). ``scores``: names or a comma-separated string. ``output_dir`` defaults to
    the predictions' folder.
    """
    bins = positive_int(bins, "bins")
    pred_path = resolve_predictions_path(predictions)
    val_path = Path(val_predictions) if val_predictions else None
    notes = []
    if val_path is None and (pred_path.parent / VAL_PREDICTIONS_FILE).is_file():
        if temperature is None:
            val_path = pred_path.parent / VAL_PREDICTIONS_FILE
        else:  # an explicit temperature is the user's choice over a file found by convention
            notes.append(f"{pred_path.parent / VAL_PREDICTIONS_FILE} ignored: temperature {temperature:g} was given")
    if val_path is not None and val_path.resolve() == pred_path.resolve():
        raise ValueError(f"the validation file is the predictions file itself: {val_path}")
    report = selective_report(
        load_predictions(pred_path),
        val_predictions=load_predictions(val_path) if val_path is not None else None,
        baseline=load_predictions(baseline) if baseline else None,
        scores=scores.split(",") if isinstance(scores, str) else list(scores),
        temperature=temperature,
        n_bins=bins,
        dataset=dataset_name(pred_path),
    )
    report["medsymmflow"]["notes"].extend(notes)
    paths = write_selective_report(report, Path(output_dir) if output_dir else pred_path.parent)
    return report, paths
