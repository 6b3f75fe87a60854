"""Segmentation picture handlers: label-map, colour-overlay and uncertainty PNGs for image files, and a montage of a split."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from medsymmflow.codes import ClassCodebook
from medsymmflow.engines.distributed import gather_in_order, is_main_process
from medsymmflow.generation import write_png
from medsymmflow.io import atomic_write, to_uint8_images
from medsymmflow.synthesis import colour_label_maps

__all__ = ["SEGMENTATION_INFERENCE_FILE", "SegmentationMontage", "SegmentationWriter"]

logger = logging.getLogger(__name__)

SEGMENTATION_INFERENCE_FILE = "segmentations.json"


class SegmentationWriter:
    """Writes every segmented image file as three PNGs and lists them in ``segmentations.json`` / ``.csv``.

    Reads a :class:`~medsymmflow.engines.SymmFlowSegmentationEvaluator`'s ``pred`` / ``uncertainty_map`` (its
    first step count), ``image`` and ``filename``. Under ``output_dir``: ``label_maps/<stem>.png`` (8-bit class
    indices, or with ``label_values`` the dataset's own value of each class, e.g. COCO-Stuff's id - 1, so that
    they read back like the dataset's maps; readable by :class:`~medsymmflow.transforms.LoadLabelMap`),
    ``overlays/<stem>.png`` (the image blended with the class colours, ``alpha`` the colours' weight) and ``uncertainty/<stem>.png`` (each pixel's
    distance to its nearest class code on 0..255, 255 = half the codebook's smallest code distance or more:
    from there on the pixel may be nearer another class's code). Files that could not be read (``failed``
    records) are listed under ``failed`` and ``skipped`` names non-image files of the input folders;
    :meth:`raise_for_failures`, called after the run, ends it with one error naming the failed files.

    ``<stem>`` is the input file's stem (``_1``, ``_2``, ... added when two inputs share one), else the image's
    ``id``, else its position in the split. ``files``: every input file in the order the loader reads them;
    the stems are then given in that order, so that under a sharded torch.distributed run (see
    :mod:`medsymmflow.engines.distributed`, each rank writing its shard's PNGs) two inputs with one stem get
    the names one process gives them; such a run refuses file inputs without it. The listing is gathered
    from every rank and written by rank 0.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        codebook: ClassCodebook,
        class_names: Sequence[str] | None = None,
        alpha: float = 0.5,
        ignore_index: int | None = 255,
        skipped: Sequence[str] | None = None,
        files: Sequence[str] | None = None,
        label_values: Sequence[int] | None = None,
    ) -> None:
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if codebook.num_classes > 256:
            raise ValueError(f"label-map PNGs hold 8-bit classes, the codebook has {codebook.num_classes}")
        values = list(range(codebook.num_classes)) if label_values is None else [int(v) for v in label_values]
        if len(values) != codebook.num_classes or len(set(values)) != len(values) or not all(0 <= v <= 255 for v in values):
            raise ValueError(f"label_values must give {codebook.num_classes} distinct 8-bit values, one per class, got {label_values!r}")
        self.label_values = torch.tensor(values, dtype=torch.uint8)
        self.output_dir = Path(output_dir)
        self.codebook = codebook
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(codebook.num_classes)]
        self.alpha = float(alpha)
        self.ignore_index = ignore_index
        self.skipped = [str(f) for f in skipped or []]
        self.rows: list[dict[str, Any]] = []
        self.failed: list[dict[str, str]] = []
        self.files = None if files is None else [str(f) for f in files]
        self._stems: set[str] = set()
        self._file_stems: dict[str, str] = {}

    def attach(self, engine: Engine) -> None:
        """Write at every iteration, list the files at completion."""
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows, self.failed, self._stems = [], [], set()
        self._file_stems = {f: self._stem(f) for f in self.files or []}

    def _stem(self, name: str, base: str | None = None) -> str:
        # two inputs with one stem (a/x.png, b/x.jpg) must not overwrite each other's outputs
        base = Path(name).stem if base is None else base
        stem, k = base, 1
        while stem in self._stems:
            stem, k = f"{base}_{k}", k + 1
        self._stems.add(stem)
        return stem

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        self.failed.extend(dict(f) for f in out.get("failed", []))
        if "pred" not in out:  # a batch of unreadable files only
            return
        pred = torch.as_tensor(out["pred"]).detach().cpu().long()
        dist = torch.as_tensor(out["uncertainty_map"]).detach().cpu().float()
        images = to_uint8_images(torch.as_tensor(out["image"]).detach().cpu().float())
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        colours = colour_label_maps(pred, self.codebook, self.ignore_index)
        overlays = np.rint((1.0 - self.alpha) * images + self.alpha * colours).astype(np.uint8)
        scale = self.codebook.min_distance / 2.0
        unc = (dist / scale).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        steps = int(out["steps"][0]) if "steps" in out else None
        for i, (name, stem) in enumerate(self._names(engine, out, pred.shape[0])):
            files = {
                "label_map": write_png(self.output_dir / "label_maps" / f"{stem}.png", self.label_values[pred[i]].numpy()[..., None]),
                "overlay": write_png(self.output_dir / "overlays" / f"{stem}.png", overlays[i]),
                "uncertainty_map": write_png(self.output_dir / "uncertainty" / f"{stem}.png", unc[i][..., None]),
            }
            counts = torch.bincount(pred[i].flatten(), minlength=self.codebook.num_classes)
            self.rows.append({
                "file": str(name),
                "steps": steps,
                "mean_uncertainty": float(dist[i].mean()),
                "classes": [self.class_names[c] for c in torch.nonzero(counts).flatten().tolist()],
                **{k: str(v) for k, v in files.items()},
            })

    def _names(self, engine: Engine, out: dict[str, Any], count: int) -> list[tuple[str, str]]:
        """``(name, stem)`` of each image of the batch: its file, else its id, else its position in the split."""
        if out.get("filename"):
            names = [str(n) for n in out["filename"]]
            if getattr(engine, "shards", None) is not None and not all(n in self._file_stems for n in names):
                raise ValueError(
                    "SegmentationWriter under torch.distributed needs files= (every input file, in order) so that "
                    "the ranks name their PNGs alike; missing: " + ", ".join(n for n in names if n not in self._file_stems)
                )
            return [(n, self._file_stems.get(n) or self._stem(n)) for n in names]
        keys = out.get("id") or [str(p) for p in out.get("position") or range(len(self.rows), len(self.rows) + count)]
        return [(str(k), self._stem(str(k), base=str(k))) for k in keys]

    def _write(self, engine: Engine) -> None:
        # a sharded run: every rank's rows (input order when files= is given) and failures, on every rank
        shards = getattr(engine, "shards", None)
        self.rows, self.failed = gather_in_order(self.rows, shards), gather_in_order(self.failed, shards)
        if self.files is not None:
            order = {f: i for i, f in enumerate(self.files)}
            self.rows.sort(key=lambda r: order.get(r["file"], len(order)))
            self.failed.sort(key=lambda r: order.get(r["file"], len(order)))
        if not is_main_process():
            return
        if not self.rows:
            if self.failed:  # raise_for_failures reports them
                return
            raise ValueError("no images were segmented: the input list is empty")
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["file", "steps", "mean_uncertainty", "label_map", "overlay", "uncertainty_map"])
        for r in self.rows:
            writer.writerow([r["file"], r["steps"], f"{r['mean_uncertainty']:.6g}", r["label_map"], r["overlay"], r["uncertainty_map"]])
        payload = {
            "class_names": self.class_names,
            "uncertainty_png_scale": f"255 = a distance of {self.codebook.min_distance / 2.0:.6g} (half the smallest code distance) or more",
            "segmentations": self.rows,
            "failed": self.failed,
            "skipped": self.skipped,
        }
        atomic_write(self.output_dir / SEGMENTATION_INFERENCE_FILE, json.dumps(payload, indent=2) + "\n")
        atomic_write(self.output_dir / "segmentations.csv", buf.getvalue())
        logger.info("segmented %d images -> %s", len(self.rows), self.output_dir)

    def raise_for_failures(self) -> None:
        """Raise one ValueError naming the files that could not be segmented (a no-op when all were)."""
        if not self.failed:
            return
        shown = "; ".join(f"{f['file']} ({f['error']})" for f in self.failed[:3])
        more = f"; and {len(self.failed) - 3} more" if len(self.failed) > 3 else ""
        total = len(self.failed) + len(self.rows)
        where = (
            f"the other {len(self.rows)} are in {self.output_dir / SEGMENTATION_INFERENCE_FILE}, all failures there too"
            if self.rows else "no segmentations were written"
        )
        raise ValueError(f"{len(self.failed)} of {total} image files could not be segmented: {shown}{more}; {where}")


