"""A plain ResNet-18 classifier trained on the same engine stack and budget as MedSymmFlow: the fair baseline.

The network is MONAI's ResNet-18. For 28 px MedMNIST images the stem is the usual small-input
adaptation (MedMNIST's own ResNet-18 (28) does the same): a 3x3 stride-1 first convolution and no
max-pool, so the 28 px image is not shrunk to 7 px before the first residual stage.

Training (:mod:`medsymmflow.baselines.engines`): MONAI's ``SupervisedTrainer`` with cross-entropy,
AdamW from the peak learning rate and MONAI's cosine schedule to 0, optional batch augmentation
(:func:`medsymmflow.data.augment.batch_augment`, the same function the SymmFlow trainer can use),
validation every epoch with the same metric handlers as MedSymmFlow, the same
:class:`~medsymmflow.engines.TrainingBudget` (the first epoch's time plans how many epochs fit, the
plan and the end of the cosine schedule are revised after every epoch, training stops when the
budget is spent) and the same :class:`~medsymmflow.engines.AtomicCheckpointSaver` keeping the
weights of the best validation AUC. Those weights are then scored on the validation and test splits
by :class:`~medsymmflow.engines.ClassificationReport` (torchmetrics and medmnist's own Evaluator),
which writes the predictions tables of :mod:`medsymmflow.reports.predictions`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsymmflow.baselines.engines import BEST_MODEL_FILE, BaselineEngines, build_baseline_engines, build_evaluator
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
from medsymmflow.data.augment import BatchAugment
from medsymmflow.data.medmnist import MedMNISTArrays, load_medmnist
from medsymmflow.engines import ClassificationReport
from medsymmflow.precision import autocast_context, resolve_autocast
from medsymmflow.reports.predictions import PREDICTIONS_FILE, VAL_PREDICTIONS_FILE

__all__ = ["build_resnet18", "predict_probabilities", "train_resnet_baseline"]

logger = logging.getLogger(__name__)


def build_resnet18(in_channels: int, num_classes: int, small_input: bool = True) -> nn.Module:
    """MONAI's 2-D ResNet-18; ``small_input`` uses a 3x3 stride-1 stem without max-pool (for 28 px images)."""
    from monai.networks.nets import resnet18

    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 for a classifier, got {num_classes}")
    stem: dict[str, Any] = (
        {"conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": True}
        if small_input
        else {"conv1_t_size": 7, "conv1_t_stride": 2, "no_max_pool": False}
    )
    return resnet18(spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes, **stem)


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Softmax class probabilities, float64 ``(N, K)`` on the CPU, of ``model`` in eval mode over ``images``."""
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    try:
        parts = []
        for i in range(0, images.shape[0], batch_size):
            with autocast_context(device, autocast_dtype):
                logits = model(images[i : i + batch_size].to(device))
            parts.append(torch.softmax(logits.float(), dim=1).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(parts)


def train_resnet_baseline(
    flag: str,
    dataset_dir: str | os.PathLike | None,
    download: bool = False,
    size: int = 28,
    budget_minutes: float | None = 30.0,
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    augment: bool | Callable[..., torch.Tensor] | None = True,
    balanced: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    output_dir: str | os.PathLike | None = None,
    log_every: int = 1,
    threads: int | None = None,
    autocast: str | torch.dtype | None = None,
) -> dict[str, Any]:
    """Train MONAI's ResNet-18 on a MedMNIST flag within ``budget_minutes`` and evaluate its best checkpoint.

    ``budget_minutes`` is the :class:`~medsymmflow.engines.TrainingBudget` of the training (counted from
    the trainer's start, validation included, a reserve kept for the test evaluation); it plans the
    epochs after each one and stops training when spent; ``max_epochs`` caps the epochs; give either
    or both. A run stopped before its first validation validates once at the end, so a checkpoint is
    always chosen. ``augment``: True uses :class:`BatchAugment` defaults (horizontal flips, shifts up
    to 2 px), a callable ``(images, generator) -> images`` replaces it, False/None disables it.
    ``balanced`` draws classes equally often. ``threads`` sets torch's CPU threads for the call
    (restored afterwards). ``log_every``: with INFO logging on, log the epoch metrics every that many
    epochs (and the first). ``autocast``: mixed precision for training and prediction (``none`` /
    ``auto`` / ``bfloat16`` / ``float16``, see :mod:`medsymmflow.precision`), so the baseline can get
    the same speed-up as SymmFlow. The same seed gives the same weights and predictions; the caller's
    torch RNG is left as it was.

    Writes, when ``output_dir`` is given: ``model.pt`` (the best validation AUC's state_dict),
    ``val_predictions.csv``, ``predictions.csv`` (test) and ``metrics.json`` (last, so its presence
    means the run completed). Returns the metrics.json content.
    """
    start = time.perf_counter()
    check_training_args(budget_minutes, max_epochs, batch_size, lr, weight_decay, log_every, threads)
    if not (isinstance(augment, bool) or augment is None or callable(augment)):
        raise TypeError(f"augment must be a bool, None or a callable (images, generator) -> images, got {augment!r}")
    autocast_dtype = resolve_autocast(autocast, device)
    with seeded_run(seed, threads):
        return _run(
            start=start,
            flag=flag,
            dataset_dir=dataset_dir,
            download=download,
            size=size,
            budget_minutes=None if budget_minutes is None else float(budget_minutes),
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=float(lr),
            weight_decay=float(weight_decay),
            augment=augment,
            balanced=bool(balanced),
            seed=int(seed),
            device=torch.device(device),
            output_dir=None if output_dir is None else Path(output_dir),
            log_every=log_every,
            autocast_dtype=autocast_dtype,
        )


def _score_split(
    arrays: MedMNISTArrays,
    network: nn.Module,
    engines: BaselineEngines,
    device: torch.device,
    folder: Path,
    predictions_file: str,
    dataset_dir: Path | None,
) -> dict[str, Any]:
    """Evaluate ``network`` on one split through ClassificationReport (writes the predictions table); its metrics."""
    report = ClassificationReport(
        output_dir=folder,
        flag=arrays.flag,
        split=arrays.split,
        dataset_dir=dataset_dir,
        size=arrays.size,
        class_names=arrays.class_names,
        metrics_file=None,
        predictions_file=predictions_file,
    )
    build_evaluator(arrays, network, device, engines.inferer, handlers=[report]).run()
    # medmnist thresholds the last column at 0.5 on binary tasks: the (N, 2) softmax makes that the argmax
    return {"num_samples": len(arrays), **report.results["runs"][0]}


def _run(
    start: float,
    flag: str,
    dataset_dir: str | os.PathLike | None,
    download: bool,
    size: int,
    budget_minutes: float | None,
    max_epochs: int | None,
    batch_size: int,
    lr: float,
    weight_decay: float,
    augment: Any,
    balanced: bool,
    seed: int,
    device: torch.device,
    output_dir: Path | None,
    log_every: int,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The body of :func:`train_resnet_baseline` after argument checks (``start`` is its perf_counter origin)."""
    train, val, test = (
        load_medmnist(flag, split, size=size, dataset_dir=dataset_dir, download=download)
        for split in ("train", "val", "test")
    )
    val.require_every_class(f"validation (its AUC picks {BEST_MODEL_FILE})")
    npz_dir = None if train.path is None else train.path.parent
    load_seconds = time.perf_counter() - start
    model = build_resnet18(train.channels, train.num_classes, small_input=size <= 32).to(device)
    augmenter = BatchAugment() if augment is True else (augment or None)
    logger.info(
        "ResNet-18 on %s (%d train / %d val / %d test, %d classes), budget %s, data loaded in %.1f s",
        train.flag, len(train), len(val), len(test), train.num_classes,
        "none" if budget_minutes is None else f"{budget_minutes:.1f} min", load_seconds,
    )
    # without an output folder the best checkpoint and the tables live in a folder removed afterwards
    with run_folder(output_dir) as folder:
        engines = build_baseline_engines(
            model, train, val, folder, device, max_epochs=max_epochs, budget_minutes=budget_minutes,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, augment=augmenter, balanced=balanced,
            seed=seed, autocast_dtype=autocast_dtype, log_every=log_every,
        )
        train_to_best(engines, model, folder, device)
        train_seconds = time.perf_counter() - start - load_seconds
        val_report = _score_split(val, model, engines, device, folder, VAL_PREDICTIONS_FILE, npz_dir)
        test_report = _score_split(test, model, engines, device, folder, PREDICTIONS_FILE, npz_dir)

    result: dict[str, Any] = {
        "model": "monai.networks.nets.resnet18" + (" (3x3 stride-1 stem, no max-pool)" if size <= 32 else ""),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "flag": train.flag,
        "size": train.size,
        "task": train.task,
        "num_classes": train.num_classes,
        "class_names": list(train.class_names),
        "uncertainty": "1 - max softmax probability",
        "config": {
            "budget_minutes": budget_minutes,
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            **engine_description("val_auc"),
            "augment": repr(augmenter) if augmenter is not None else None,
            "balanced": balanced,
            "seed": seed,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "autocast": None if autocast_dtype is None else str(autocast_dtype).replace("torch.", ""),
        },
        "training": {
            **training_summary(engines),
            "load_seconds": load_seconds,
            "train_seconds": train_seconds,
            "history": validation_history(engines, ("val_acc", "val_auc"), "val_auc"),
        },
        "val": val_report,
        "test": test_report,
    }
    result = finish_result(result, start, output_dir)
    logger.info(
        "best epoch %s: test %s, %.1f min in total",
        result["training"]["best_epoch"],
        ", ".join(
            f"{source} acc {m['acc']:.4f} auc " + ("nan" if m["auc"] is None else f"{m['auc']:.4f}")
            for source, m in result["test"].items()
            if isinstance(m, dict)
        ),
        result["training"]["total_seconds"] / 60.0,
    )
    return result
