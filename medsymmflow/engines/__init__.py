"""Ignite/MONAI engines: the SymmFlow trainer, the evaluator and the handlers the bundles wire in."""

from medsymmflow.engines.evaluator import SymmFlowEvaluator
from medsymmflow.engines.handlers import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    EMAUpdate,
    EpochSeedHandler,
    RunInfo,
    SafeCheckpointLoader,
    TrainingBudget,
    atomic_write,
    load_checkpoint,
)
from medsymmflow.engines.report import ClassificationReport, InferenceReport
from medsymmflow.engines.trainer import SymmFlowTrainer

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "ClassificationReport",
    "EMAUpdate",
    "EpochSeedHandler",
    "InferenceReport",
    "RunInfo",
    "SafeCheckpointLoader",
    "SymmFlowEvaluator",
    "SymmFlowTrainer",
    "TrainingBudget",
    "atomic_write",
    "load_checkpoint",
]
