"""A plain segmentation network trained on the same engine stack and budget as MedSymmFlow: the fair dense baseline.

The network is MONAI's ``BasicUNet`` (2-D, ``features`` settable). Training
(:func:`train_segmentation_baseline`) runs MONAI's ``SupervisedTrainer`` through
:func:`~medsymmflow.baselines.engines.assemble_baseline_engines`, the wiring the ResNet-18 baseline
uses: AdamW from the peak learning rate with MONAI's cosine schedule to 0, validation after every
epoch, :class:`~medsymmflow.engines.TrainingBudget` (the first epoch's time plans how many epochs fit,
revised after every epoch; training stops when the budget is spent) and
:class:`~medsymmflow.engines.AtomicCheckpointSaver` keeping the weights of the best validation mIoU
(``model.pt``). The loss is :class:`MaskedDiceCELoss`, MONAI's ``DiceCELoss`` on softmax scores and
one-hot targets with unlabelled pixels (255) masked out of both halves.

The data pipeline is the CelebAMask-HQ bundle's (:func:`segmentation_transforms`): images and label maps
read by stem, the short side resized to ``size`` (area for images, nearest for label maps), centre-cropped
square, images scaled to [-1, 1] and, for training, a horizontal flip that swaps the left/right classes.

The validation mIoU and the test report come from one confusion matrix over the whole split, with
:mod:`medsymmflow.metrics.segmentation`'s definitions; the test split is written by
:class:`~medsymmflow.engines.SegmentationReport` in the bundle's layout (``segmentation_metrics.json``
with one "step count", ``1``: the network's single forward pass). Uncertainty is ``1 - max softmax``.
:func:`load_segmentation_baseline` turns ``model.pt`` into a segmenter callable for mask consistency.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.metrics import ConfusionMatrix, MetricsLambda
from monai.engines import SupervisedEvaluator
from monai.engines.utils import default_prepare_batch
from monai.handlers import from_engine
from monai.losses import DiceCELoss
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.utils.data import DataLoader

from medsymmflow.baselines.engines import (
    AutocastInferer,
    BaselineEngines,
    assemble_baseline_engines,
    best_model_saver,
    epoch_logs,
)
from medsymmflow.baselines.runs import (
    check_training_args,
    engine_description,
    finish_result,
    run_folder,
    seeded_run,
    train_to_best,
    training_summary,
    validation_history,
)
from medsymmflow.checks import positive_int
from medsymmflow.data.arrays import SegmentationArrays, segmentation_arrays
from medsymmflow.data.celebamask import CELEBAMASK_HQ_CLASSES, celebamask_hq_dicts
from medsymmflow.data.folders import DEFAULT_FRACTIONS as FOLDER_FRACTIONS
from medsymmflow.data.folders import SPLIT_NAMES
from medsymmflow.engines import SegmentationReport
from medsymmflow.io import load_checkpoint
from medsymmflow.metrics.segmentation import iou_from_confusion, mean_iou, pixel_accuracy
from medsymmflow.metrics.synthesis import Segmenter
from medsymmflow.precision import autocast_context, resolve_autocast
from medsymmflow.synthesis import torchscript_segmenter

__all__ = [
    "BASIC_UNET_FEATURES",
    "DEFAULT_FRACTIONS",
    "IGNORE_INDEX",
    "MaskedDiceCELoss",
    "SegmentationBatch",
    "SegmentationOutputs",
    "basic_unet_features",
    "build_basic_unet",
    "build_segmentation_engines",
    "build_segmentation_evaluator",
    "load_segmentation_baseline",
    "load_segmentation_split",
    "load_segmenter",
    "segmentation_dataset",
    "segmentation_transforms",
    "train_segmentation_baseline",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
BASIC_UNET_FEATURES = (32, 32, 64, 128, 256, 32)  # MONAI's default
# train / val / test of a folder without splits.json: the package's (the bundle's), 240 / 30 / 30 of the 300-pair sample
DEFAULT_FRACTIONS = tuple(FOLDER_FRACTIONS[s] for s in SPLIT_NAMES)
EVAL_BATCH_SIZE = 32
KEY_METRICS = ("miou", "miou_no_background", "pixel_accuracy")


def build_basic_unet(in_channels: int, num_classes: int, features: Sequence[int] = BASIC_UNET_FEATURES) -> nn.Module:
    """MONAI's 2-D ``BasicUNet`` from ``in_channels`` to ``num_classes`` logits per pixel (six ``features``)."""
    from monai.networks.nets import BasicUNet

    positive_int(in_channels, "in_channels")
    if positive_int(num_classes, "num_classes") < 2:
        raise ValueError(f"num_classes must be >= 2 for a segmenter, got {num_classes}")
    feats = tuple(int(f) for f in features)
    if len(feats) != 6 or min(feats) < 1:
        raise ValueError(f"features must be six positive ints (BasicUNet's), got {tuple(features)}")
    with contextlib.redirect_stdout(io.StringIO()):  # BasicUNet prints its features
        return BasicUNet(spatial_dims=2, in_channels=int(in_channels), out_channels=int(num_classes), features=feats)


