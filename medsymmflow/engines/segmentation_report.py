"""Segmentation report handler: the split's metrics per step count from a SymmFlowSegmentationEvaluator run."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from ignite.engine import Engine, Events

from medsymmflow.engines.distributed import collective_device, gather_in_order, is_main_process
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

    Under a sharded torch.distributed evaluation (the evaluator's ``shards``, see
    :mod:`medsymmflow.engines.distributed`) every rank accumulates its shard, then the confusion matrices are
    summed and the per-image rows gathered in the split's order (:meth:`SegmentationMetrics.sync`), so every
    rank's ``state.metrics`` are the whole split's; only rank 0 writes the files.
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
        positions = out.get("position") or range(len(self._ids), len(self._ids) + batch)
        self._ids.extend(out.get("id") or [str(p) for p in positions])

    def _gather(self, engine: Engine) -> None:
        """Under a sharded evaluation: make every rank's accumulators the whole split's (confusion matrices summed, rows gathered)."""
        shards = getattr(engine, "shards", None)
        if shards is None:
            return
        # a rank whose shard gave no batch has no accumulators yet: the others' step counts, in their order
        seen = [s for part in gather_in_order([list(self._metrics)], shards) for s in part]
        for s in dict.fromkeys(seen):
            self._metrics.setdefault(s, SegmentationMetrics(self.num_classes, self.ignore_index, self.background))
        gather = functools.partial(gather_in_order, shards=shards)
        for s in dict.fromkeys(seen):
            self._metrics[s].sync(gather, collective_device())
        self._ids = gather(self._ids)

    def _write(self, engine: Engine) -> None:
        self._gather(engine)
        if not self._metrics:
            raise ValueError("SegmentationReport saw no batches: the evaluation split is empty")
        by_steps = {s: m.compute() for s, m in self._metrics.items()}
        self.results = segmentation_payload(by_steps, self.class_names, self.background, self.ignore_index, self.extra)
        # without a background class there is no separate number: the metric is not published at all
        names = ("miou", "miou_no_background", "pixel_accuracy") if self.background is not None else ("miou", "pixel_accuracy")
        for s, r in by_steps.items():
            for name in names:
                engine.state.metrics[f"{self.prefix}{name}_{s}steps"] = r[name]
        if not is_main_process():  # every rank holds the split's numbers; one writes them
            return
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
