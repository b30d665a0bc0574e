"""Pure functions behind `cnnlab evaluate`: metrics from logits, figures and tables written atomically."""

from cnnlab.evaluation.metrics import classification_metrics, confusion_matrix, prediction_records
from cnnlab.evaluation.plots import (
    confident_mistakes_png,
    confusion_matrix_png,
    prediction_grid_png,
    training_curves_png,
)

__all__ = ["classification_metrics", "confusion_matrix", "prediction_records", "confident_mistakes_png",
           "confusion_matrix_png", "prediction_grid_png", "training_curves_png"]
