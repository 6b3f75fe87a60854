"""What every baseline training run does around its engines: argument checks, seeding, the run folder, the
train-then-restore-best step and the ``training`` entries of its metrics.json.

The ResNet-18 (:mod:`medsymmflow.baselines.resnet`) and the BasicUNet
(:mod:`medsymmflow.baselines.segmentation`) baselines differ in their data, network, loss and
validation metrics; these steps, and so their budget and checkpoint policy, are the same.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsymmflow.baselines.engines import BEST_MODEL_FILE, BaselineEngines
from medsymmflow.checks import nonnegative_float, positive_float, positive_int
from medsymmflow.io import atomic_write, json_safe

__all__ = [
    "check_training_args",
    "engine_description",
    "finish_result",
    "run_folder",
    "seeded_run",
    "train_to_best",
    "training_summary",
    "validation_history",
]


def check_training_args(
    budget_minutes: float | None,
    max_epochs: int | None,
    batch_size: int,
    lr: float,
    weight_decay: float,
    log_every: int,
    threads: int | None,
) -> None:
    """Raise a ValueError/TypeError naming the first bad training argument (a budget, an epoch cap or both must bound the run)."""
    if budget_minutes is None and max_epochs is None:
        raise ValueError("give a budget_minutes, a max_epochs or both; with neither, training would never stop")
    if budget_minutes is not None:
        if isinstance(budget_minutes, bool) or not isinstance(budget_minutes, (int, float)):
            raise TypeError(f"budget_minutes must be a number or None, got {type(budget_minutes).__name__}")
        positive_float(budget_minutes, "budget_minutes")
    positive_int(batch_size, "batch_size")
    positive_int(log_every, "log_every")
    for name, value in (("max_epochs", max_epochs), ("threads", threads)):
        if value is not None:  # None: no cap / torch's thread count
            positive_int(value, name)
    positive_float(lr, "lr")
    nonnegative_float(weight_decay, "weight_decay")


@contextlib.contextmanager
def seeded_run(seed: int, threads: int | None = None) -> Iterator[None]:
    """The body runs with torch's global RNG seeded with ``seed`` and ``threads`` CPU threads; both are restored after.

    The initial weights come from the seeded global RNG; the fork gives the caller its RNG state back.
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            yield
    finally:
        torch.set_num_threads(previous_threads)


@contextlib.contextmanager
def run_folder(output_dir: str | os.PathLike | None) -> Iterator[Path]:
    """``output_dir``, or a temporary folder removed afterwards, for the best checkpoint and the tables of a run."""
    with tempfile.TemporaryDirectory() if output_dir is None else contextlib.nullcontext(str(output_dir)) as where:
        yield Path(where)


def train_to_best(engines: BaselineEngines, network: nn.Module, folder: Path, device: torch.device) -> None:
    """Run the trainer, then load the best validation's weights (``folder/model.pt``) into ``network``.

    A run whose budget ended before the first validation validates once at the end, so a checkpoint is
    always chosen.
    """
    engines.trainer.run()
    if engines.saver.state_dict()["best_epoch"] is None:
        engines.evaluator.run(engines.trainer.state.epoch)
    network.load_state_dict(torch.load(folder / BEST_MODEL_FILE, map_location=device, weights_only=True))


def training_summary(engines: BaselineEngines) -> dict[str, Any]:
    """``epochs_planned``, ``epochs_run``, ``best_epoch`` and ``stopped_by_budget`` of a finished run."""
    state = engines.trainer.state
    return {
        # a budget that ended within the first epoch never planned: that epoch was all there was
        "epochs_planned": int(state.max_epochs) if state.iteration >= state.epoch_length else int(state.epoch),
        "epochs_run": int(state.epoch),
        "best_epoch": engines.saver.state_dict()["best_epoch"],
        "stopped_by_budget": int(state.iteration) < int(state.max_epochs) * int(state.epoch_length),
    }


def validation_history(engines: BaselineEngines, metrics: Sequence[str], key_metric: str) -> list[dict[str, Any]]:
    """One row per validation (normally one per epoch) from MONAI's MetricLogger.

    Each row: ``epoch``, the training ``steps`` of that epoch, whether it was ``complete``, the mean train
    ``loss`` and the value of each of ``metrics`` (validation metric names, e.g. ``val_auc``); the rows
    follow the validations of ``key_metric``.
    """
    length = int(engines.trainer.state.epoch_length)
    losses: dict[int, list[float]] = defaultdict(list)
    for iteration, loss in engines.history.loss:
        losses[math.ceil(iteration / length)].append(loss)
    series = {name: engines.history.metrics[name] for name in metrics}
    rows = []
    for i, (iteration, _) in enumerate(engines.history.metrics[key_metric]):
        epoch = math.ceil(iteration / length)
        steps = losses[epoch]
        row = {"epoch": epoch, "steps": len(steps), "complete": len(steps) == length, "loss": sum(steps) / max(len(steps), 1)}
        row.update({name: float(values[i][1]) for name, values in series.items()})
        rows.append(row)
    return rows


def engine_description(key_metric: str) -> dict[str, str]:
    """The ``optimizer``, ``schedule`` and ``engines`` entries of a run's config, the saver keeping the best ``key_metric``."""
    return {
        "optimizer": "AdamW",
        "schedule": "cosine from the peak lr to 0 at the end of the planned epochs (MONAI WarmupCosineSchedule, no warm-up)",
        "engines": "monai.engines.SupervisedTrainer, medsymmflow.engines.TrainingBudget (plan_epochs), "
        f"medsymmflow.engines.AtomicCheckpointSaver (best {key_metric})",
    }


def finish_result(result: dict[str, Any], start: float, output_dir: str | os.PathLike | None) -> dict[str, Any]:
    """``result`` with ``output_dir`` and ``training.total_seconds`` (since the ``perf_counter`` ``start``), JSON-safe.

    With an ``output_dir`` it is written there as ``metrics.json``, the run's last file, so its presence
    means the run completed.
    """
    if output_dir is not None:
        result["output_dir"] = str(output_dir)
    result["training"]["total_seconds"] = time.perf_counter() - start
    result = json_safe(result)
    if output_dir is not None:
        atomic_write(Path(output_dir) / "metrics.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result
