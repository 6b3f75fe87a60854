"""Metrics: ACC / AUC, uncertainty scores, selective prediction (accuracy-rejection, AURC, E-AURC), calibration, OOD AUROC, FID, CAS and synthesis scores.

Pure functions and torchmetrics classes over the arrays, images and callables they are given; report
writing and plots live in :mod:`medsymmflow.reports`.
"""

from medsymmflow.metrics.calibration import (
    ReliabilityBins,
    brier_score,
    calibration_metrics,
    distance_nll,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram_data,
    score_distances,
    softmax_from_distances,
)
from medsymmflow.metrics.selective import (
    DEFAULT_REJECTION_RATES,
    SelectivePredictionMetrics,
    accuracy_at_coverage,
    accuracy_rejection_curve,
    aurc,
    coverage_key,
    eaurc,
    optimal_aurc,
    risk_coverage_curve,
    selective_metrics,
)
from medsymmflow.metrics.uncertainty import (
    UNCERTAINTY_SCORES,
    UncertaintyScore,
    class_entropy,
    combined_uncertainty,
    distance_uncertainty,
    draw_spread,
    entropy_uncertainty,
    majority_vote,
    margin_uncertainty,
    score_distribution,
    spread_uncertainty,
    uncertainty_score,
)

__all__ = [
    "DEFAULT_REJECTION_RATES",
    "ReliabilityBins",
    "SelectivePredictionMetrics",
    "UNCERTAINTY_SCORES",
    "UncertaintyScore",
    "accuracy_at_coverage",
    "accuracy_rejection_curve",
    "aurc",
    "brier_score",
    "calibration_metrics",
    "class_entropy",
    "combined_uncertainty",
    "coverage_key",
    "distance_nll",
    "distance_uncertainty",
    "draw_spread",
    "eaurc",
    "entropy_uncertainty",
    "expected_calibration_error",
    "fit_temperature",
    "majority_vote",
    "margin_uncertainty",
    "negative_log_likelihood",
    "optimal_aurc",
    "reliability_diagram_data",
    "risk_coverage_curve",
    "score_distances",
    "score_distribution",
    "selective_metrics",
    "softmax_from_distances",
    "spread_uncertainty",
    "uncertainty_score",
]

# Generation quality (appended): offline FID and the classification accuracy score of generated images.
from medsymmflow.metrics.cas import classification_accuracy_score  # noqa: E402
from medsymmflow.metrics.fid import (  # noqa: E402
    InceptionFeatures,
    ReferenceFID,
    fid_score,
    find_inception_file,
    inception_available,
    load_inception,
)

__all__ += [
    "InceptionFeatures",
    "ReferenceFID",
    "classification_accuracy_score",
    "fid_score",
    "find_inception_file",
    "inception_available",
    "load_inception",
]

# Semantic image synthesis (appended): KID, real-vs-real, MS-SSIM / LPIPS diversity, mask consistency.
from medsymmflow.metrics.synthesis import (  # noqa: E402
    LPIPSWeightsMissing,
    SynthesisScores,
    fid_kid_of_features,
    lpips_diversity,
    lpips_weights_file,
    mask_consistency,
    ms_ssim_diversity,
    ms_ssim_settings,
    real_vs_real,
)

__all__ += [
    "LPIPSWeightsMissing",
    "SynthesisScores",
    "fid_kid_of_features",
    "lpips_diversity",
    "lpips_weights_file",
    "mask_consistency",
    "ms_ssim_diversity",
    "ms_ssim_settings",
    "real_vs_real",
]

# Segmentation (appended): mIoU / per-class IoU from one confusion matrix, pixel accuracy, distance uncertainty.
from medsymmflow.metrics.segmentation import (  # noqa: E402
    SegmentationMetrics,
    image_uncertainty,
    iou_from_confusion,
    mean_iou,
    pixel_accuracy,
)

__all__ += ["SegmentationMetrics", "image_uncertainty", "iou_from_confusion", "mean_iou", "pixel_accuracy"]

# Out-of-distribution detection (appended): AUROC of in-distribution against OOD scores, max-softmax.
from medsymmflow.metrics.ood import max_softmax_uncertainty, ood_auroc, ood_aurocs  # noqa: E402

__all__ += ["max_softmax_uncertainty", "ood_auroc", "ood_aurocs"]