class SegmentationMontage:
    """Writes one figure of the first ``rows`` images of a split: image | ground truth | each step count | uncertainty.

    Reads a :class:`~medsymmflow.engines.SymmFlowSegmentationEvaluator`'s ``image``, ``label``, ``preds`` and
    ``uncertainty_maps``; label maps in the codebook's colours (ignored pixels white), the uncertainty of the
    first step count in grey (white = half the smallest code distance or more, as :class:`SegmentationWriter`).
    Tiles are ``pad`` white pixels apart; the PNG is written when the epoch completes (under a sharded
    torch.distributed evaluation by rank 0, from the first rows of the split gathered from every rank).
    """

    def __init__(
        self, path: str | os.PathLike, codebook: ClassCodebook, rows: int = 8, ignore_index: int | None = 255, pad: int = 2
    ) -> None:
        self.path, self.codebook, self.rows, self.ignore_index, self.pad = Path(path), codebook, int(rows), ignore_index, int(pad)
        self._tiles: list[list[np.ndarray]] = []

    def attach(self, engine: Engine) -> None:
        """Collect the first rows, write the figure at the end of the epoch."""
        engine.add_event_handler(Events.STARTED, lambda e: self._tiles.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        if len(self._tiles) >= self.rows or "label" not in out:
            return
        images = to_uint8_images(torch.as_tensor(out["image"]).detach().cpu().float())
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        truth = colour_label_maps(torch.as_tensor(out["label"])[:, 0].cpu(), self.codebook, self.ignore_index)
        preds = [colour_label_maps(torch.as_tensor(out["preds"][s]).cpu(), self.codebook, None) for s in out["steps"]]
        first = torch.as_tensor(out["uncertainty_maps"][out["steps"][0]]).detach().cpu().float()
        grey = (first / (self.codebook.min_distance / 2.0)).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        for i in range(min(images.shape[0], self.rows - len(self._tiles))):
            self._tiles.append([images[i], truth[i], *(p[i] for p in preds), np.repeat(grey[i][..., None], 3, axis=-1)])

    def _write(self, engine: Engine) -> None:
        # a sharded evaluation: every rank's first rows, back in the split's order; rank 0 draws the first of them
        self._tiles = gather_in_order(self._tiles, getattr(engine, "shards", None))[: self.rows]
        if not self._tiles or not is_main_process():
            return
        h, w = self._tiles[0][0].shape[:2]
        cols, rows, pad = len(self._tiles[0]), len(self._tiles), self.pad
        grid = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), 255, dtype=np.uint8)
        for r, tiles in enumerate(self._tiles):
            for c, tile in enumerate(tiles):
                top, left = pad + r * (h + pad), pad + c * (w + pad)
                grid[top : top + h, left : left + w] = tile
        write_png(self.path, grid)
        logger.info("segmentation montage (image | truth | %s steps | uncertainty) -> %s",
                    " | ".join(map(str, engine.state.output.get("steps", []))), self.path)
