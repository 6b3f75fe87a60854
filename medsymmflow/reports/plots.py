"""PNG plots for selective prediction and calibration: accuracy-rejection curves and reliability diagrams.

matplotlib is imported inside the functions and drives a ``Figure`` through the Agg canvas directly
(no ``pyplot``), so plotting needs no display, leaves the global backend alone and is safe in workers.
Files are written atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_accuracy_rejection", "plot_reliability"]

_DPI = 120


def _curve_arrays(label: str, curve: Any) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(rates, accuracies)`` or ``{"rates", "accuracies", "style"?}`` -> arrays plus matplotlib line kwargs."""
    if isinstance(curve, Mapping):
        missing = [k for k in ("rates", "accuracies") if k not in curve]
        if missing:
            raise ValueError(f"curve {label!r} is missing key(s) {', '.join(missing)}")
        rates, accs, style = curve["rates"], curve["accuracies"], dict(curve.get("style") or {})
    elif isinstance(curve, Sequence) and len(curve) == 2:
        rates, accs, style = curve[0], curve[1], {}
    else:
        raise TypeError(f"curve {label!r} must be (rates, accuracies) or a dict with 'rates' and 'accuracies'")
    r, a = np.asarray(rates, dtype=np.float64), np.asarray(accs, dtype=np.float64)
    if r.ndim != 1 or r.shape != a.shape or r.size == 0:
        raise ValueError(f"curve {label!r}: rates and accuracies must be 1-D of equal non-zero length, got {r.shape} and {a.shape}")
    return r, a, {k: v for k, v in style.items() if v is not None}


def _save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Render ``fig`` with Agg and write it atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from medsymmflow.io import atomic_write

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return atomic_write(path, buf.getvalue())


def plot_accuracy_rejection(
    curves: Mapping[str, Any], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Accuracy (y) against rejection rate (x), one line per ``label -> (rates, accuracies)`` or ``{rates, accuracies, style}``."""
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("plot_accuracy_rejection needs at least one curve")
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    lowest = 1.0
    for label, curve in curves.items():
        r, a, style = _curve_arrays(label, curve)
        style.setdefault("linewidth", 1.6)
        ax.plot(r, a, label=label, **style)
        lowest = min(lowest, float(np.nanmin(a)))
    ax.set_xlabel("rejection rate (most uncertain samples dropped)")
    ax.set_ylabel("accuracy on the kept samples")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(max(0.0, lowest - 0.05), 1.005)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    if title:
        ax.set_title(title)
    return _save_png(fig, path)


def _bin_arrays(label: str, bins: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """ReliabilityBins or ``{"confidences", "accuracies", "counts", "ece"?}`` -> arrays (empty bins as NaN) and ECE."""
    if isinstance(bins, Mapping):
        missing = [k for k in ("confidences", "accuracies", "counts") if k not in bins]
        if missing:
            raise ValueError(f"reliability bins {label!r} are missing key(s) {', '.join(missing)}")
        conf, acc, counts, ece = bins["confidences"], bins["accuracies"], bins["counts"], bins.get("ece")
    elif all(hasattr(bins, k) for k in ("confidences", "accuracies", "counts")):
        conf, acc, counts, ece = bins.confidences, bins.accuracies, bins.counts, None
    else:
        raise TypeError(f"reliability bins {label!r} must be ReliabilityBins or a dict with confidences/accuracies/counts")
    # JSON stores empty bins as null
    conf = np.array([np.nan if v is None else v for v in np.asarray(conf, dtype=object)], dtype=np.float64)
    acc = np.array([np.nan if v is None else v for v in np.asarray(acc, dtype=object)], dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    if not (conf.ndim == acc.ndim == counts.ndim == 1 and conf.shape == acc.shape == counts.shape and counts.size):
        raise ValueError(f"reliability bins {label!r}: confidences, accuracies and counts must be 1-D of one length")
    return conf, acc, counts, None if ece is None else float(ece)


def plot_reliability(bins: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Reliability diagram per model (accuracy per confidence bin, diagonal, gap) above its bin counts."""
    from matplotlib.figure import Figure

    if not bins:
        raise ValueError("plot_reliability needs the bins of at least one model")
    n = len(bins)
    fig = Figure(figsize=(4.6 * n, 5.6), layout="constrained")
    grid = fig.add_gridspec(2, n, height_ratios=(3, 1))
    for col, (label, model_bins) in enumerate(bins.items()):
        conf, acc, counts, ece = _bin_arrays(label, model_bins)
        m = counts.size
        edges = np.linspace(0.0, 1.0, m + 1)
        centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / m
        filled = counts > 0
        top = fig.add_subplot(grid[0, col])
        top.bar(centers[filled], acc[filled], width=width, color="tab:blue", edgecolor="black", lw=0.5, label="accuracy")
        # the gap between accuracy and mean confidence is what ECE averages
        top.bar(
            centers[filled], conf[filled] - acc[filled], bottom=acc[filled], width=width,
            color="tab:red", alpha=0.3, edgecolor="tab:red", lw=0.5, label="gap to confidence",
        )
        top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.set_title(label if ece is None else f"{label}\nECE {ece:.4f}", fontsize="small")
        top.legend(fontsize="x-small", loc="upper left")
        bottom = fig.add_subplot(grid[1, col], sharex=top)
        bottom.bar(centers, counts, width=width, color="0.6", edgecolor="black", lw=0.5)
        for x, c in zip(centers[filled], counts[filled]):
            bottom.annotate(str(int(c)), (x, c), ha="center", va="bottom", fontsize=6)
        bottom.set_ylim(0, counts.max() * 1.25)
        bottom.set_xlabel("confidence (max class probability)")
        bottom.set_ylabel("samples")
    if title:
        fig.suptitle(title)
    return _save_png(fig, path)