def basic_unet_features(state: dict[str, torch.Tensor]) -> tuple[int, int, tuple[int, ...]]:
    """``(in_channels, num_classes, features)`` of a 2-D BasicUNet ``state_dict``, read from its weight shapes."""
    try:
        first = state["conv_0.conv_0.conv.weight"]
        downs = [state[f"down_{i}.convs.conv_0.conv.weight"].shape[0] for i in range(1, 5)]
        final = state["final_conv.weight"]
    except KeyError as e:
        raise ValueError(f"not a BasicUNet state_dict: it lacks {e.args[0]}") from None
    return int(first.shape[1]), int(final.shape[0]), (int(first.shape[0]), *map(int, downs), int(final.shape[1]))


class MaskedDiceCELoss(DiceCELoss):
    """MONAI's ``DiceCELoss`` (softmax scores, one-hot targets) with the pixels labelled ``ignore_index`` left out.

    ``forward(logits (B, K, H, W), label (B, 1, H, W))``: the cross-entropy half is torch's with
    ``ignore_index`` (the mean over labelled pixels); for the Dice half the softmax scores and the one-hot
    targets are multiplied by the labelled-pixel mask before MONAI's Dice, so an ignored pixel adds to no
    intersection and no denominator. Neither the label nor the logits of an ignored pixel change the loss.
    ``batch=True`` (default here) sums the Dice over the batch before the ratio, so a class absent from one
    image does not count as a perfect score for it. Other arguments are ``DiceCELoss``'s.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, batch: bool = True, **kwargs: Any) -> None:
        for fixed in ("softmax", "to_onehot_y", "sigmoid", "other_act"):
            if fixed in kwargs:
                raise TypeError(f"MaskedDiceCELoss applies softmax and one-hot itself; {fixed} is not an option")
        super().__init__(batch=batch, **kwargs)
        self.ignore_index = int(ignore_index)
        weight = self.cross_entropy.weight
        self.cross_entropy = nn.CrossEntropyLoss(
            weight=weight, ignore_index=self.ignore_index, reduction=self.cross_entropy.reduction,
            label_smoothing=self.cross_entropy.label_smoothing,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The masked Dice + cross-entropy of ``input`` logits against ``target`` label maps (B, 1, H, W)."""
        if input.ndim != target.ndim or target.shape[1] != 1 or target.shape[2:] != input.shape[2:]:
            raise ValueError(
                f"MaskedDiceCELoss takes logits (B, K, *spatial) and label maps (B, 1, *spatial) on one grid, got "
                f"{tuple(input.shape)} and {tuple(target.shape)}"
            )
        label = target.long()
        valid = label != self.ignore_index
        k = input.shape[1]
        safe = label.where(valid, torch.zeros_like(label))
        if safe.numel() and (safe.min() < 0 or safe.max() >= k):
            raise ValueError(f"label maps hold values outside 0..{k - 1} and {self.ignore_index}")
        mask = valid.to(input.dtype)
        probs = torch.softmax(input.float(), dim=1) * mask
        onehot = nn.functional.one_hot(safe[:, 0], k).movedim(-1, 1).to(probs.dtype) * mask
        # the parent's dice was built without softmax / one-hot, which are applied above before the masking
        dice = self.dice(probs, onehot)
        if not bool(valid.any()):  # torch's CE of no labelled pixel is NaN; nothing to learn from such a batch
            return dice * 0.0 + (input * 0.0).sum()
        ce = self.cross_entropy(input.float(), label[:, 0])
        return self.lambda_dice * dice + self.lambda_ce * ce


