"""A plain ResNet-18 classifier trained under a wall-clock budget: the fair baseline next to MedSymmFlow.

The network is MONAI's ResNet-18. For 28 px MedMNIST images the stem is the usual small-input
adaptation (MedMNIST's own ResNet-18 (28) does the same): a 3x3 stride-1 first convolution and no
max-pool, so the 28 px image is not shrunk to 7 px before the first residual stage.

Training: AdamW, cross-entropy, batches drawn from the split held in memory as one tensor, optional
batch augmentation (:func:`medsymmflow.data.augment.batch_augment`, the same function the SymmFlow
trainer can use). The first epoch runs at the peak learning rate and doubles as the timing epoch:
from its duration the number of epochs that fit the budget is planned, and a cosine schedule
takes the learning rate to zero over the remaining planned epochs. Everything counts against the
budget: loading the data, validation every epoch, and the final test evaluation (reserved up front).
The budget is checked before every training step: when the step, a validation pass and the test
reserve would no longer fit (the CPU may slow down when shared), the epoch ends there, is
validated, and training stops.
The checkpoint with the best validation AUC (ties: accuracy) is kept in memory and evaluated on the
test split with torchmetrics and with medmnist's own Evaluator.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsymmflow.data.augment import BatchAugment
from medsymmflow.data.medmnist import MedMNISTArrays, load_medmnist
from medsymmflow.data.sampling import make_sampler
from medsymmflow.io import atomic_write, json_safe
from medsymmflow.metrics.classification import medmnist_metrics, torchmetrics_metrics
from medsymmflow.precision import autocast_context, resolve_autocast
from medsymmflow.reports.predictions import write_predictions

__all__ = ["build_resnet18", "predict_probabilities", "train_resnet_baseline", "write_softmax_predictions"]

logger = logging.getLogger(__name__)

# the final test pass, the medmnist Evaluator reads and the file writes are reserved from the budget
# as (test images x measured seconds per validation image) x this factor + a fixed margin
_TEST_RESERVE_FACTOR = 1.2
_TEST_RESERVE_SECONDS = 2.0


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


def write_softmax_predictions(path: str | os.PathLike, probs: torch.Tensor, labels: torch.Tensor) -> Path:
    """Write a predictions table (:mod:`medsymmflow.reports.predictions`) of softmax ``probs``; uncertainty = 1 - max softmax."""
    probs = torch.as_tensor(probs).double()
    labels = torch.as_tensor(labels).long().reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs (N, K) and labels (N,) disagree: {tuple(probs.shape)} vs {tuple(labels.shape)}")
    confidence, pred = probs.max(dim=1)
    return write_predictions(path, labels=labels, pred=pred, uncertainty=1.0 - confidence, scores=probs)


def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    """ValueError unless ``value`` is an int >= 1 (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


def _check_args(
    budget_minutes: float | None,
    max_epochs: int | None,
    batch_size: int,
    lr: float,
    weight_decay: float,
    log_every: int,
    threads: int | None,
    augment: Any,
) -> None:
    """Raise a ValueError/TypeError naming the first bad training argument."""
    if budget_minutes is None and max_epochs is None:
        raise ValueError("give a budget_minutes, a max_epochs or both; with neither, training would never stop")
    if budget_minutes is not None:
        if isinstance(budget_minutes, bool) or not isinstance(budget_minutes, (int, float)):
            raise TypeError(f"budget_minutes must be a number or None, got {type(budget_minutes).__name__}")
        if not (math.isfinite(budget_minutes) and budget_minutes > 0):
            raise ValueError(f"budget_minutes must be > 0, got {budget_minutes}")
    _check_positive_int("max_epochs", max_epochs, allow_none=True)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("log_every", log_every)
    _check_positive_int("threads", threads, allow_none=True)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not (isinstance(augment, bool) or augment is None or callable(augment)):
        raise TypeError(f"augment must be a bool, None or a callable (images, generator) -> images, got {augment!r}")


def _selection_key(metrics: dict[str, float]) -> tuple[float, float]:
    """Validation AUC first, accuracy second; a NaN AUC (one class in val) ranks by accuracy alone."""
    auc = metrics["auc"]
    return (auc if math.isfinite(auc) else -math.inf, metrics["acc"])


def _seconds_needed(
    step_seconds: float, train_image_seconds: float, n_val: int, n_test: int, val_seconds: float | None, reserve: float
) -> float:
    """Seconds one more training step, a validation pass and the test reserve take.

    Until the first validation pass is timed, a training image's time stands in for an evaluation
    image's: an over-estimate, since a forward pass costs about a third of a training step.
    """
    if val_seconds is not None:
        return step_seconds + val_seconds + reserve
    return step_seconds + train_image_seconds * (n_val + _TEST_RESERVE_FACTOR * n_test) + _TEST_RESERVE_SECONDS


def _write_outputs(
    output_dir: Path,
    state: dict[str, torch.Tensor],
    test: MedMNISTArrays,
    test_probs: torch.Tensor,
    val: MedMNISTArrays,
    val_probs: torch.Tensor,
) -> None:
    """Write model.pt and the test / val prediction files atomically (metrics.json comes last, separately)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(output_dir / "model.pt", buf.getvalue())
    write_softmax_predictions(output_dir / "predictions.csv", test_probs, test.labels)
    write_softmax_predictions(output_dir / "val_predictions.csv", val_probs, val.labels)


def _split_report(
    arrays: MedMNISTArrays, probs: torch.Tensor, dataset_dir: Path | None
) -> dict[str, Any]:
    """ACC / AUC of one split with torchmetrics and, when the npz folder is known, medmnist's Evaluator."""
    report: dict[str, Any] = {"num_samples": len(arrays), "torchmetrics": torchmetrics_metrics(probs, arrays.labels)}
    if dataset_dir is not None:
        # medmnist thresholds the last column at 0.5 on binary tasks: the (N, 2) softmax makes that the argmax
        report["medmnist"] = medmnist_metrics(arrays.flag, arrays.split, probs.numpy(), dataset_dir, arrays.size)
    return report


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

    ``budget_minutes`` bounds the whole call (data loading, training, validation, test evaluation) and
    is checked before every step; ``max_epochs`` caps the epochs; give either or both. At least one
    training step always runs, so a budget shorter than one step plus the evaluations is overrun.
    ``augment``: True uses :class:`BatchAugment` defaults (horizontal flips, shifts up to 2 px), a
    callable ``(images, generator) -> images`` replaces it, False/None disables it. ``balanced`` draws
    classes equally often. ``threads`` sets torch's CPU threads for the call (restored afterwards).
    ``log_every``: log an epoch line every that many epochs (the first, best and last are always logged).
    ``autocast``: mixed precision for training and prediction (``none`` / ``auto`` / ``bfloat16`` /
    ``float16``, see :mod:`medsymmflow.precision`), so the baseline can get the same speed-up as SymmFlow.

    Writes, when ``output_dir`` is given: ``model.pt`` (best state_dict), ``predictions.csv`` (test),
    ``val_predictions.csv`` and ``metrics.json`` (last, so its presence means the run completed).
    Returns the metrics.json content.
    """
    start = time.perf_counter()
    _check_args(budget_minutes, max_epochs, batch_size, lr, weight_decay, log_every, threads, augment)
    autocast_dtype = resolve_autocast(autocast, device)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(
            start=start,
            flag=flag,
            dataset_dir=dataset_dir,
            download=download,
            size=size,
            budget_seconds=math.inf if budget_minutes is None else 60.0 * float(budget_minutes),
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
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    start: float,
    flag: str,
    dataset_dir: str | os.PathLike | None,
    download: bool,
    size: int,
    budget_seconds: float,
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
    npz_dir = None if train.path is None else train.path.parent
    train_images, train_labels = train.images.to(device), train.labels.to(device)
    load_seconds = time.perf_counter() - start

    # fork the global RNG so building the model from the seed leaves the caller's RNG state untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_resnet18(train.channels, train.num_classes, small_input=size <= 32).to(device)
    augmenter = BatchAugment() if augment is True else (augment or None)
    generator = torch.Generator(device=device).manual_seed(seed)
    sampler = make_sampler(train.labels, balanced=balanced, seed=seed, distributed=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(sampler) / batch_size)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    planned = max_epochs
    finite_budget = math.isfinite(budget_seconds)
    val_seconds: float | None = None  # one validation pass; measured at the end of every epoch
    reserve = 0.0  # seconds kept for the final test pass and the writes
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"key": (-math.inf, -math.inf)}
    stopped_by_budget = False
    epoch = 0
    logger.info(
        "ResNet-18 on %s (%d train / %d val / %d test, %d classes), budget %s, data loaded in %.1f s",
        train.flag, len(train), len(val), len(test), train.num_classes,
        "none" if not finite_budget else f"{budget_seconds / 60:.1f} min", load_seconds,
    )
    while True:
        epoch += 1
        epoch_start = time.perf_counter()
        model.train()
        order = torch.as_tensor(list(sampler), dtype=torch.long)
        loss_sum, seen, steps = 0.0, 0, 0
        current_lr = optimizer.param_groups[0]["lr"]
        for i in range(0, order.numel(), batch_size):
            if finite_budget and seen > 0:
                now = time.perf_counter()
                per_image = (now - epoch_start) / seen
                need = _seconds_needed(per_image * batch_size, per_image, len(val), len(test), val_seconds, reserve)
                if now - start + need > budget_seconds:
                    stopped_by_budget = True
                    break
            index = order[i : i + batch_size].to(device)
            images, labels = train_images[index], train_labels[index]
            if augmenter is not None:
                images = augmenter(images, generator=generator)
            with autocast_context(device, autocast_dtype):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += float(loss.detach()) * index.numel()
            seen += index.numel()
            steps += 1
        val_start = time.perf_counter()
        val_probs = predict_probabilities(model, val.images, device=device, autocast_dtype=autocast_dtype)
        val_metrics = torchmetrics_metrics(val_probs, val.labels)
        now = time.perf_counter()
        epoch_seconds = now - epoch_start
        val_seconds = now - val_start
        reserve = _TEST_RESERVE_FACTOR * val_seconds * len(test) / len(val) + _TEST_RESERVE_SECONDS

        if epoch == 1:
            if finite_budget:
                fit = 1 + max(0, math.floor((budget_seconds - (now - start) - reserve) / epoch_seconds))
                planned = fit if max_epochs is None else min(max_epochs, fit)
            if stopped_by_budget:
                planned = 1
            if planned > 1:
                # cosine from the peak lr to 0 over the epochs after the timing epoch
                scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=(planned - 1) * steps_per_epoch)
            logger.info(
                "planned %d epoch(s) of %.1f s each (%d steps of batch %d)",
                planned, epoch_seconds, steps_per_epoch, batch_size,
            )

        improved = _selection_key(val_metrics) > best["key"]
        if improved:
            best = {
                "key": _selection_key(val_metrics),
                "epoch": epoch,
                "state": copy.deepcopy(model.state_dict()),
                "val_probs": val_probs,
            }
        history.append(
            {
                "epoch": epoch,
                "steps": steps,
                "complete": steps == steps_per_epoch,
                "loss": loss_sum / max(seen, 1),
                "lr": current_lr,
                "val_acc": val_metrics["acc"],
                "val_auc": val_metrics["auc"],
                "seconds": epoch_seconds,
                "elapsed_seconds": now - start,
            }
        )
        last = epoch >= planned or stopped_by_budget
        if improved or last or epoch == 1 or epoch % log_every == 0:
            logger.info(
                "epoch %d/%d%s loss %.4f lr %.2e val acc %.4f auc %.4f%s | %.1f s, elapsed %.1f min",
                epoch,
                planned,
                "" if steps == steps_per_epoch else f" ({steps}/{steps_per_epoch} steps, budget reached)",
                history[-1]["loss"], current_lr, val_metrics["acc"], val_metrics["auc"],
                " (best)" if improved else "", epoch_seconds, (now - start) / 60.0,
            )
        if last:
            break
    train_seconds = time.perf_counter() - start - load_seconds

    model.load_state_dict(best["state"])
    test_probs = predict_probabilities(model, test.images, device=device, autocast_dtype=autocast_dtype)
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
            "budget_minutes": None if math.isinf(budget_seconds) else budget_seconds / 60.0,
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "optimizer": "AdamW",
            "schedule": "peak lr for the timing epoch, then cosine to 0 over the remaining planned epochs",
            "augment": repr(augmenter) if augmenter is not None else None,
            "balanced": balanced,
            "seed": seed,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "autocast": None if autocast_dtype is None else str(autocast_dtype).replace("torch.", ""),
        },
        "training": {
            "epochs_planned": planned,
            "epochs_run": epoch,
            "best_epoch": best["epoch"],
            "stopped_by_budget": stopped_by_budget,
            "load_seconds": load_seconds,
            "train_seconds": train_seconds,
            "history": history,
        },
        "val": _split_report(val, best["val_probs"], npz_dir),
        "test": _split_report(test, test_probs, npz_dir),
    }
    if output_dir is not None:
        _write_outputs(output_dir, best["state"], test, test_probs, val, best["val_probs"])
        result["output_dir"] = str(output_dir)
    result["training"]["total_seconds"] = time.perf_counter() - start
    result = json_safe(result)
    if output_dir is not None:
        atomic_write(output_dir / "metrics.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    logger.info(
        "best epoch %d: test %s, %.1f min in total",
        best["epoch"],
        ", ".join(
            f"{source} acc {m['acc']:.4f} auc " + ("nan" if m["auc"] is None else f"{m['auc']:.4f}")
            for source, m in result["test"].items()
            if isinstance(m, dict)
        ),
        result["training"]["total_seconds"] / 60.0,
    )
    return result
