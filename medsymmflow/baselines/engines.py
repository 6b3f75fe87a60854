"""The baselines' engines: MONAI's SupervisedTrainer / SupervisedEvaluator with medsymmflow's handlers.

:func:`assemble_baseline_engines` wires a plain network the way ``configs/train.json`` wires
MedSymmFlow: AdamW stepped per iteration by MONAI's ``WarmupCosineSchedule`` (``LrScheduleHandler``),
validation every epoch (``ValidationHandler``), then :class:`~medsymmflow.engines.TrainingBudget`
(the same handler, attached after the validation, so an epoch's timing includes it) and
:class:`~medsymmflow.engines.AtomicCheckpointSaver` on the evaluator keeping the weights of the best
validation key metric. :func:`build_baseline_engines` is the classifier's: cross-entropy, MONAI's
``ROCAUC`` on the per-class scores as the key metric and ignite's ``Accuracy``. The pieces a plain
classifier needs beyond MONAI's defaults are the batch preparation (flat labels, batch augmentation),
an inferer running the forward under autocast, and the postprocessing that turns logits into the
outputs :class:`~medsymmflow.engines.ClassificationReport` reads. The segmenter's (Dice +
cross-entropy, validation mIoU) are in :mod:`medsymmflow.baselines.segmentation`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from ignite.metrics import Accuracy, Average
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import default_prepare_batch
from monai.handlers import ROCAUC, LrScheduleHandler, MetricLogger, StatsHandler, ValidationHandler, from_engine
from monai.inferers import Inferer
from monai.optimizers import WarmupCosineSchedule
from monai.utils import CommonKeys as Keys
from torch.utils.data import DataLoader

from medsymmflow.data.medmnist import MedMNISTArrays
from medsymmflow.data.sampling import make_sampler
from medsymmflow.engines import AtomicCheckpointSaver, TrainingBudget
from medsymmflow.precision import autocast_context

__all__ = [
    "BEST_MODEL_FILE",
    "AutocastInferer",
    "BaselineEngines",
    "ClassifierBatch",
    "SoftmaxOutputs",
    "assemble_baseline_engines",
    "best_model_saver",
    "build_baseline_engines",
    "build_evaluator",
    "epoch_logs",
]

logger = logging.getLogger(__name__)

BEST_MODEL_FILE = "model.pt"  # the best validation AUC's state_dict, written by the key-metric saver
EVAL_BATCH_SIZE = 256
# epochs asked for when only the budget bounds the run: TrainingBudget lowers it to what fits
UNCAPPED_EPOCHS = 10_000


class ClassifierBatch:
    """``prepare_batch`` for a classifier: ``(image, label)`` with labels flattened to ``(B,)``, optionally augmented.

    ``augment(images, generator=generator)`` (e.g. :class:`~medsymmflow.data.BatchAugment`) is applied
    to every training batch on the device; ``generator`` makes the draws reproducible from a seed.
    """

    def __init__(self, augment: Callable[..., torch.Tensor] | None = None, generator: torch.Generator | None = None) -> None:
        self.augment = augment
        self.generator = generator

    def __call__(self, batchdata: Any, device: torch.device | str | None = None, non_blocking: bool = False, **kwargs: Any) -> tuple:
        """The batch's images (augmented when asked) and flat int64 labels on ``device``."""
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        image = torch.as_tensor(image).float()
        if self.augment is not None:
            image = self.augment(image, generator=self.generator)
        return image, torch.as_tensor(label).reshape(-1).long()


class AutocastInferer(Inferer):
    """Runs the network under ``torch.autocast`` with ``dtype`` (None: float32) and returns float32 outputs.

    MONAI's own ``amp`` switch autocasts on CUDA only; this gives the baseline the same bf16 speed-up on
    CPUs that MedSymmFlow's trainer and inferers get (:mod:`medsymmflow.precision`).
    """

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        """``network(inputs)`` under autocast, as float32."""
        with autocast_context(inputs.device, self.dtype):
            out = network(inputs, *args, **kwargs)
        return out.float()


