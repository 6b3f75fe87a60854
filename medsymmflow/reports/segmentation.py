"""The segmentation report: metrics JSON per step count, per-class IoU table, per-image table (one definition each).

Files (names settable by the handler, :class:`~medsymmflow.engines.SegmentationReport`):

* ``segmentation_metrics.json``: ``{"num_classes", "class_names", "background", "ignore_index", "steps": [...],
  "by_steps": {"<steps>": <SegmentationMetrics.compute()>}, ...extra}``; per-class IoU appear there as
  ``iou_per_class`` (class name -> IoU, null where a class has no pixels) next to the ``iou`` list.
* ``segmentation_per_class.csv``: ``class, name, iou_<steps>steps ...`` (blank where a class has no pixels).
* ``segmentation_per_image.csv``: ``id, steps, pixel_accuracy, uncertainty, labelled_pixels``: one row per
  image and step count; ``uncertainty`` is the image's mean per-pixel distance.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from medsymmflow.io import atomic_write, json_safe

__all__ = [
    "SEGMENTATION_METRICS_FILE",
    "SEGMENTATION_PER_CLASS_FILE",
    "SEGMENTATION_PER_IMAGE_FILE",
    "segmentation_payload",
    "write_segmentation_report",
]

SEGMENTATION_METRICS_FILE = "segmentation_metrics.json"
SEGMENTATION_PER_CLASS_FILE = "segmentation_per_class.csv"
SEGMENTATION_PER_IMAGE_FILE = "segmentation_per_image.csv"


def segmentation_payload(
    by_steps: Mapping[int, Mapping[str, Any]],
    class_names: Sequence[str],
    background: int | None = 0,
    ignore_index: int | None = 255,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metrics JSON object for the ``SegmentationMetrics.compute()`` results of each step count."""
    names = list(class_names)
    steps = sorted(int(s) for s in by_steps)
    runs: dict[str, Any] = {}
    for s in steps:
        result = dict(by_steps[s])
        if len(result.get("iou", [])) != len(names):
            raise ValueError(f"{len(result.get('iou', []))} per-class IoU values for {len(names)} class names")
        result["iou_per_class"] = dict(zip(names, result["iou"]))
        runs[str(s)] = result
    return {
        "num_classes": len(names),
        "class_names": names,
        "background": None if background is None else names[background],
        "ignore_index": ignore_index,
        **dict(extra or {}),
        "steps": steps,
        "by_steps": runs,
    }


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_segmentation_report(
    output_dir: str | os.PathLike,
    payload: Mapping[str, Any],
    per_image: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
    ids: Sequence[str] | None = None,
    metrics_file: str | None = SEGMENTATION_METRICS_FILE,
    per_class_file: str | None = SEGMENTATION_PER_CLASS_FILE,
    per_image_file: str | None = SEGMENTATION_PER_IMAGE_FILE,
) -> list[Path]:
    """Write the metrics JSON, the per-class table and the per-image table (each skipped when its name is None)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    steps = list(payload["steps"])
    if per_class_file is not None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["class", "name"] + [f"iou_{s}steps" for s in steps])
        for c, name in enumerate(payload["class_names"]):
            writer.writerow([c, name] + [_cell(payload["by_steps"][str(s)]["iou"][c]) for s in steps])
        written.append(atomic_write(out / per_class_file, buf.getvalue()))
    if per_image_file is not None and per_image:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["id", "steps", "pixel_accuracy", "uncertainty", "labelled_pixels"])
        for s in steps:
            rows = per_image.get(s, [])
            names = list(ids) if ids is not None and len(ids) == len(rows) else [str(i) for i in range(len(rows))]
            for name, row in zip(names, rows):
                writer.writerow([name, s, _cell(row.get("pixel_accuracy")), _cell(row.get("uncertainty")), row.get("labelled_pixels", "")])
        written.append(atomic_write(out / per_image_file, buf.getvalue()))
    # the JSON last: once it is on disk, the tables it summarises are too
    if metrics_file is not None:
        written.append(atomic_write(out / metrics_file, json.dumps(json_safe(dict(payload)), indent=2) + "\n"))
    return written
