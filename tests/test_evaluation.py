"""Metrics against hand-computed values; every writer yields a valid PNG/CSV and leaves no temp file."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from cnnlab.errors import UserError
from cnnlab.evaluation import (
    classification_metrics,
    confident_mistakes_png,
    confusion_matrix,
    confusion_matrix_png,
    prediction_grid_png,
    prediction_records,
    training_curves_png,
)
from cnnlab.io import write_csv

AB = ["a", "b"]


def onehot_logits(preds: list[int], k: int, margin: float = 20.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), k).float() * margin


def test_two_class_by_hand():
    # preds 0 0 1 1 vs labels 0 1 1 1: class a P=1/2 R=1, class b P=1 R=2/3
    logits = torch.tensor([[2.0, 0], [2, 0], [0, 2], [0, 2]])
    m = classification_metrics(logits, torch.tensor([0, 1, 1, 1]), AB)
    assert m["num_samples"] == 4 and m["accuracy"] == pytest.approx(0.75)
    assert m["macro_precision"] == pytest.approx(0.75)
    assert m["macro_recall"] == pytest.approx(5 / 6)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["per_class_accuracy"] == pytest.approx({"a": 1.0, "b": 2 / 3})
    # each right sample costs log(1+e^-2), the wrong one log(1+e^2) = that + 2; mean = that + 2/4
    assert m["loss"] == pytest.approx(math.log1p(math.exp(-2)) + 0.5)
    assert "top5_accuracy" not in m
    assert json.loads(json.dumps(m, allow_nan=False)) == m  # plain floats/ints, strict JSON
    assert confusion_matrix(logits, torch.tensor([0, 1, 1, 1]), 2).tolist() == [[1, 0], [1, 2]]  # rows = true


def test_perfect_classifier_and_top5_rule():
    labels = torch.arange(11).repeat(3)
    m = classification_metrics(onehot_logits(labels.tolist(), 11), labels, [str(i) for i in range(11)])
    assert m["accuracy"] == m["top5_accuracy"] == 1.0 and m["macro_f1"] == pytest.approx(1.0)  # f32 mean
    assert m["ece"] == pytest.approx(0, abs=1e-6) and m["loss"] == pytest.approx(0, abs=1e-6)
    ten = classification_metrics(torch.randn(5, 10), torch.arange(5), list("abcdefghij"))
    assert "top5_accuracy" not in ten
    # top-5 by hand: the true class ranked 6th of 11 misses, 5th hits
    logits = torch.arange(11.0).flip(0).repeat(2, 1)  # class 0 highest … class 10 lowest
    assert classification_metrics(logits, torch.tensor([4, 5]), list("abcdefghijk"))["top5_accuracy"] == 0.5


def test_ece_calibrated_vs_overconfident():
    probs = torch.tensor([[0.75, 0.25]] * 4)  # says 75 %, right 3 times in 4: calibrated
    ece = classification_metrics(probs.log(), torch.tensor([0, 0, 0, 1]), AB)["ece"]
    assert ece == pytest.approx(0, abs=1e-6)
    # ~100 % sure, right half the time: ECE ≈ 0.5
    ece = classification_metrics(onehot_logits([0] * 4, 2), torch.tensor([0, 1, 0, 1]), AB)["ece"]
    assert ece == pytest.approx(0.5)


def test_class_without_samples_is_null_and_bad_input_is_user_error():
    m = classification_metrics(onehot_logits([0, 0], 3), torch.tensor([0, 0]), ["a", "b", "c"])
    assert m["per_class_accuracy"] == {"a": 1.0, "b": None, "c": None}
    json.dumps(m, allow_nan=False)
    with pytest.raises(UserError, match="3 classes"):
        classification_metrics(torch.zeros(2, 3), torch.tensor([0, 1]), AB)
    with pytest.raises(UserError, match="labels"):
        classification_metrics(torch.zeros(2, 2), torch.tensor([0, 2]), AB)


def test_prediction_records_are_what_dvc_confusion_counts():
    rows = prediction_records(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), AB)
    assert rows == [{"actual": "a", "predicted": "a"}, {"actual": "a", "predicted": "b"},
                    {"actual": "b", "predicted": "b"}]


def png_ok(path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
        return im.size


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.arange(12) % 3
    probs = torch.softmax(torch.randn(12, 3, generator=g) * 3, 1)
    return images, probs, labels


def test_png_writers(tmp_path, batch):
    images, probs, labels = batch
    names = ["cat", "dog", "horse"]
    preds = probs.argmax(1)
    cm = confusion_matrix(probs.log(), labels, 3)
    confusion_matrix_png(cm, names, tmp_path / "cm.png")
    confusion_matrix_png(cm, names, tmp_path / "cm_counts.png", normalize=False)
    confusion_matrix_png(torch.randint(0, 50, (30, 30)), [f"c{i}" for i in range(30)], tmp_path / "cm30.png")
    prediction_grid_png(images, preds, labels, names, tmp_path / "grid.png", ncols=5, title="test")
    prediction_grid_png(images[:, :1], preds, labels, names, tmp_path / "gray.png")  # C=1 → grayscale
    confident_mistakes_png(images, probs, labels, names, tmp_path / "mistakes.png", n=4)
    confident_mistakes_png(images, torch.eye(3)[labels], labels, names, tmp_path / "none.png")  # no mistakes
    training_curves_png([{"epoch": 0, "train/loss": 2.0, "train/acc": 0.3},
                         {"epoch": 1, "train/loss": 1.5, "val/loss": 1.6, "train/acc": 0.5, "val/acc": 0.45},
                         {"epoch": 2, "train/loss": 1.2, "val/loss": None, "lr": 0.1}],
                        tmp_path / "curves.png")
    training_curves_png([], tmp_path / "empty_curves.png")
    for p in tmp_path.glob("*.png"):
        png_ok(p)
    assert not list(tmp_path.glob(".*.tmp"))


def test_writer_failure_leaves_nothing(tmp_path, batch, monkeypatch):
    images, probs, labels = batch
    (tmp_path / "cm.png").write_bytes(b"old")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        confusion_matrix_png(torch.eye(3, dtype=torch.long), ["x", "y", "z"], tmp_path / "cm.png")
    with pytest.raises(RuntimeError):
        prediction_grid_png(images, labels, labels, ["x", "y", "z"], tmp_path / "grid.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png"]  # old file kept, no temp left
    assert (tmp_path / "cm.png").read_bytes() == b"old"


def test_write_csv_union_header(tmp_path):
    write_csv([{"epoch": 0, "train/loss": 1.0}, {"epoch": 1, "val/loss": 2.0, "train/loss": 0.5}],
              tmp_path / "h.csv")
    with open(tmp_path / "h.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["epoch", "train/loss", "val/loss"], ["0", "1.0", ""], ["1", "0.5", "2.0"]]
