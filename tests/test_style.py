"""Style transfer: tiny images (48 px), a few evaluations, CPU, offline (Lite0 weights from a pip package)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.errors import UserError
from cnnlab.stages.style import run
from cnnlab.style import Settings, feature_net, stylise
from cnnlab.style.features import FeatureNet, swag, vgg_names
from cnnlab.style.images import load_image, rgb_to_yuv
from cnnlab.style.losses import blend_grams

FAST = ("style.size=48", "style.iterations=4", "tracking.enabled=false")
LAYERS = {"content_layers": ["blocks.2"], "style_layers": ["bn1", "blocks.1", "blocks.2"]}


@pytest.fixture(scope="module")
def net():
    return feature_net("efficientnet_lite0", LAYERS["content_layers"] + LAYERS["style_layers"])


@pytest.fixture(scope="module")
def images():
    return load_image("skimage:astronaut", 48, 32)[0], load_image("skimage:hubble_deep_field", 48, 32)[0]


def test_style_loss_falls_and_multiscale(net, images):
    content, style = images
    r = stylise(net, content, [style], [1.0], Settings(**LAYERS, iterations=12, scales=[0.7, 1.0]),
                torch.device("cpu"))
    first = [h for h in r.history if h["scale"] == 48]
    assert len(r.history) == 24 and {h["scale"] for h in r.history} == {34, 48}  # coarse then fine
    assert first[-1]["style"] < 0.7 * first[0]["style"]
    assert r.image.shape == (3, 48, 48) and 0 <= r.image.min() and r.image.max() <= 1


def test_adam_noise_init_is_seeded(net, images):
    s = Settings(**LAYERS, iterations=3, init="noise", optimizer="adam", seed=3)
    a, b = (stylise(net, *images[:1], [images[1]], [1.0], s, torch.device("cpu")).image for _ in range(2))
    assert torch.equal(a, b)


def test_preserve_color_keeps_content_chroma(net, images):
    content, style = images
    s = Settings(**LAYERS, iterations=6, style_weight=1e4, preserve_color=True)
    out = stylise(net, content, [style], [1.0], s, torch.device("cpu")).image

    def chroma(img):
        return rgb_to_yuv(img)[1:]

    assert (chroma(out) - chroma(content)).abs().mean() < 0.01  # only gamut clipping moves chroma
    plain = stylise(net, content, [style], [1.0], Settings(**LAYERS, iterations=6, style_weight=1e4),
                    torch.device("cpu")).image
    assert (chroma(plain) - chroma(content)).abs().mean() > 3 * (chroma(out) - chroma(content)).abs().mean()


def test_style_weights_blend(net, images, cfg, workdir):
    g1, g2 = torch.rand(1, 4, 4), torch.rand(1, 4, 4)
    assert torch.allclose(blend_grams([g1, g2], [0.25, 0.75]), 0.25 * g1 + 0.75 * g2)
    one = run(cfg(*FAST, "style.style=[skimage:gravel]", "style.name=one"))
    two = run(cfg(*FAST, "style.style=[skimage:gravel,skimage:brick]", "style.style_weights=[2,0]",
                  "style.name=two"))
    assert one["style_loss"] == two["style_loss"]  # a weight of 0 removes brick exactly
    a, b = (np.asarray(Image.open(workdir / f"out/{n}/result.png")) for n in ("one", "two"))
    assert np.array_equal(a, b)
    with pytest.raises(UserError, match="one per style image"):
        run(cfg(*FAST, "style.style=[skimage:gravel,skimage:brick]", "style.style_weights=[1]"))


def test_stage_files_and_metrics(cfg, workdir):
    m = run(cfg(*FAST, "style.softmax_features=true", "style.content=mpl:grace_hopper"))
    out = workdir / "out/grace_hopper_immunohistochemistry"
    assert {p.name for p in out.iterdir()} == {"result.png", "panel.png", "losses.csv", "losses.png",
                                               "metrics.json", "run.json", "config.yaml"}
    assert json.loads((out / "metrics.json").read_text()) == m and m["iterations"] == 4
    assert {"content_loss", "style_loss", "tv_loss", "time_s"} <= m.keys()
    # grace_hopper is 512×600
    assert Image.open(out / "result.png").size == (m["width"], m["height"]) == (41, 48)
    assert len((out / "losses.csv").read_text().splitlines()) == 5
    assert json.loads((out / "run.json").read_text())["content"]["sha256"]


def test_swag_transform(net, images):
    f = torch.randn(2, 3, 4, 5) * 10
    s = swag(f, 1.0)
    assert torch.allclose(s.sum((1, 2, 3)), torch.full((2,), 60.0)) and (s > 0).all()
    n = feature_net("efficientnet_lite0", ["bn1", "blocks.1"], softmax=True, temperature="auto")
    n.calibrate(images[0][None])
    assert set(n.temperature) == {"bn1", "blocks.1"} and n.temperature["blocks.1"] > 2  # Lite0: std ~10


def test_vgg_names_and_truncation():
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["E"])  # VGG19's trunk without the 120M-parameter classifier
    names = vgg_names(features)
    assert [names[k] for k in ("conv4_2", "relu5_1", "pool5")] == [f"features.{i}" for i in (21, 29, 36)]
    net = FeatureNet(_holder(features), "vgg19", [0.5] * 3, [0.25] * 3, ["relu1_1", "conv4_2"])
    assert len(net.body) == 22  # cut right after conv4_2
    with pytest.raises(UserError, match=r"unknown vgg19 layer\(s\) conv6_1; valid: conv1_1, relu1_1"):
        FeatureNet(_holder(features), "vgg19", [0.5] * 3, [0.25] * 3, ["conv6_1"])


def _holder(features):
    m = torch.nn.Module()
    m.features = features
    return m


@pytest.mark.parametrize("overrides, message", [
    (("style.content=missing.jpg",), "image missing.jpg does not exist"),
    (("style.content=skimage:eagle",), "not one of scikit-image's bundled samples"),
    (("style.style_layers=[blocks.9]",), r"efficientnet_lite0 layer\(s\) blocks.9; valid: conv_stem, bn1"),
    (("style.network=resnet18",), "use efficientnet_lite0 or vgg19"),
    (("style.init=photo",), "use content, style or noise"),
    (("style.network=vgg19", "style.weights_path=nowhere.pth"), "weights file nowhere.pth does not exist"),
])
def test_bad_config_is_one_line(cfg, overrides, message):
    with pytest.raises(UserError, match=message):
        run(cfg(*FAST, *overrides))


def test_bad_and_odd_images(workdir, caplog):
    (workdir / "junk.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image junk.png"):
        load_image("junk.png", 48, 32)
    rgba = np.zeros((40, 60, 4), np.uint8)  # fully transparent black → white
    Image.fromarray(rgba).save(workdir / "rgba.png")
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(workdir / "tiny.png")
    Image.fromarray((np.arange(60 * 40).reshape(40, 60) * 20).astype(np.uint16)).save(workdir / "grey16.png")
    with caplog.at_level(logging.INFO):
        img, _ = load_image("rgba.png", 48, 32)
        assert img.shape == (3, 32, 48) and img.min() == 1.0
        tiny, _ = load_image("tiny.png", 48, 32)
        assert tiny.shape == (3, 48, 48) and "only 8×8 px" in caplog.text
        grey, _ = load_image("grey16.png", 48, 32)
        assert grey.shape == (3, 32, 48) and torch.equal(grey[0], grey[2]) and grey.max() > 0.9


def test_size_clamped(cfg, caplog):
    with caplog.at_level(logging.WARNING):
        m = run(cfg("style.size=8", "style.iterations=1", "tracking.enabled=false"))
    assert max(m["width"], m["height"]) == 32 and "style.size=8 is outside [style.min_size=32" in caplog.text


def test_cli_two_styles_preserve_color_tracked(cli, workdir):
    cli("style", "style.size=48", "style.iterations=5", "style.style=[skimage:gravel,skimage:brick]",
        "style.preserve_color=true", "style.name=demo", "out_dir=out")
    out = workdir / "out/demo"
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 5
    run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]
    from mlflow import MlflowClient

    r = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(run_id)
    assert r.data.tags["stage"] == "style" and r.info.status == "FINISHED" and "style_loss" in r.data.metrics
    p = cli("style", "style.content=nope.png", check=False)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["cnnlab style: error: image nope.png does not exist"]


def test_runaway_restarts_from_best(net, images):
    s = Settings(**LAYERS, iterations=6, optimizer="adam", lr=5.0, style_weight=1e4)  # lr 5: steps overshoot
    r = stylise(net, images[0], [images[1]], [1.0], s, torch.device("cpu"))
    assert r.restarts >= 1 and r.final["total"] == pytest.approx(min(h["total"] for h in r.history), rel=1e-4)
