"""Ignite/MONAI engines: the SymmFlow trainer, the evaluator and the handlers the bundles wire in."""

from medsymmflow.engines.evaluator import SymmFlowEvaluator
from medsymmflow.engines.handlers import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    EpochSeedHandler,
    RunInfo,
    atomic_write,
    load_checkpoint,
)
from medsymmflow.engines.report import ClassificationReport
from medsymmflow.engines.trainer import SymmFlowTrainer

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "ClassificationReport",
    "EpochSeedHandler",
    "RunInfo",
    "SymmFlowEvaluator",
    "SymmFlowTrainer",
    "atomic_write",
    "load_checkpoint",
]
