"""The `fast` recipe's pieces on tiny synthetic data: whitening init, TTA, weight averaging, schedule,
alternating flips, and the experiment through the real CLI."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab.data.augment import alternating_flip, image_bits, normalize, translate, tta_logits
from cnnlab.data.prepared import load_manifest, load_split
from cnnlab.models.fast import FastNet
from cnnlab.stages import prepare, train
from cnnlab.tasks.optim import nesterov_sgd
from cnnlab.tasks.schedules import triangle

TINY = ["data=synthetic", "model=fast", "model.net.widths=[8,16,16]", "trainer.max_epochs=2",
        "train.batch_size=100", "tracking.enabled=false"]


@pytest.fixture
def synthetic(cfg):
    prepare.run(cfg("data=synthetic"))


def test_whitening_layer_whitens_the_data_and_stays_frozen(cfg, workdir, synthetic):
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.9, 0.8], [0, 0.3, 0.2], [0, 0, 0.1]])
    x = torch.einsum("nchw,cd->ndhw", torch.randn(200, 3, 12, 12), mix)  # correlated channels
    net = FastNet((3, 12, 12), 10, widths=[8, 8], whiten_eps=1e-6)
    net.init_from_data(x)
    out = net.whiten(x) - net.whiten.bias.view(1, -1, 1, 1)
    half = out[:, :12].transpose(0, 1).reshape(12, -1)  # the first half; the second is its negative
    cov = half @ half.T / half.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=1e-3)
    assert not net.whiten.weight.requires_grad
    # through training: set from the data in setup, then never changed by the optimizer
    train.run(cfg(*TINY, "trainer.max_epochs=1", "out_dir=w"))
    sd = torch.load(workdir / "w/model/last.ckpt", weights_only=True)["state_dict"]
    w = sd["net.whiten.weight"]
    fresh = FastNet((1, 28, 28), 10, widths=[8, 16, 16]).whiten.weight
    assert not torch.allclose(w, fresh)  # not the random init
    assert torch.allclose(w[:4], -w[4:])  # ±eigenvectors


def test_whitening_sample_is_drawn_from_the_whole_training_set(cfg, workdir, synthetic, monkeypatch):
    """A prepared image folder is stored class by class (the first 5,000 CIFAR-10 JPEGs are two classes): the
    whitening is set from a seeded sample of the training images, not from the first init_images."""
    seen = []
    monkeypatch.setattr(FastNet, "init_from_data", lambda self, images: seen.append(images))
    train.run(cfg(*TINY, "trainer.max_epochs=1", "model.net.init_images=40", "out_dir=s"))
    data = load_split("data/prepared/synthetic", "train")
    m = load_manifest("data/prepared/synthetic")
    every = normalize(data.images, torch.tensor(m["mean"]), torch.tensor(m["std"])).flatten(1)
    [sample] = seen
    idx = [int((every == img.flatten()).all(1).nonzero()[0]) for img in sample]
    assert len(set(idx)) == 40 and idx != list(range(40)) and max(idx) > len(every) // 2


def test_tta_averages_mirror_and_shifted_views():
    x = torch.rand(5, 3, 8, 8)
    f = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(7))
    f(x)
    out = tta_logits(f, x)
    assert out.shape == (5, 7)
    views = [x, translate(x, -1, -1), translate(x, 1, 1)]
    expect = sum(w * 0.5 * (f(v) + f(v.flip(3))) for w, v in zip([0.5, 0.25, 0.25], views))
    assert torch.allclose(out, expect, atol=1e-6)
    assert torch.equal(translate(x, 1, 1)[..., 1:, 1:], x[..., :-1, :-1])  # content moves down-right by 1 px
    ones = tta_logits(lambda v: torch.ones(len(v), 3), x)
    assert torch.allclose(ones, torch.ones(5, 3))  # the weights sum to 1


def test_alternating_flip_shows_both_views_over_two_epochs():
    imgs = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    bits = image_bits(imgs)
    x = imgs.float()
    e0, e1 = alternating_flip(x, bits, 0), alternating_flip(x, bits, 1)
    flipped0 = (e0 != x).flatten(1).any(1)
    assert 10 < int(flipped0.sum()) < 54  # about half each epoch
    assert torch.equal(e0, alternating_flip(x, bits, 2))  # same image, same epoch parity, same view
    assert torch.equal(torch.where(flipped0[:, None, None, None], e1, e0), x)  # the other view in epoch 1


def test_triangle_schedule_shape_and_sgd_groups():
    p, b = torch.nn.Parameter(torch.zeros(3, 3)), torch.nn.Parameter(torch.zeros(3))
    opt = nesterov_sgd([p, b], lr=11.5, batch_size=1024, momentum=0.85, weight_decay=0.0153, bias_lr_scale=64)
    base = 11.5 * 1024 / (1024 * (1 + 1 / 0.15))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([base, 64 * base])
    decay = [g["lr"] * g["weight_decay"] for g in opt.param_groups]  # per step: the same, lr-free
    assert decay == pytest.approx([0.0153 * 1024 / (1024 * (1 + 1 / 0.15))] * 2)
    sched, lrs = triangle(opt, total_steps=100, steps_per_epoch=10), []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"] / base)
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 23
    assert sched.lr_lambdas[0](100) == pytest.approx(0.07) and lrs[-1] == pytest.approx(0.082, abs=1e-3)
    assert all(a <= b for a, b in zip(lrs[:23], lrs[1:24]))
    assert all(a >= b for a, b in zip(lrs[23:], lrs[24:]))


def test_ema_weights_are_checkpointed_and_evaluated(cfg, workdir, synthetic):
    from cnnlab.tasks.classifier import Classifier

    train.run(cfg(*TINY, "train.average.mode=ema", "train.average.every=1", "train.average.decay=0.9",
                  "train.average.warmup_power=0", "out_dir=ema"))
    ck = torch.load(workdir / "ema/model/last.ckpt", weights_only=True)
    state = next(v for k, v in ck["callbacks"].items() if "WeightAveraging" in k)
    key = "head.weight"
    assert torch.equal(ck["state_dict"]["net." + key], state["avg"][key])  # the checkpoint holds the average
    assert not torch.allclose(state["avg"][key], state["raw"][key])  # which differs from the raw weights
    model = Classifier.load(workdir / "ema/model/last.ckpt")
    assert torch.equal(model.net.head.weight, state["avg"][key])  # and is what evaluate loads


def test_fast_experiment_trains_and_evaluates_through_cli(cli, workdir, synthetic):
    over = ["experiment=fast_fashion_mnist", "data=synthetic", "model.net.widths=[8,16,16]",
            "tracking.enabled=false"]
    cli("train", *over, "trainer.max_epochs=2", "train.batch_size=100", "out_dir=out")
    cli("evaluate", *over, "evaluate.gradcam=0", "out_dir=out")
    m = json.loads((workdir / "out/eval/metrics.json").read_text())
    assert m["num_samples"] == 200 and 0 <= m["accuracy"] <= 1
    cfg = (workdir / "out/model/config.yaml").read_text()
    assert "nesterov_sgd" in cfg and "triangle" in cfg and "tta: true" in cfg and "mode: lookahead" in cfg
