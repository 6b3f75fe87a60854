"""Plain classifiers trained on the same engines, budget and metrics as MedSymmFlow, for fair comparisons."""

from medsymmflow.baselines.classifier import load_resnet_classifier
from medsymmflow.baselines.engines import build_baseline_engines
from medsymmflow.baselines.resnet import build_resnet18, predict_probabilities, train_resnet_baseline

__all__ = [
    "build_baseline_engines",
    "build_resnet18",
    "load_resnet_classifier",
    "predict_probabilities",
    "train_resnet_baseline",
]
