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
