"""Ignite/MONAI engines: the SymmFlow trainer, the evaluator, the VAE trainer and the handlers the bundles wire in."""

from medsymmflow.engines.autoencoder import AutoencoderTrainer, VAEExport, kl_divergence
from medsymmflow.engines.distributed import is_main_process, wait_for_every_rank
from medsymmflow.engines.evaluator import SymmFlowEvaluator
from medsymmflow.engines.handlers import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    EMAUpdate,
    EpochSeedHandler,
    SafeCheckpointLoader,
    TrainingBudget,
)
from medsymmflow.engines.report import ClassificationReport, InferenceReport
from medsymmflow.engines.resume import StopOnSignal, resume_checkpoint
from medsymmflow.engines.segmentation import SymmFlowSegmentationEvaluator
from medsymmflow.engines.segmentation_report import SegmentationReport
from medsymmflow.engines.segmentation_writer import SEGMENTATION_INFERENCE_FILE, SegmentationMontage, SegmentationWriter
from medsymmflow.engines.trainer import SymmFlowTrainer

__all__ = [
    "AtomicCheckpointSaver",
    "AutoencoderTrainer",
    "AtomicDiskSaver",
    "ClassificationReport",
    "EMAUpdate",
    "EpochSeedHandler",
    "InferenceReport",
    "SafeCheckpointLoader",
    "SEGMENTATION_INFERENCE_FILE",
    "SegmentationMontage",
    "SegmentationReport",
    "SegmentationWriter",
    "StopOnSignal",
    "SymmFlowEvaluator",
    "SymmFlowSegmentationEvaluator",
    "SymmFlowTrainer",
    "TrainingBudget",
    "VAEExport",
    "is_main_process",
    "kl_divergence",
    "resume_checkpoint",
    "wait_for_every_rank",
]
