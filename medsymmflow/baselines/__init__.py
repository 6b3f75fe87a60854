"""Plain classifiers trained under the same data, budget and metrics as MedSymmFlow, for fair comparisons."""

from medsymmflow.baselines.classifier import load_resnet_classifier
from medsymmflow.baselines.resnet import (
    build_resnet18,
    predict_probabilities,
    train_resnet_baseline,
    write_softmax_predictions,
)

__all__ = [
    "build_resnet18",
    "load_resnet_classifier",
    "predict_probabilities",
    "train_resnet_baseline",
    "write_softmax_predictions",
]
