"""Segmentation report handler: the split's metrics per step count from a SymmFlowSegmentationEvaluator run."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from ignite.engine import Engine, Events

from medsymmflow.engines.report import EvaluationReport
from medsymmflow.metrics.segmentation import SegmentationMetrics
from medsymmflow.reports.segmentation import (
    SEGMENTATION_METRICS_FILE,
    SEGMENTATION_PER_CLASS_FILE,
    SEGMENTATION_PER_IMAGE_FILE,
    segmentation_payload,
    write_segmentation_report,
)

__all__ = ["SegmentationReport"]

logger = logging.getLogger(__name__)


class SegmentationReport(EvaluationReport):
    """Accumulates one confusion matrix per step count over the whole split and writes the segmentation report.

    Reads the evaluator's ``preds`` / ``uncertainty_maps`` (step count -> maps), ``label``, ``valid`` and ``id``
    (see :class:`~medsymmflow.engines.SymmFlowSegmentationEvaluator`); unlabelled pixels (``ignore_index`` in
    the label map, or ``valid == 0``) are left out. When the epoch completes it writes the files of
    :mod:`medsymmflow.reports.segmentation` into ``output_dir`` (a file name ``None`` skips that file) and sets
    ``engine.state.metrics[f"{prefix}miou_{s}steps"]``, ``..._miou_no_background_{s}steps`` and
    ``..._pixel_accuracy_{s}steps`` for every step count ``s`` (e.g. for a checkpoint saver on validation mIoU).
    ``background``: the class left out of ``miou_no_background`` (``None``: no background class, e.g. COCO-Stuff;
    then ``miou_no_background`` is None in the report and not set in ``state.metrics``).
    """

    # at the end of the (single) epoch, not at COMPLETED: a checkpoint saver, StatsHandler and TensorBoard
    # read state.metrics on EPOCH_COMPLETED, after the handlers attached before them
    write_event = Events.EPOCH_COMPLETED

    def __init__(
        self,
        output_dir: str | os.PathLike,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = 255,
        background: int | None = 0,
        prefix: str = "",
        extra: dict[str, Any] | None = None,
        metrics_file: str | None = SEGMENTATION_METRICS_FILE,
        per_class_file: str | None = SEGMENTATION_PER_CLASS_FILE,
        per_image_file: str | None = SEGMENTATION_PER_IMAGE_FILE,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        self.ignore_index, self.background = ignore_index, background
        # built here, so a bad ignore_index / background fails before the evaluation runs
        SegmentationMetrics(self.num_classes, ignore_index, background)
        self.prefix = prefix
        self.extra = dict(extra or {})
        self.files = {"metrics_file": metrics_file, "per_class_file": per_class_file, "per_image_file": per_image_file}
        self._metrics: dict[int, SegmentationMetrics] = {}
        self._ids: list[str] = []
        self.results: dict[str, Any] = {}

    def _reset(self, engine: Engine) -> None:
        self._metrics, self._ids = {}, []

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        if "label" not in out:
            raise ValueError("SegmentationReport needs labelled data: the evaluator produced no 'label' maps")
        for s, pred in out["preds"].items():
            metric = self._metrics.setdefault(int(s), SegmentationMetrics(self.num_classes, self.ignore_index, self.background))
            metric.update(pred, out["label"], out["uncertainty_maps"][s], out.get("valid"))
        batch = int(out["label"].shape[0])
        self._ids.extend(out.get("id") or [str(len(self._ids) + i) for i in range(batch)])

    def _write(self, engine: Engine) -> None:
        if not self._metrics:
            raise ValueError("SegmentationReport saw no batches: the evaluation split is empty")
        by_steps = {s: m.compute() for s, m in self._metrics.items()}
        self.results = segmentation_payload(by_steps, self.class_names, self.background, self.ignore_index, self.extra)
        # without a background class there is no separate number: the metric is not published at all
        names = ("miou", "miou_no_background", "pixel_accuracy") if self.background is not None else ("miou", "pixel_accuracy")
        for s, r in by_steps.items():
            for name in names:
                engine.state.metrics[f"{self.prefix}{name}_{s}steps"] = r[name]
        write_segmentation_report(
            self.output_dir, self.results, {s: m.per_image for s, m in self._metrics.items()}, self._ids, **self.files
        )
        logger.info(
            "segmentation: %s -> %s",
            ", ".join(
                f"{s} steps mIoU {r['miou']:.4f}"
                + (f" (no background {r['miou_no_background']:.4f})" if r["miou_no_background"] is not None else "")
                + f", pixel acc {r['pixel_accuracy']:.4f}"
                for s, r in sorted(by_steps.items())
            ),
            self.output_dir,
        )
