"""Classification metrics from logits, as plain JSON-serialisable numbers (torchmetrics does the counting)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics.functional.classification as tmf

from cnnlab.errors import UserError

ECE_BINS = 15  # the usual reliability-diagram resolution (Guo et al. 2017), so numbers compare with papers


def _check(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    # a checkpoint evaluated on a dataset with other classes is a user mistake, not a bug: say so in one line
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)}, labels {tuple(labels.shape)}: want [N,K] and [N]")
    if len(labels) == 0:
        raise UserError("no samples to evaluate")
    if logits.shape[1] != num_classes:
        raise UserError(f"model outputs {logits.shape[1]} classes but the data has {num_classes}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"labels must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}")


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, K] int64 counts; rows = true class, columns = predicted class."""
    _check(logits, labels, num_classes)
    return tmf.multiclass_confusion_matrix(logits.argmax(1), labels, num_classes).long()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """accuracy, top5_accuracy (K > 10 only), macro precision/recall/F1, per_class_accuracy, ece, loss,
    num_samples. per_class_accuracy is None for a class with no samples (JSON null; NaN is not JSON)."""
    k = len(class_names)
    _check(logits, labels, k)
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    preds, probs = logits.argmax(1), logits.softmax(1)
    # passed as labels/probs explicitly: torchmetrics guesses "logits or probs?" from the value range,
    # which logits that happen to lie in [0, 1] would fool
    kw = dict(num_classes=k, validate_args=False)
    cm = tmf.multiclass_confusion_matrix(preds, labels, **kw)
    support = cm.sum(1)
    out = {
        "num_samples": len(labels),
        # average="micro": the torchmetrics default is macro, which is not what "accuracy" means in a report
        "accuracy": tmf.multiclass_accuracy(preds, labels, average="micro", **kw).item(),
        # macro averages skip classes absent from both labels and predictions (torchmetrics >= 1.0)
        "macro_precision": tmf.multiclass_precision(preds, labels, average="macro", **kw).item(),
        "macro_recall": tmf.multiclass_recall(preds, labels, average="macro", **kw).item(),
        "macro_f1": tmf.multiclass_f1_score(preds, labels, average="macro", **kw).item(),
        "per_class_accuracy": {name: (cm[i, i] / support[i]).item() if support[i] else None
                               for i, name in enumerate(class_names)},
        "ece": tmf.multiclass_calibration_error(probs, labels, n_bins=ECE_BINS, norm="l1", **kw).item(),
        "loss": F.cross_entropy(logits, labels).item(),
    }
    if k > 10:  # top-5 of 10 classes is half the label space: uninformative, so only reported above 10
        out["top5_accuracy"] = tmf.multiclass_accuracy(probs, labels, average="micro", top_k=5, **kw).item()
    return out


def prediction_records(preds: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> list[dict]:
    """One {"actual", "predicted"} row per sample: DVC's `confusion` template counts rows itself
    (vega-lite aggregate op=count grouped by x, y), so pre-counted cells would all draw as 1."""
    return [{"actual": class_names[t], "predicted": class_names[p]}
            for t, p in zip(labels.tolist(), preds.tolist())]