class SoftmaxOutputs:
    """Evaluator postprocessing: logits -> softmax scores, the argmax class and ``1 - max softmax`` as uncertainty.

    Writes the keys the metric handlers and :class:`~medsymmflow.engines.ClassificationReport` read, in
    :class:`~medsymmflow.engines.SymmFlowEvaluator`'s layout for one inference run: ``score`` (B, K),
    float64 softmax of the float32 logits; ``pred`` (B,); ``label_onehot`` (B, K); ``scores`` (1, B, K),
    ``preds`` (1, B) and ``uncertainty`` (1, B). ``logits`` keeps the network output.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Add the score keys to an evaluator's (batch + output) dict."""
        logits = torch.as_tensor(data[Keys.PRED]).float()
        probs = torch.softmax(logits, dim=1).double()
        confidence, pred = probs.max(dim=1)
        label = torch.as_tensor(data[Keys.LABEL]).reshape(-1).long()
        return {
            **data,
            "logits": logits,
            "score": probs,
            Keys.PRED: pred,
            Keys.LABEL: label,
            "label_onehot": torch.nn.functional.one_hot(label, self.num_classes).double(),
            "scores": probs[None],
            "preds": pred[None],
            "uncertainty": (1.0 - confidence)[None],
        }


def _stats(name: str, epoch_filter: Callable[[Any, int], bool]) -> list[StatsHandler]:
    """MONAI's epoch-metrics log (to stdout, like the bundles' ``train`` / ``validate`` loggers) when INFO logging is on.

    Off otherwise: a library call must not print unasked. The check reads this module's logger, since
    MONAI's ``get_logger`` only gives a logger it creates itself an output handler.
    """
    if not logger.isEnabledFor(logging.INFO):
        return []
    return [StatsHandler(name=f"{__name__}.{name}", iteration_log=False, epoch_log=epoch_filter)]


def build_evaluator(
    arrays: MedMNISTArrays,
    network: torch.nn.Module,
    device: torch.device,
    inferer: Inferer,
    handlers: Sequence[Any] = (),
    validation: bool = False,
) -> SupervisedEvaluator:
    """A SupervisedEvaluator over ``arrays`` in split order; ``validation`` adds ``val_auc`` (key) and ``val_acc``.

    The metrics are medsymmflow's: MONAI's ``ROCAUC`` on ``score`` / ``label_onehot`` and ignite's
    ``Accuracy`` on ``score`` / ``label`` (see ``configs/train.json``, ``validate#evaluator``).
    """
    loader = DataLoader(arrays.dataset(), batch_size=EVAL_BATCH_SIZE, shuffle=False, num_workers=0)
    metrics: dict[str, Any] = {}
    if validation:
        metrics = {
            "key_val_metric": {"val_auc": ROCAUC(output_transform=from_engine(["score", "label_onehot"]))},
            "additional_metrics": {"val_acc": Accuracy(output_transform=from_engine(["score", "label"]))},
        }
    return SupervisedEvaluator(
        device=device,
        val_data_loader=loader,
        network=network,
        prepare_batch=ClassifierBatch(),
        inferer=inferer,
        postprocessing=SoftmaxOutputs(arrays.num_classes),
        val_handlers=list(handlers),
        decollate=False,
        **metrics,
    )


def _loss_value(output: dict[str, Any]) -> float:
    """The iteration's loss as a float (a stored tensor would keep its autograd graph alive)."""
    return float(output[Keys.LOSS].detach())


@dataclass
class BaselineEngines:
    """The engines and the handlers whose state the baseline reports after the run."""

    trainer: SupervisedTrainer
    evaluator: SupervisedEvaluator
    budget: TrainingBudget
    saver: AtomicCheckpointSaver
    history: MetricLogger
    lr_scheduler: WarmupCosineSchedule
    inferer: AutocastInferer


def best_model_saver(save_dir: str | os.PathLike, network: torch.nn.Module) -> AtomicCheckpointSaver:
    """The evaluator's key-metric saver: the best validation's ``state_dict`` of ``network`` as ``save_dir/model.pt``."""
    return AtomicCheckpointSaver(
        save_dir=str(save_dir), save_dict={"network": network}, save_key_metric=True, key_metric_filename=BEST_MODEL_FILE
    )


def epoch_logs(name: str, log_every: int) -> list[StatsHandler]:
    """The epoch-metrics log of engine ``name`` for the first epoch and every ``log_every``-th (empty without INFO logging)."""

    def every(engine: Any, epoch: int) -> bool:
        return epoch == 1 or epoch % log_every == 0

    return _stats(name, every)


