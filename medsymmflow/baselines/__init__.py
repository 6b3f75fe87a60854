"""Plain classifiers trained under the same data, budget and metrics as MedSymmFlow, for fair comparisons."""

from medsymmflow.baselines.resnet import (
    build_resnet18,
    predict_probabilities,
    train_resnet_baseline,
    write_softmax_predictions,
)

__all__ = ["build_resnet18", "predict_probabilities", "train_resnet_baseline", "write_softmax_predictions"]
