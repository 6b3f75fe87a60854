"""The classification predictions table (``predictions.csv``): its one definition, writer and reader.

One row per sample, columns in this order (``K`` classes; a group is left out when the writer has
nothing for it):

==================================  =======  ==========================================================
column                              dtype    meaning
==================================  =======  ==========================================================
``index``                           int      the sample's position in its split
``label``                           int      the true class
``pred``                            int      the class the classifier decided (its ``decision``:
                                             ``mean`` / ``mode`` / ``vote``; a baseline: the argmax)
``uncertainty``                     float    distance from the predicted code to the decided class's
                                             code (a baseline: ``1 - max_k score_k``)
``dist_0`` .. ``dist_{K-1}``        float    distance to every class code (MedSymmFlow only)
``score_0`` .. ``score_{K-1}``      float    per-class scores whose argmax is ``pred`` (what ACC / AUC
                                             and medmnist's Evaluator are computed from)
``pred_mode``, ``uncertainty_mode`` int,     the ``mode`` decision and its distance (MedSymmFlow only;
                                    float    ``uncertainty_mode`` may be blank in every row)
``spread``                          float    fraction of noise draws disagreeing with their majority
``schema_version``                  int      :data:`SCHEMA_VERSION` in every row
==================================  =======  ==========================================================

The version is a column rather than a comment line so that ``pandas.read_csv``, ``csv.DictReader``
and spreadsheets read the file as they are. Files without it are version 1 (written before the
version existed, with the same columns): they are read the same way, but their ``pred`` and
``score_k`` follow the nearest code of the mean distances even when another decision was evaluated.
Floats are written with 9 significant digits: read back as float32 every value is exact, and two
different float32 values never print alike or swap order, so ACC and AUC recomputed from the file
(e.g. with medmnist's Evaluator) equal the ones the writer reported.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsymmflow.io import atomic_write

__all__ = [
    "PREDICTIONS_FILE",
    "REQUIRED_COLUMNS",
    "SCHEMA_COLUMN",
    "SCHEMA_VERSION",
    "VAL_PREDICTIONS_FILE",
    "Predictions",
    "load_predictions",
    "predictions_columns",
    "resolve_predictions_path",
    "write_predictions",
]

SCHEMA_VERSION = 2
SCHEMA_COLUMN = "schema_version"
PREDICTIONS_FILE = "predictions.csv"
VAL_PREDICTIONS_FILE = "val_predictions.csv"
REQUIRED_COLUMNS = ("label", "pred", "uncertainty")  # plus dist_k or score_k
FLOAT_FORMAT = ".9g"
_CLASS_FAMILIES = ("dist", "score")


def predictions_columns(num_classes: int, distances: bool = True, scores: bool = True, mode: bool = True, spread: bool = True) -> list[str]:
    """The header of a predictions table of ``num_classes`` classes with the given column groups."""
    k = int(num_classes)
    return (
        ["index", *REQUIRED_COLUMNS]
        + ([f"dist_{c}" for c in range(k)] if distances else [])
        + ([f"score_{c}" for c in range(k)] if scores else [])
        + (["pred_mode", "uncertainty_mode"] if mode else [])
        + (["spread"] if spread else [])
        + [SCHEMA_COLUMN]
    )


def _array(values: Any, name: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` (tensor, array or list) as a numpy array of ``shape``; a ValueError names a mismatch."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.shape != shape:
        raise ValueError(f"predictions column group '{name}' must have shape {shape}, got {arr.shape}")
    return arr.astype(dtype) if dtype is int else arr.astype(np.float64)


def write_predictions(
    path: str | os.PathLike,
    labels: Any,
    pred: Any,
    uncertainty: Any,
    scores: Any,
    index: Any | None = None,
    distances: Any | None = None,
    pred_mode: Any | None = None,
    uncertainty_mode: Any | None = None,
    spread: Any | None = None,
) -> Path:
    """Write a predictions table atomically (the groups given, in the order of :func:`predictions_columns`).

    ``labels`` / ``pred`` / ``uncertainty`` / ``index`` / ``spread`` / ``pred_mode`` / ``uncertainty_mode``:
    (N,); ``scores`` / ``distances``: (N, K). ``uncertainty_mode`` without ``pred_mode`` is an error;
    ``pred_mode`` without it leaves ``uncertainty_mode`` blank.
    """
    sc = np.asarray(scores.detach().cpu().numpy() if hasattr(scores, "detach") else scores)
    if sc.ndim != 2:
        raise ValueError(f"scores must have shape (N, K), got {sc.shape}")
    n, k = sc.shape
    sc = sc.astype(np.float64)
    cols: dict[str, np.ndarray] = {
        "index": np.arange(n) if index is None else _array(index, "index", int, (n,)),
        "label": _array(labels, "label", int, (n,)),
        "pred": _array(pred, "pred", int, (n,)),
        "uncertainty": _array(uncertainty, "uncertainty", float, (n,)),
    }
    dist = None if distances is None else _array(distances, "dist", float, (n, k))
    if uncertainty_mode is not None and pred_mode is None:
        raise ValueError("uncertainty_mode needs pred_mode")
    mode = None if pred_mode is None else _array(pred_mode, "pred_mode", int, (n,))
    unc_mode = None if uncertainty_mode is None else _array(uncertainty_mode, "uncertainty_mode", float, (n,))
    spr = None if spread is None else _array(spread, "spread", float, (n,))
    header = predictions_columns(k, distances=dist is not None, mode=mode is not None, spread=spr is not None)

    def f(v: float) -> str:
        return format(float(v), FLOAT_FORMAT)

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for i in range(n):
        row: list[Any] = [int(cols["index"][i]), int(cols["label"][i]), int(cols["pred"][i]), f(cols["uncertainty"][i])]
        if dist is not None:
            row += [f(v) for v in dist[i]]
        row += [f(v) for v in sc[i]]
        if mode is not None:
            row += [int(mode[i]), f(unc_mode[i]) if unc_mode is not None else ""]
        if spr is not None:
            row.append(f(spr[i]))
        row.append(SCHEMA_VERSION)
        writer.writerow(row)
    return atomic_write(path, buf.getvalue())


@dataclass(frozen=True)
class Predictions:
    """One predictions table as arrays; ``distances`` / ``scores`` / mode columns are ``None`` when absent."""

    path: Path
    index: np.ndarray  # (N,) int64; 0..N-1 when the file has no index column
    labels: np.ndarray  # (N,) int64
    pred: np.ndarray  # (N,) int64, the decided class (or the baseline's argmax)
    uncertainty: np.ndarray  # (N,) float64
    distances: np.ndarray | None  # (N, K) dist_k columns
    scores: np.ndarray | None  # (N, K) score_k columns
    pred_mode: np.ndarray | None  # (N,) int64
    uncertainty_mode: np.ndarray | None  # (N,) float64
    spread: np.ndarray | None  # (N,) float64
    has_index: bool
    schema_version: int = SCHEMA_VERSION

    @property
    def num_samples(self) -> int:
        """Number of rows."""
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """K, from the dist_k columns (or the score_k columns when there are none)."""
        arr = self.distances if self.distances is not None else self.scores
        assert arr is not None  # load_predictions guarantees one of them
        return int(arr.shape[1])


def resolve_predictions_path(path: str | os.PathLike) -> Path:
    """A ``predictions.csv`` path, or a bundle output folder holding one -> the CSV path (FileNotFoundError if absent)."""
    p = Path(path)
    if p.is_dir():
        p = p / PREDICTIONS_FILE
    if not p.is_file():
        raise FileNotFoundError(f"predictions file not found: {p}")
    return p


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Read and check a predictions table (or the ``predictions.csv`` in a bundle output folder).

    A file of another layout is refused with one ValueError naming the missing columns.
    """
    p = resolve_predictions_path(path)
    with open(p, newline="") as fh:
        rows = list(csv.reader(fh))
    rows = [r for r in rows if any(cell.strip() for cell in r)]  # a trailing blank line is not a sample
    if not rows:
        raise ValueError(f"{p} is empty")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if not body:
        raise ValueError(f"{p} has a header but no data rows")
    for line, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise ValueError(f"{p} line {line} has {len(r)} fields but the header has {len(header)}")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ValueError(f"{p} repeats column(s): {', '.join(dup)}")
    columns = {h: [r[i].strip() for r in body] for i, h in enumerate(header)}

    k_dist, k_score = (_family_size(p, header, family) for family in _CLASS_FAMILIES)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if k_dist == 0 and k_score == 0:
        missing.append("dist_0..dist_{K-1} or score_0..score_{K-1}")
    if missing:
        raise ValueError(f"{p} is missing column(s): {', '.join(missing)} (not a medsymmflow predictions table)")
    if k_dist and k_score and k_dist != k_score:
        raise ValueError(f"{p} has {k_dist} dist_k columns but {k_score} score_k columns")
    k = k_dist or k_score
    if k < 2:
        raise ValueError(f"{p} has a single class column; at least 2 classes are needed")

    def numbers(name: str) -> np.ndarray:
        return _parse_numbers(p, name, columns[name])

    def classes(name: str) -> np.ndarray:
        return _parse_classes(p, name, columns[name], k)

    version = 1
    if SCHEMA_COLUMN in columns:
        found = sorted(set(columns[SCHEMA_COLUMN]))
        if len(found) != 1 or found[0] not in {str(v) for v in range(2, SCHEMA_VERSION + 1)}:
            raise ValueError(
                f"{p}: column '{SCHEMA_COLUMN}' holds {', '.join(found[:3])}; this medsymmflow reads predictions "
                f"tables of versions 1..{SCHEMA_VERSION}"
            )
        version = int(found[0])

    def matrix(prefix: str, size: int) -> np.ndarray | None:
        return np.stack([numbers(f"{prefix}_{c}") for c in range(size)], axis=1) if size else None

    distances, scores = matrix("dist", k_dist), matrix("score", k_score)
    if distances is not None and distances.min() < 0:
        raise ValueError(f"{p}: dist_k columns must be >= 0, found {distances.min():g}")

    pred_mode = unc_mode = None
    if "pred_mode" in columns and "uncertainty_mode" in columns:
        blank = np.array([v == "" for v in columns["uncertainty_mode"]])
        if blank.any() and not blank.all():
            raise ValueError(
                f"{p}: column 'uncertainty_mode' is blank in {int(blank.sum())} of {blank.size} rows "
                f"(first at line {int(np.argmax(blank)) + 2}); it must be filled in every row or in none"
            )
        if not blank.all():  # blank when no mode decision was run
            pred_mode, unc_mode = classes("pred_mode"), numbers("uncertainty_mode")
    spread = numbers("spread") if "spread" in columns else None

    has_index = "index" in columns
    index = np.round(numbers("index")).astype(np.int64) if has_index else np.arange(len(body), dtype=np.int64)
    return Predictions(
        path=p,
        index=index,
        labels=classes("label"),
        pred=classes("pred"),
        uncertainty=numbers("uncertainty"),
        distances=distances,
        scores=scores,
        pred_mode=pred_mode,
        uncertainty_mode=unc_mode,
        spread=spread,
        has_index=has_index,
        schema_version=version,
    )