def assemble_baseline_engines(
    network: torch.nn.Module,
    loader: DataLoader,
    evaluator: SupervisedEvaluator,
    saver: AtomicCheckpointSaver,
    loss_function: Callable[..., torch.Tensor],
    prepare_batch: Callable[..., tuple],
    device: torch.device,
    max_epochs: int | None,
    budget_minutes: float | None,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    autocast_dtype: torch.dtype | None = None,
    log_every: int = 1,
    clock: Callable[[], float] = time.monotonic,
) -> BaselineEngines:
    """A baseline's SupervisedTrainer around ``evaluator`` (which holds ``saver``), wired like ``configs/train.json``.

    AdamW from the peak ``lr``, MONAI's ``WarmupCosineSchedule`` (no warm-up) to 0 at the end of the
    planned epochs, stepped per iteration; validation by ``evaluator`` after every epoch; then
    :class:`TrainingBudget` (``budget_minutes``, ``plan_epochs``: the first epoch's time, validation
    included, sets how many epochs fit; the plan and the schedule's end are revised after every epoch;
    training stops once the budget is spent) and a ``MetricLogger`` of the losses and validation
    metrics. ``max_epochs`` caps the epochs (None: only the budget bounds them). ``clock`` is the
    budget's clock (tests pass a fake one). The evaluator's inferer must be an :class:`AutocastInferer`.
    """
    epochs = UNCAPPED_EPOCHS if max_epochs is None else int(max_epochs)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
    # no warm-up: AdamW from the peak lr, cosine to 0 at the end of the epochs planned (TrainingBudget moves the end)
    lr_scheduler = WarmupCosineSchedule(optimizer, warmup_steps=0, t_total=epochs * len(loader))
    inferer = evaluator.inferer
    if not isinstance(inferer, AutocastInferer):
        raise TypeError(f"the evaluator's inferer must be an AutocastInferer, got {type(inferer).__name__}")
    budget = TrainingBudget(
        max_minutes=budget_minutes, plan_epochs=budget_minutes is not None, lr_scheduler=lr_scheduler, clock=clock
    )
    history = MetricLogger(loss_transform=_loss_value, evaluator=evaluator)
    # MONAI's amp autocasts on CUDA only; there it adds the GradScaler float16 gradients need
    amp = device.type == "cuda" and autocast_dtype == torch.float16
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        prepare_batch=prepare_batch,
        inferer=inferer,
        train_handlers=[
            LrScheduleHandler(lr_scheduler, epoch_level=False, print_lr=False),
            ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
            budget,
            history,
        ],
        amp=amp,
        amp_kwargs={"dtype": torch.float16} if amp else None,
        optim_set_to_none=True,
        decollate=False,
    )
    # MONAI registers additional_metrics only next to a key metric, which a loss is not (higher is
    # better there); the epoch log comes after the mean loss it prints
    Average(output_transform=_loss_value).attach(trainer, "train_loss")
    for handler in epoch_logs("train", log_every):
        handler.attach(trainer)
    return BaselineEngines(trainer, evaluator, budget, saver, history, lr_scheduler, inferer)


def build_baseline_engines(
    network: torch.nn.Module,
    train: MedMNISTArrays,
    val: MedMNISTArrays,
    save_dir: str | os.PathLike,
    device: torch.device,
    max_epochs: int | None,
    budget_minutes: float | None,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    augment: Callable[..., torch.Tensor] | None = None,
    balanced: bool = False,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    log_every: int = 1,
    clock: Callable[[], float] = time.monotonic,
) -> BaselineEngines:
    """Build the classifier baseline's trainer (cross-entropy) and validation evaluator; ``trainer.run()`` trains.

    The wiring is :func:`assemble_baseline_engines`'s; the key-metric saver writes the best validation
    AUC's state_dict to ``save_dir/model.pt``.
    """
    sampler = make_sampler(train.labels, balanced=balanced, seed=seed, distributed=False)
    loader = DataLoader(train.dataset(), batch_size=batch_size, sampler=sampler, num_workers=0, drop_last=False)
    saver = best_model_saver(save_dir, network)
    evaluator = build_evaluator(
        val, network, device, AutocastInferer(autocast_dtype), handlers=[*epoch_logs("validate", log_every), saver],
        validation=True,
    )
    generator = torch.Generator(device=device).manual_seed(seed)
    return assemble_baseline_engines(
        network, loader, evaluator, saver, torch.nn.CrossEntropyLoss(), ClassifierBatch(augment, generator), device,
        max_epochs=max_epochs, budget_minutes=budget_minutes, lr=lr, weight_decay=weight_decay,
        autocast_dtype=autocast_dtype, log_every=log_every, clock=clock,
    )
