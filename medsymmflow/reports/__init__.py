"""Report writing: the predictions table, the selective-prediction report and its plots (above :mod:`medsymmflow.metrics`, below the engines)."""

from medsymmflow.reports.predictions import (
    PREDICTIONS_FILE,
    REQUIRED_COLUMNS,
    SCHEMA_COLUMN,
    SCHEMA_VERSION,
    VAL_PREDICTIONS_FILE,
    Predictions,
    load_predictions,
    predictions_columns,
    resolve_predictions_path,
    write_predictions,
)

__all__ = [
    "PREDICTIONS_FILE",
    "REQUIRED_COLUMNS",
    "SCHEMA_COLUMN",
    "SCHEMA_VERSION",
    "VAL_PREDICTIONS_FILE",
    "Predictions",
    "load_predictions",
    "predictions_columns",
    "resolve_predictions_path",
    "write_predictions",
]

# Segmentation (appended): metrics JSON per step count, per-class IoU and per-image tables.
from medsymmflow.reports.segmentation import (  # noqa: E402
    SEGMENTATION_METRICS_FILE,
    SEGMENTATION_PER_CLASS_FILE,
    SEGMENTATION_PER_IMAGE_FILE,
    segmentation_payload,
    write_segmentation_report,
)

__all__ += [
    "SEGMENTATION_METRICS_FILE",
    "SEGMENTATION_PER_CLASS_FILE",
    "SEGMENTATION_PER_IMAGE_FILE",
    "segmentation_payload",
    "write_segmentation_report",
]
