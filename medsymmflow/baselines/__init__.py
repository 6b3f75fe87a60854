"""Plain classifiers and segmenters trained on the same engines, budget and metrics as MedSymmFlow, for fair comparisons."""

from medsymmflow.baselines.classifier import load_resnet_classifier
from medsymmflow.baselines.engines import assemble_baseline_engines, build_baseline_engines
from medsymmflow.baselines.majority import majority_class_map, score_majority_floor
from medsymmflow.baselines.resnet import build_resnet18, predict_probabilities, train_resnet_baseline
from medsymmflow.baselines.segmentation import (
    MaskedDiceCELoss,
    build_basic_unet,
    build_segmentation_engines,
    load_segmentation_baseline,
    load_segmentation_split,
    load_segmenter,
    train_segmentation_baseline,
)

__all__ = [
    "MaskedDiceCELoss",
    "assemble_baseline_engines",
    "build_baseline_engines",
    "build_basic_unet",
    "build_resnet18",
    "build_segmentation_engines",
    "load_resnet_classifier",
    "load_segmentation_baseline",
    "load_segmentation_split",
    "load_segmenter",
    "majority_class_map",
    "predict_probabilities",
    "score_majority_floor",
    "train_resnet_baseline",
    "train_segmentation_baseline",
]
