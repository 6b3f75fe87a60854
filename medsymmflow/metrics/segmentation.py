"""Segmentation metrics: IoU per class and mIoU from ONE confusion matrix over a whole split, pixel accuracy,
and the distance uncertainty of a per-pixel prediction.

The confusion matrix is torchmetrics' ``MulticlassJaccardIndex`` state (rows = target class, columns =
predicted class), accumulated over every pixel of the split whose target is not ``ignore_index`` (the
unlabelled pixels) — not a mean of per-image scores, which would weigh a class seen in few pixels of an image
like one that fills it. From it:

* ``iou``: per class ``tp / (tp + fp + fn)``; NaN for a class that neither the targets nor the predictions
  contain (it has no IoU; torchmetrics reports 0 there, :func:`iou_from_confusion` does not).
* ``miou``: the mean over classes that have an IoU.
* ``miou_no_background``: the same mean without the ``background`` class (its pixels still count: a
  foreground class predicted on background is a false positive); None for a dataset without a background
  class (``background=None``, e.g. COCO-Stuff, whose standard number is ``miou`` over all its classes).
* ``miou_ignore_background``: the SymmFlow authors' number for CelebAMask-HQ, torchmetrics' JaccardIndex with
  ``ignore_index = background``: background pixels are dropped from the matrix (so false positives on the
  background no longer count) and the class is left out of the mean. It is higher than
  ``miou_no_background``; report it only next to the paper's figures.
* ``pixel_accuracy``: ``trace / total`` of the matrix.
* ``target_pixels`` / ``predicted_pixels``: per class, the labelled pixels of the class and the pixels predicted
  as it (the matrix's row and column sums); a class has no IoU exactly when both are 0.

Uncertainty: the segmenter's distance map (distance of every pixel's predicted code to its nearest class
code). :func:`image_uncertainty` is its mean over an image's pixels; :class:`SegmentationMetrics` also
reports the mean distance on correctly and on wrongly classified labelled pixels (a useful uncertainty is
larger on the errors).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torchmetrics.classification import MulticlassJaccardIndex

__all__ = [
    "SegmentationMetrics",
    "image_uncertainty",
    "iou_from_confusion",
    "mean_iou",
    "pixel_accuracy",
]


def iou_from_confusion(confmat: torch.Tensor, drop_target: int | None = None) -> torch.Tensor:
    """Per-class IoU ``(K,)`` (float64) of a ``(K, K)`` confusion matrix (rows = target); NaN where a class has no pixels.

    ``drop_target``: a class whose target pixels are removed first (torchmetrics' in-range ``ignore_index``);
    its own IoU is then NaN.
    """
    cm = torch.as_tensor(confmat).double()
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square (K, K), got {tuple(cm.shape)}")
    if drop_target is not None:
        cm = cm.clone()
        cm[int(drop_target)] = 0
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp / union.where(union > 0, torch.ones_like(union))
    iou = iou.where(union > 0, torch.full_like(iou, math.nan))
    if drop_target is not None:
        iou[int(drop_target)] = math.nan
    return iou


def mean_iou(iou: torch.Tensor, exclude: Sequence[int] = ()) -> float:
    """Mean of the per-class ``iou`` over the classes that have one (not NaN), leaving out ``exclude``; NaN if none has."""
    values = torch.as_tensor(iou).double().clone()
    for c in exclude:
        values[int(c)] = math.nan
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan


def pixel_accuracy(confmat: torch.Tensor) -> float:
    """Fraction of the counted pixels whose class was predicted right: ``trace / total``; NaN for an empty matrix."""
    cm = torch.as_tensor(confmat).double()
    total = float(cm.sum())
    return float(cm.trace()) / total if total > 0 else math.nan


def image_uncertainty(uncertainty_map: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image uncertainty ``(B,)``: the mean per-pixel distance of ``(B, *spatial)`` maps (over ``valid`` pixels when given)."""
    u = torch.as_tensor(uncertainty_map).double().flatten(1)
    if valid is None:
        return u.mean(1)
    w = torch.as_tensor(valid).double().reshape(u.shape)
    return (u * w).sum(1) / w.sum(1).clamp_min(1.0)


class SegmentationMetrics:
    """Accumulates per-pixel predictions of a whole split; :meth:`compute` gives the metrics of the module docstring.

    ``update(pred, target, uncertainty=None, valid=None)``: ``pred`` / ``target`` class maps ``(B, *spatial)``
    (``(B, 1, *spatial)`` too), target pixels equal to ``ignore_index`` or with ``valid == 0`` are left out;
    ``uncertainty``: the distance map of the same shape. Per-image pixel accuracy and mean uncertainty are kept
    in :attr:`per_image`, in update order.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, background: int | None = 0) -> None:
        self.num_classes = int(num_classes)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if ignore_index is not None and 0 <= int(ignore_index) < self.num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} is one of the {self.num_classes} classes; it marks unlabelled pixels "
                "(e.g. 255). To leave the background out, set background= and read miou_no_background"
            )
        if background is not None and not 0 <= int(background) < self.num_classes:
            raise ValueError(f"background={background} is not one of the classes 0..{self.num_classes - 1}")
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.background = None if background is None else int(background)
        # sync_on_compute=False: torchmetrics would sync inside compute() whenever a process group exists, so an
        # evaluation that one rank runs alone would wait for the others; a sharded split is summed by sync()
        self._jaccard = MulticlassJaccardIndex(
            self.num_classes, average="none", ignore_index=self.ignore_index, sync_on_compute=False
        )
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._jaccard.reset()
        self.per_image: list[dict[str, float]] = []
        # per image: (distance sum, pixel count) over its correct and its wrong labelled pixels; summed with
        # math.fsum in compute, so the totals do not depend on how the split was cut into batches or ranks
        self._pixel_uncertainty: list[tuple[float, int, float, int]] = []

    def _flat_target(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if target.shape != pred.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} class maps differ in shape")
        if valid is None:
            return target
        valid = torch.as_tensor(valid).to(target.device).reshape(target.shape) > 0
        if self.ignore_index is None:
            raise ValueError("a valid-pixel mask needs an ignore_index to mark the unlabelled pixels with")
        return target.where(valid, torch.full_like(target, self.ignore_index))

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        uncertainty: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> None:
        """Add a batch of class maps (and their distance maps) to the split's confusion matrix."""
        pred, target = _class_map(pred, "prediction"), _class_map(target, "target")
        target = self._flat_target(pred, target, valid)
        pred, target = pred.cpu(), target.cpu()
        self._jaccard.update(pred, target)
        labelled = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        correct = (pred == target) & labelled
        counts = labelled.flatten(1).sum(1)
        accuracy = correct.flatten(1).sum(1).double() / counts.clamp_min(1)
        unc = None
        if uncertainty is not None:
            u = torch.as_tensor(uncertainty).detach().cpu().double()
            if u.ndim == pred.ndim + 1 and u.shape[1] == 1:
                u = u[:, 0]
            if u.shape != pred.shape:
                raise ValueError(f"uncertainty map {tuple(u.shape)} and prediction {tuple(pred.shape)} differ in shape")
            wrong = labelled & ~correct
            # one image at a time: a reduction over a batch may round differently from one over a single image
            unc = [float(u[i].mean()) for i in range(u.shape[0])]
            self._pixel_uncertainty.extend(
                (float(u[i][correct[i]].sum()), int(correct[i].sum()), float(u[i][wrong[i]].sum()), int(wrong[i].sum()))
                for i in range(u.shape[0])
            )
        for i in range(pred.shape[0]):
            row = {"pixel_accuracy": float(accuracy[i]) if counts[i] > 0 else math.nan, "labelled_pixels": int(counts[i])}
            if unc is not None:
                row["uncertainty"] = unc[i]
            self.per_image.append(row)

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """The split's ``(K, K)`` confusion matrix so far (rows = target class), int64."""
        return self._jaccard.confmat.clone()

    def sync(self, gather: Callable[[list], list], device: torch.device | str = "cpu") -> None:
        """Turn this rank's accumulator into the whole split's, under an initialised torch.distributed process group.

        The confusion matrix is synced by torchmetrics itself (``Metric.sync``: every rank's state gathered and
        reduced with the state's ``dist_reduce_fx``, a sum), on ``device`` (the current GPU for NCCL); the
        per-image rows are replaced by ``gather(rows)``, which must return every rank's rows in the split's
        order (:func:`medsymmflow.engines.distributed.gather_in_order`). Every rank must call it; :meth:`reset`
        starts a new local accumulation. Nothing else syncs: the torchmetrics state is built with
        ``sync_on_compute=False``, so an evaluation that one rank runs alone never waits for the others.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("SegmentationMetrics.sync needs an initialised torch.distributed process group")
        self._jaccard.to(device)
        self._jaccard.sync(distributed_available=lambda: True)
        self._jaccard.to("cpu")
        self.per_image = gather(self.per_image)
        self._pixel_uncertainty = gather(self._pixel_uncertainty)

    def compute(self) -> dict[str, Any]:
        """mIoU (all classes, without background, the authors' ignore-background rule), per-class IoU, pixel accuracy, uncertainty."""
        cm = self.confusion_matrix
        iou = iou_from_confusion(cm)
        out: dict[str, Any] = {
            "miou": mean_iou(iou),
            "miou_no_background": mean_iou(iou, [self.background]) if self.background is not None else None,
            "miou_ignore_background": (
                mean_iou(iou_from_confusion(cm, drop_target=self.background)) if self.background is not None else None
            ),
            "pixel_accuracy": pixel_accuracy(cm),
            "iou": [None if math.isnan(v) else float(v) for v in iou.tolist()],
            # per class: labelled pixels of it and pixels predicted as it; both 0 is what a None IoU means
            "target_pixels": cm.sum(1).tolist(),
            "predicted_pixels": cm.sum(0).tolist(),
            "labelled_pixels": int(cm.sum()),
            "num_images": len(self.per_image),
        }
        if self.per_image and "uncertainty" in self.per_image[0]:
            sums = [math.fsum(column) for column in zip(*self._pixel_uncertainty)] or [0.0, 0, 0.0, 0]
            out["uncertainty"] = {
                "image_mean": math.fsum(r["uncertainty"] for r in self.per_image) / len(self.per_image),
                "correct_pixels": sums[0] / sums[1] if sums[1] else None,
                "wrong_pixels": sums[2] / sums[3] if sums[3] else None,
            }
        return out


def _class_map(x: torch.Tensor, what: str) -> torch.Tensor:
    """``(B, *spatial)`` int64 class map from ``(B, *spatial)`` or ``(B, 1, *spatial)``, integer or whole-valued float."""
    t = torch.as_tensor(x).detach()
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError(f"the {what} class map holds fractional values")
    elif t.dtype == torch.bool:
        raise TypeError(f"the {what} class map must hold class indices, got dtype bool")
    t = t.long()
    if t.ndim >= 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim < 2:
        raise ValueError(f"the {what} class map must have shape (B, *spatial), got {tuple(t.shape)}")
    return t