def _family_size(path: Path, header: Sequence[str], prefix: str) -> int:
    """K for the columns ``prefix_0..prefix_{K-1}``; a gap in the numbering is a missing column."""
    found = sorted(int(m.group(1)) for h in header if (m := re.fullmatch(rf"{prefix}_(\d+)", h)))
    if not found:
        return 0
    gaps = sorted(set(range(found[-1] + 1)) - set(found))
    if gaps:
        raise ValueError(f"{path} is missing column(s): {', '.join(f'{prefix}_{g}' for g in gaps)}")
    return len(found)


def _parse_numbers(path: Path, name: str, values: Sequence[str]) -> np.ndarray:
    """Column -> float64 array; a non-numeric, NaN or infinite cell is an error naming column and line."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except ValueError:
            raise ValueError(f"{path}: column '{name}' has a non-numeric value {v!r} at line {i + 2}") from None
    bad = ~np.isfinite(out)
    if bad.any():
        raise ValueError(
            f"{path}: column '{name}' has {int(bad.sum())} NaN or infinite value(s), first at line {int(np.argmax(bad)) + 2}"
        )
    return out


def _parse_classes(path: Path, name: str, values: Sequence[str], num_classes: int) -> np.ndarray:
    """Column of class indices -> int64 array, checked to be whole numbers in ``[0, K)``."""
    x = _parse_numbers(path, name, values)
    if not np.array_equal(x, np.round(x)):
        raise ValueError(f"{path}: column '{name}' must hold whole class indices, found fractional values")
    if x.min() < 0 or x.max() >= num_classes:
        raise ValueError(
            f"{path}: column '{name}' has class indices in [{int(x.min())}, {int(x.max())}] "
            f"but the file has {num_classes} classes (0..{num_classes - 1})"
        )
    return x.astype(np.int64)