class SegmentationBatch:
    """``prepare_batch`` for a segmenter: float images and int64 label maps ``(B, 1, H, W)``; ``valid == 0`` pixels -> 255."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, valid_key: str = "valid") -> None:
        self.ignore_index = int(ignore_index)
        self.valid_key = valid_key

    def __call__(self, batchdata: Any, device: torch.device | str | None = None, non_blocking: bool = False, **kwargs: Any) -> tuple:
        """The batch's images and label maps on ``device``."""
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        label = torch.as_tensor(label)
        if label.is_floating_point() and not torch.equal(label, label.round()):
            raise ValueError("segmentation label maps hold fractional values: resize them with mode 'nearest'")
        label = label.long()
        if isinstance(batchdata, dict) and self.valid_key in batchdata:
            valid = torch.as_tensor(batchdata[self.valid_key]).to(label.device).reshape(label.shape) > 0
            label = label.where(valid, torch.full_like(label, self.ignore_index))
        return torch.as_tensor(image).float(), label


class SegmentationOutputs:
    """Evaluator postprocessing: logits -> the keys :class:`~medsymmflow.engines.SegmentationReport` and the metrics read.

    ``pred`` (B, H, W) argmax classes; ``probabilities`` (B, K, H, W); ``uncertainty_map`` ``1 - max softmax``;
    ``preds`` / ``uncertainty_maps`` as ``{1: ...}`` (one forward pass, the report's one "step count");
    ``label`` (B, 1, H, W) int64 with ignored pixels 255; ``id`` from the batch's ``stem_key``;
    ``logits`` keeps the network output.
    """

    def __init__(self, stem_key: str = "stem") -> None:
        self.stem_key = stem_key

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Add the prediction keys to an evaluator's (batch + output) dict."""
        logits = torch.as_tensor(data[Keys.PRED]).float()
        probs = torch.softmax(logits, dim=1)
        confidence, pred = probs.max(dim=1)
        uncertainty = 1.0 - confidence
        out = {**data, "logits": logits, "probabilities": probs, Keys.PRED: pred, "uncertainty_map": uncertainty,
               "preds": {1: pred}, "uncertainty_maps": {1: uncertainty}}
        if self.stem_key in data:  # "id" would stay in the batch dict (MONAI keeps batch keys there)
            stems = data[self.stem_key]
            out["id"] = [str(s) for s in (stems if isinstance(stems, (list, tuple)) else [stems])]
        return out


def _confusion_metrics(num_classes: int, ignore_index: int, background: int | None) -> dict[str, MetricsLambda]:
    """ignite metrics over ONE confusion matrix of the split (ignite's ``ConfusionMatrix`` leaves ``ignore_index`` out),
    reduced with :mod:`medsymmflow.metrics.segmentation`'s IoU (NaN-free mean over classes present)."""

    def flat(output: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        probs, label = output
        return probs, label[:, 0]

    cm = ConfusionMatrix(num_classes, output_transform=lambda out: flat(from_engine(["probabilities", Keys.LABEL])(out)))
    exclude = [] if background is None else [background]
    # ignite's target mask keeps 0 <= y < K, so the unlabelled 255 pixels are left out like torchmetrics' ignore_index
    assert ignore_index >= num_classes or ignore_index < 0
    return {
        "miou": MetricsLambda(lambda m: _nan_to_zero(mean_iou(iou_from_confusion(m))), cm),
        "miou_no_background": MetricsLambda(lambda m: _nan_to_zero(mean_iou(iou_from_confusion(m), exclude)), cm),
        "pixel_accuracy": MetricsLambda(lambda m: _nan_to_zero(pixel_accuracy(m)), cm),
    }


def _nan_to_zero(value: float) -> float:
    """A split without any labelled pixel scores 0 for checkpoint selection (a NaN would never be 'better')."""
    return 0.0 if math.isnan(value) else value


def build_segmentation_evaluator(
    data: Sequence[dict[str, Any]] | torch.utils.data.Dataset,
    network: nn.Module,
    device: torch.device,
    inferer: AutocastInferer,
    num_classes: int,
    handlers: Sequence[Any] = (),
    validation: bool = False,
    key_metric: str = "miou_no_background",
    background: int | None = 0,
    ignore_index: int = IGNORE_INDEX,
    batch_size: int = EVAL_BATCH_SIZE,
) -> SupervisedEvaluator:
    """A SupervisedEvaluator over a segmentation dataset in order; ``validation`` adds ``val_<key_metric>`` (key) and the other two."""
    if key_metric not in KEY_METRICS:
        raise ValueError(f"key_metric must be one of {', '.join(KEY_METRICS)}, got {key_metric!r}")
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    metrics: dict[str, Any] = {}
    if validation:
        named = {f"val_{k}": m for k, m in _confusion_metrics(num_classes, ignore_index, background).items()}
        key = f"val_{key_metric}"
        metrics = {"key_val_metric": {key: named.pop(key)}, "additional_metrics": named}
    return SupervisedEvaluator(
        device=device,
        val_data_loader=loader,
        network=network,
        prepare_batch=SegmentationBatch(ignore_index),
        inferer=inferer,
        postprocessing=SegmentationOutputs(),
        val_handlers=list(handlers),
        decollate=False,
        **metrics,
    )


def segmentation_transforms(
    size: int,
    class_names: Sequence[str] = CELEBAMASK_HQ_CLASSES,
    train: bool = False,
    flip_prob: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> Any:
    """The CelebAMask-HQ bundle's pipeline (``configs/segmentation_train.json``) for ``{"image", "label"}`` file dicts.

    Read (``LoadImageFiled`` as RGB, ``LoadLabelMapd``), label values checked against the classes
    (``RemapLabelsd``, ``ignore_index`` kept), short side to ``size`` (area / nearest-exact), a
    ``size x size`` crop (random for ``train``, else centred), for ``train``
    :class:`~medsymmflow.transforms.dictionary.RandFlipSwapd` (the left/right classes of ``class_names``
    swapped with the flip), image grey levels 0..255 -> [-1, 1]. A ``CacheDataset`` caches everything
    before the first random transform (the resized pairs).
    """
    from monai.transforms import CenterSpatialCropd, Compose, EnsureTyped, RandSpatialCropd

    from medsymmflow.transforms.dictionary import (
        LoadImageFiled,
        LoadLabelMapd,
        MatchChannelsd,
        RandFlipSwapd,
        RemapLabelsd,
        ResizeShortSided,
        StrictScaleIntensityRanged,
    )

    positive_int(size, "size")
    keys = ["image", "label"]
    crop = (
        RandSpatialCropd(keys=keys, roi_size=(size, size), random_size=False) if train
        else CenterSpatialCropd(keys=keys, roi_size=(size, size))
    )
    steps: list[Any] = [
        LoadImageFiled(keys="image"),
        MatchChannelsd(keys="image", channels=3),
        LoadLabelMapd(keys="label"),
        RemapLabelsd(keys="label", source_values=list(range(len(class_names))), ignore_index=ignore_index, what="segmentation"),
        ResizeShortSided(keys=keys, size=size, mode=["area", "nearest-exact"]),
        crop,
    ]
    if train:
        steps.append(RandFlipSwapd(keys=keys, swap=list(class_names), label_keys=["label"], prob=flip_prob))
    steps += [
        StrictScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=-1.0, b_max=1.0),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
    ]
    return Compose(steps)


def _file_dicts(
    dataset_dir: str | os.PathLike, split: str, fractions: Sequence[float], seed: int
) -> list[dict[str, str]]:
    """The split's ``{"image", "label", "stem"}`` dicts (``stem``: the pair's id; see :class:`SegmentationOutputs`)."""
    pairs = celebamask_hq_dicts(dataset_dir, split, fractions=fractions, seed=seed)
    return [{"image": p["image"], "label": p["label"], "stem": p["id"]} for p in pairs]


def segmentation_dataset(
    dataset_dir: str | os.PathLike,
    split: str,
    size: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    split_seed: int = 0,
    class_names: Sequence[str] = CELEBAMASK_HQ_CLASSES,
    train: bool = False,
    seed: int = 0,
) -> Any:
    """A MONAI ``CacheDataset`` of one split of a CelebAMask-HQ pairs folder through :func:`segmentation_transforms`.

    ``split_seed`` and ``fractions`` choose the split (a folder's ``splits.json`` wins); ``seed`` seeds the
    random flip of a training set.
    """
    from monai.data import CacheDataset

    items = _file_dicts(dataset_dir, split, fractions, split_seed)
    if not items:
        raise ValueError(f"the {split} split of {dataset_dir} is empty (fractions {tuple(fractions)})")
    transform = segmentation_transforms(size, class_names, train=train)
    transform.set_random_state(seed=int(seed))
    return CacheDataset(items, transform, cache_rate=1.0, num_workers=0, progress=False)


def load_segmentation_split(
    dataset_dir: str | os.PathLike,
    split: str,
    size: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    split_seed: int = 0,
) -> SegmentationArrays:
    """One split as the baseline sees it (its evaluation transforms), as uint8 images, label maps and ids."""
    items = celebamask_hq_dicts(dataset_dir, split, fractions=fractions, seed=split_seed)
    if not items:
        raise ValueError(f"the {split} split of {dataset_dir} is empty (fractions {tuple(fractions)})")
    return segmentation_arrays(items, segmentation_transforms(size, CELEBAMASK_HQ_CLASSES, train=False))


def build_segmentation_engines(
    network: nn.Module,
    train: Any,
    val: Any,
    save_dir: str | os.PathLike,
    device: torch.device,
    num_classes: int,
    max_epochs: int | None,
    budget_minutes: float | None,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    key_metric: str = "miou_no_background",
    autocast_dtype: torch.dtype | None = None,
    log_every: int = 1,
    clock: Callable[[], float] = time.monotonic,
) -> BaselineEngines:
    """The segmentation baseline's trainer (:class:`MaskedDiceCELoss`) and validation evaluator; ``trainer.run()`` trains.

    ``train`` / ``val``: datasets of ``{"image", "label"[, "stem"]}`` dicts (e.g. :func:`segmentation_dataset`).
    Wired by :func:`~medsymmflow.baselines.engines.assemble_baseline_engines`; the key-metric saver keeps
    the best ``val_<key_metric>`` weights as ``save_dir/model.pt`` (an equal score keeps the earlier epoch).
    Batches are shuffled by a generator seeded with ``seed``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0, drop_last=False)
    saver = best_model_saver(save_dir, network)
    evaluator = build_segmentation_evaluator(
        val, network, device, AutocastInferer(autocast_dtype), num_classes,
        handlers=[*epoch_logs("validate", log_every), saver], validation=True, key_metric=key_metric,
    )
    return assemble_baseline_engines(
        network, loader, evaluator, saver, MaskedDiceCELoss(), SegmentationBatch(), device,
        max_epochs=max_epochs, budget_minutes=budget_minutes, lr=lr, weight_decay=weight_decay,
        autocast_dtype=autocast_dtype, log_every=log_every, clock=clock,
    )


def train_segmentation_baseline(
    dataset_dir: str | os.PathLike,
    size: int = 64,
    budget_minutes: float | None = 30.0,
    max_epochs: int | None = None,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    features: Sequence[int] = BASIC_UNET_FEATURES,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    split_seed: int = 0,
    seed: int = 0,
    key_metric: str = "miou_no_background",
    class_names: Sequence[str] = CELEBAMASK_HQ_CLASSES,
    device: str | torch.device = "cpu",
    output_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    autocast: str | torch.dtype | None = None,
    log_every: int = 1,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Train MONAI's BasicUNet on a CelebAMask-HQ pairs folder within ``budget_minutes``; score its best checkpoint on test.

    The splits are :func:`~medsymmflow.data.celebamask_hq_dicts`'s (``fractions`` and ``split_seed``
    unless the folder has ``splits.json``), read through :func:`segmentation_transforms` at ``size`` px.
    ``budget_minutes`` / ``max_epochs``: as for the ResNet-18 baseline (give either or both); a run stopped
    before its first validation validates once at the end, so a checkpoint is always chosen.
    ``key_metric`` picks ``model.pt`` (``miou_no_background``, ``miou`` or ``pixel_accuracy`` on the
    validation split). ``threads`` sets torch's CPU threads for the call (restored afterwards);
    ``autocast`` is mixed precision for training and prediction. The same seed gives the same weights;
    the caller's torch RNG is left as it was.

    Writes, when ``output_dir`` is given: ``model.pt`` (the best validation state_dict), the test split's
    ``segmentation_metrics.json`` / ``segmentation_per_class.csv`` / ``segmentation_per_image.csv`` (the
    bundle's layout, :mod:`medsymmflow.reports.segmentation`, step count ``1``) and ``metrics.json`` (last,
    so its presence means the run completed). Returns the metrics.json content.
    """
    start = time.perf_counter()
    check_training_args(budget_minutes, max_epochs, batch_size, lr, weight_decay, log_every, threads)
    if key_metric not in KEY_METRICS:
        raise ValueError(f"key_metric must be one of {', '.join(KEY_METRICS)}, got {key_metric!r}")
    autocast_dtype = resolve_autocast(autocast, device)
    dev = torch.device(device)
    with seeded_run(seed, threads):
        kwargs = dict(size=int(size), split_seed=int(split_seed), fractions=tuple(fractions), class_names=list(class_names))
        train = segmentation_dataset(dataset_dir, "train", train=True, seed=int(seed), **kwargs)
        val = segmentation_dataset(dataset_dir, "val", **kwargs)
        test = segmentation_dataset(dataset_dir, "test", **kwargs)
        load_seconds = time.perf_counter() - start
        num_classes = len(class_names)
        model = build_basic_unet(3, num_classes, features).to(dev)
        logger.info(
            "BasicUNet on %s (%d train / %d val / %d test, %d classes, %d px), budget %s, data loaded in %.1f s",
            dataset_dir, len(train), len(val), len(test), num_classes, size,
            "none" if budget_minutes is None else f"{budget_minutes:.1f} min", load_seconds,
        )
        with run_folder(output_dir) as folder:
            engines = build_segmentation_engines(
                model, train, val, folder, dev, num_classes, max_epochs=max_epochs,
                budget_minutes=None if budget_minutes is None else float(budget_minutes), batch_size=batch_size,
                lr=float(lr), weight_decay=float(weight_decay), seed=int(seed), key_metric=key_metric,
                autocast_dtype=autocast_dtype, log_every=log_every, clock=clock,
            )
            train_to_best(engines, model, folder, dev)
            train_seconds = time.perf_counter() - start - load_seconds
            report = SegmentationReport(
                folder, num_classes, list(class_names), ignore_index=IGNORE_INDEX, background=0,
                extra={"model": "monai.networks.nets.BasicUNet", "split": "test", "size": int(size),
                       "steps_note": "one forward pass, reported as step count 1"},
            )
            build_segmentation_evaluator(test, model, dev, engines.inferer, num_classes, handlers=[report]).run()
            config = dict(
                dataset_dir=str(dataset_dir), size=int(size), budget_minutes=budget_minutes, max_epochs=max_epochs,
                batch_size=batch_size, lr=float(lr), weight_decay=float(weight_decay), features=list(features),
                fractions=list(fractions), split_seed=int(split_seed), seed=int(seed), key_metric=key_metric,
                device=str(dev), threads=torch.get_num_threads(),
                autocast=None if autocast_dtype is None else str(autocast_dtype).replace("torch.", ""),
            )
            result = _result(engines, model, report, config, {"train": len(train), "val": len(val), "test": len(test)})
            result["training"].update(load_seconds=load_seconds, train_seconds=train_seconds)
            result = finish_result(result, start, output_dir)
    logger.info(
        "best epoch %s: test mIoU %.4f (no background %.4f), pixel accuracy %.4f, %.1f min in total",
        result["training"]["best_epoch"], result["test"]["miou"], result["test"]["miou_no_background"],
        result["test"]["pixel_accuracy"], result["training"]["total_seconds"] / 60.0,
    )
    return result


def _result(
    engines: BaselineEngines,
    model: nn.Module,
    report: SegmentationReport,
    config: dict[str, Any],
    counts: dict[str, int],
) -> dict[str, Any]:
    """The metrics.json content of a finished run."""
    test = dict(report.results["by_steps"]["1"])
    return {
        "model": "monai.networks.nets.BasicUNet",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_classes": report.num_classes,
        "class_names": report.class_names,
        "uncertainty": "1 - max softmax probability",
        "loss": "medsymmflow.baselines.segmentation.MaskedDiceCELoss (monai DiceCELoss, softmax, one-hot, batch Dice, 255 masked)",
        "config": {
            **config,
            **engine_description(f"val_{config['key_metric']}"),
            "augment": "RandFlipSwapd (horizontal flip swapping left/right classes, p=0.5)",
        },
        "splits": counts,
        "training": {
            **training_summary(engines),
            "steps": int(engines.trainer.state.iteration),
            "history": validation_history(engines, [f"val_{name}" for name in KEY_METRICS], f"val_{config['key_metric']}"),
        },
        "test": test,
    }


def load_segmenter(
    path: str | os.PathLike, device: str | torch.device = "cpu", autocast: str | torch.dtype | None = None
) -> Segmenter:
    """A segmenter file for mask consistency: the baseline's ``model.pt`` (BasicUNet weights) or any TorchScript module.

    TorchScript archives are told apart by their ``code/`` folder; everything else is read as the
    baseline's weights (:func:`load_segmentation_baseline`, ``weights_only=True``).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"segmenter file not found: {file}")
    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as archive:
            if any("/code/" in name for name in archive.namelist()):
                return torchscript_segmenter(file, device)
    return load_segmentation_baseline(file, device, autocast)


def load_segmentation_baseline(
    path: str | os.PathLike, device: str | torch.device = "cpu", autocast: str | torch.dtype | None = None
) -> Segmenter:
    """The baseline's ``model.pt`` as a segmenter: float images ``(B, 3, H, W)`` in [-1, 1] -> label maps ``(B, H, W)``.

    The architecture (input channels, classes, features) is read from the weight shapes, so the file
    alone suffices (``torch.load(weights_only=True)``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmentation baseline weights not found: {path} (the BasicUNet baseline writes model.pt)")
    state = load_checkpoint(path, map_location=device)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a BasicUNet state_dict")
    try:
        in_channels, num_classes, features = basic_unet_features(state)
        model = build_basic_unet(in_channels, num_classes, features)
        model.load_state_dict(state)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not the BasicUNet baseline's model.pt ({e})") from None
    model = model.to(device).eval()
    dtype = resolve_autocast(autocast, device)

    def segment(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast_context(device, dtype):
            logits = model(torch.as_tensor(images).float().to(device))
        return logits.float().argmax(1).cpu()

    segment.network = model  # type: ignore[attr-defined]  # the benchmark times the forward pass
    return segment
