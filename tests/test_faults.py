"""Hostile inputs: every fault a user can cause is one UserError line naming the file or key, never a
traceback, a NaN checkpoint, a crash in a later stage or a minute of retries."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint

from cnnlab.data.loader import PreparedData
from cnnlab.data.prepared import load_manifest, save_split
from cnnlab.errors import UserError
from cnnlab.io import atomic_dir
from cnnlab.models.pretrained import TransferNet, load_pretrained
from cnnlab.stages import prepare, summary
from cnnlab.tasks.checkpoint import check_checkpoint
from cnnlab.tasks.classifier import Classifier


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture
def data(cfg, workdir) -> Path:
    prepare.run(cfg("data=synthetic"))
    return workdir / "data/prepared/synthetic"


def fit(data: Path, out: Path, epochs: int, blow_up_epoch: int | None = None, monkeypatch=None,
        resume: bool = False) -> pl.Trainer:
    """What the train stage does, minus MLflow: best/last checkpoints saved at train-epoch end, after
    validation. blow_up_epoch: the weights turn NaN after that epoch's last optimizer step (whose training
    loss is still finite)."""
    m = load_manifest(data)
    model = Classifier(net={"_target_": "cnnlab.models.seed.SeedMnistCNN"}, in_shape=tuple(m["image_shape"]),
                       num_classes=m["num_classes"], class_names=m["classes"], mean=m["mean"], std=m["std"],
                       optimizer=partial(torch.optim.Adam), lr=1e-3)
    if blow_up_epoch is not None:
        def on_train_batch_end(self, outputs, batch, batch_idx):
            if self.current_epoch == blow_up_epoch and batch_idx == self.trainer.num_training_batches - 1:
                with torch.no_grad():
                    next(self.net.parameters()).fill_(float("nan"))
        monkeypatch.setattr(Classifier, "on_train_batch_end", on_train_batch_end, raising=False)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(out),
                         callbacks=[ModelCheckpoint(dirpath=out, filename="best", monitor="val/acc",
                                                    mode="max", save_last=True, save_on_train_epoch_end=True,
                                                    enable_version_counter=False)])
    trainer.fit(model, datamodule=PreparedData(str(data), 128, 512),
                ckpt_path=out / "last.ckpt" if resume else None)
    return trainer


# --- 1. checkpoint loading ---------------------------------------------------------------------------------


class Evil:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_checkpoint_loading_refuses_every_bad_file_in_one_line(data, workdir):
    fit(data, workdir / "run", epochs=1)
    good = workdir / "run/best.ckpt"
    model = Classifier.load(good)
    assert not model.training and model.device.type == "cpu"
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    ckpt = torch.load(good, weights_only=True)

    def variant(name: str, **changes) -> dict:
        c = {**ckpt, **changes}
        torch.save(c, workdir / name)
        return c

    (workdir / "text.ckpt").write_text("not a checkpoint\n")
    (workdir / "truncated.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with zipfile.ZipFile(workdir / "zip.ckpt", "w") as z:
        z.writestr("readme.txt", "hello")
    torch.save({"w": torch.zeros(3)}, workdir / "tensors.ckpt")
    torch.save({"state_dict": Evil()}, workdir / "evil.ckpt")
    (workdir / "evil_pickle.ckpt").write_bytes(pickle.dumps(Evil()))
    variant("foreign.ckpt", hyper_parameters={"lr": 0.1})
    # Hydra would call builtins.open(victim, "w") while building the net: weights_only alone does not stop it
    victim = workdir / "victim.txt"
    victim.write_text("precious")
    variant("hydra.ckpt", hyper_parameters={**ckpt["hyper_parameters"], "net": {
        "_target_": "cnnlab.models.seed.SeedMnistCNN", "hidden": {"_target_": "builtins.open",
                                                                   "_args_": [str(victim), "w"]}}})
    variant("other_target.ckpt",
            hyper_parameters={**ckpt["hyper_parameters"], "net": {"_target_": "os.getcwd"}})
    sd = dict(ckpt["state_dict"])
    sd.pop(next(iter(sd)))
    variant("missing_weight.ckpt", state_dict=sd)
    variant("nan.ckpt", state_dict={k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                                    for k, v in ckpt["state_dict"].items()})
    cases = {
        "text.ckpt": "not a PyTorch file",
        "truncated.ckpt": "truncated",
        "zip.ckpt": "a zip archive but not a PyTorch checkpoint",
        "tensors.ckpt": "not a Lightning checkpoint: no state_dict",
        "evil.ckpt": "refused",
        "evil_pickle.ckpt": "refused",
        "foreign.ckpt": "not of a cnnlab Classifier",
        "hydra.ckpt": "net.hidden._target_, net.hidden._args_: refused",
        "other_target.ckpt": "_target_ 'os.getcwd': refused",
        "missing_weight.ckpt": "its weights do not fit its network: 1 missing",
        "nan.ckpt": "non-finite weights",
    }
    for name, reason in cases.items():
        with pytest.raises(UserError) as e:
            Classifier.load(workdir / name)
        msg = one_line(e)
        assert msg.startswith(f"{workdir / name} is not a valid cnnlab checkpoint ("), msg
        assert reason in msg, msg
    assert not (workdir / "pwned").exists() and victim.read_text() == "precious"
    with pytest.raises(UserError) as e:
        Classifier.load(workdir / "nope.ckpt")
    assert one_line(e) == f"{workdir / 'nope.ckpt'}: no such checkpoint"


def test_corrupt_last_ckpt_on_resume_names_the_fallback(data, workdir):
    run = workdir / "run"
    fit(data, run, epochs=1)
    check_checkpoint(run / "last.ckpt")  # a good one passes
    good = (run / "last.ckpt").read_bytes()
    (run / "last.ckpt").write_bytes(good[:1000])  # a kill mid-copy, a full disk
    with pytest.raises(UserError) as e:
        check_checkpoint(run / "last.ckpt")
    assert one_line(e) == (f"cannot resume: {run / 'last.ckpt'} is not a valid cnnlab checkpoint (truncated: "
                           f"the zip archive has no end); resume from {run / 'best.ckpt'} by copying it to "
                           f"{run / 'last.ckpt'}, or train again without resume=true")
    (run / "best.ckpt").write_text("garbage")  # no good fallback: not suggested
    with pytest.raises(UserError, match=r"no end\); train again without resume=true$"):
        check_checkpoint(run / "last.ckpt")
    c = torch.load(io.BytesIO(good), weights_only=True)
    del c["optimizer_states"]  # a weights-only file: Lightning cannot continue from it
    torch.save(c, run / "last.ckpt")
    with pytest.raises(UserError, match="no training state to resume: lacks optimizer_states"):
        check_checkpoint(run / "last.ckpt")


def test_transfer_checkpoint_loads_without_fetching_pretrained_weights(workdir, monkeypatch):
    import torchvision.models as tvm

    net = {"_target_": "cnnlab.models.pretrained.TransferNet", "backbone": "resnet18", "weights": None,
           "image_size": 32}
    model = Classifier(net=net, in_shape=(3, 32, 32), num_classes=3, class_names=["a", "b", "c"],
                       mean=[0.5] * 3, std=[0.5] * 3)
    hp = {**model.hparams, "net": {**net, "weights": "DEFAULT"}}  # as trained: from ImageNet weights
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hp}, workdir / "t.ckpt")

    def offline(self, *a, **k):
        raise AssertionError("the checkpoint holds every weight: nothing to fetch")
    monkeypatch.setattr(tvm.WeightsEnum, "get_state_dict", offline)
    loaded = Classifier.load(workdir / "t.ckpt")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))


# --- 2. non-finite weights ------------------------------------------------------------------------------


def test_blow_up_on_last_step_stops_and_keeps_the_last_good_checkpoint(data, workdir, monkeypatch):
    run = workdir / "run"
    with pytest.raises(UserError) as e:
        fit(data, run, epochs=2, blow_up_epoch=1, monkeypatch=monkeypatch)
    assert one_line(e).startswith("non-finite validation loss in epoch 2 ")  # epochs count from 1
    assert str(e.value).endswith(f"(the last good checkpoint {run / 'last.ckpt'} is kept)")
    for f in ("last.ckpt", "best.ckpt"):  # the first epoch's (Lightning's epoch 0), finite
        assert torch.load(run / f, weights_only=True)["epoch"] == 0
        Classifier.load(run / f)
    with pytest.raises(UserError) as e:  # resumed, it saves nothing new but keeps what it resumed from
        fit(data, run, epochs=2, blow_up_epoch=1, monkeypatch=monkeypatch, resume=True)
    assert one_line(e).endswith(f"(the last good checkpoint {run / 'last.ckpt'} is kept)")


def test_blow_up_in_first_epoch_saves_nothing(data, workdir, monkeypatch):
    run = workdir / "run"
    with pytest.raises(UserError) as e:
        fit(data, run, epochs=1, blow_up_epoch=0, monkeypatch=monkeypatch)
    assert one_line(e).startswith("non-finite validation loss in epoch 1 ")
    assert str(e.value).endswith("(no checkpoint was saved)")
    assert not list(run.glob("*.ckpt"))


def test_nonfinite_weights_are_never_saved(data, workdir):
    run = workdir / "run"
    trainer = fit(data, run, epochs=1)
    with torch.no_grad():
        next(trainer.lightning_module.parameters()).fill_(float("inf"))
    with pytest.raises(UserError) as e:
        trainer.save_checkpoint(workdir / "x.ckpt")
    assert one_line(e).startswith("non-finite weights in epoch")
    assert f"the last good checkpoint {run / 'last.ckpt'} is kept" in str(e.value)
    assert not (workdir / "x.ckpt").exists()


# --- 3. odd data ----------------------------------------------------------------------------------------


def image_tree(root: Path, classes: list[bytes], n: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        d = os.path.join(os.fsencode(root / "train"), c)
        os.makedirs(d)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                os.fsdecode(os.path.join(d, f"{i}.png".encode())))
    return root


def folder(cfg, root: Path, *extra: str):
    return cfg("data=image_folder", f"data.root={root}", "data.image_size=8", "data.val_size=2",
               "data.test_size=2", "data.num_workers=1", *extra)


def test_non_utf8_class_folder_is_refused_at_prepare(cfg, workdir):
    root = image_tree(workdir / "imgs", [b"caf\xe9", b"tea"])
    with pytest.raises(UserError) as e:
        prepare.run(folder(cfg, root))
    assert one_line(e).startswith(f"class folder b'caf\\xe9' in {root / 'train'} is not a printable UTF-8")
    assert not (workdir / "data/prepared/image_folder").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("data.test_size=8",
     "data.test_size=8 must be smaller than the 8 training images left after data.val_size=2"),
    ("data.image_size=0", "data.image_size=0 must be an integer >= 1"),
    ("data.channels=2", "data.channels=2: use 1 (grayscale) or 3 (RGB)"),
    ("data.val_size=0", "data.val_size=0 must be an integer >= 1"),
])
def test_image_folder_values_name_their_key(cfg, workdir, override, message):
    root = image_tree(workdir / "imgs", [b"cat", b"dog"])
    with pytest.raises(UserError) as e:
        prepare.run(folder(cfg, root, override))
    assert one_line(e) == message


@pytest.mark.parametrize(("override", "message"), [
    ("data.channels=2", "data.channels=2: use 1 (grayscale) or 3 (RGB)"),
    ("data.val_size=0", "data.val_size=0 must be an integer >= 1"),
    ("data.image_size=0", "data.image_size=0 must be an integer >= 1"),
])
def test_synthetic_values_name_their_key(cfg, override, message):
    with pytest.raises(UserError) as e:
        prepare.run(cfg("data=synthetic", override))
    assert one_line(e) == message


def test_prepared_data_without_val_images_is_refused(data, workdir):
    save_split(data / "val.safetensors", np.zeros((0, 1, 28, 28), np.uint8), np.zeros(0, np.int64))
    dm = PreparedData(str(data), 64, 64)
    with pytest.raises(UserError, match=r"val.safetensors holds no images; run `cnnlab prepare` again"):
        dm.setup("fit")


def test_atomic_dir_removes_what_a_killed_writer_left(workdir):
    out = workdir / "prepared/synthetic"
    # a real kill -9 inside the temporary folder
    code = ("import os, sys; from cnnlab.io import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'train.safetensors').write_bytes(bytes(10**6)); os.kill(os.getpid(), 9)")
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, check=False)
    assert p.returncode == -signal.SIGKILL
    left = [p.name for p in out.parent.glob(".synthetic.*.tmp")]
    assert len(left) == 1
    dead = out.parent / ".synthetic.old-4194305"  # above Linux's pid_max: no such process
    alive = out.parent / ".synthetic.old-1"  # init's: a living process's, kept
    keep = [out.parent / ".synthetic.v2.123-abcd1234.tmp", out.parent / ".synthetic-b.123-abcd1234.tmp",
            out.parent / f".synthetic.{os.getpid()}-abcd1234.tmp", alive]  # other targets', a live writer's
    for d in (dead, *keep):
        d.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".synthetic")) == sorted(
        k.name for k in keep)
    assert json.loads((out / "manifest.json").read_text()) == {}
    for k in keep:
        shutil.rmtree(k)


# --- 4. offline model sources ---------------------------------------------------------------------------


def test_random_init_only_when_asked_for(cfg, capsys):
    out = summary.run(cfg("model=torchvision", "model.net.weights=null"))  # no weights needed
    assert out["total_params"] > 11_000_000 and "Total params" in capsys.readouterr().out
    net = TransferNet((3, 32, 32), 4, backbone="timm/resnet18", weights=None, image_size=32)
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(UserError, match="weights=null asks for random init.*drop one"):
        load_pretrained("resnet18", weights=None, weights_path="w.pth")
    with pytest.raises(UserError, match=r"model.net.weights='V9' is not a weights name of resnet18: use "
                                        r"DEFAULT, IMAGENET1K_V1 or null"):
        load_pretrained("resnet18", weights="V9")
    with pytest.raises(UserError, match="names torchvision weights; timm/resnet18 takes DEFAULT or null"):
        load_pretrained("timm/resnet18", weights="IMAGENET1K_V1")


def test_timm_offline_fails_fast_and_clearly(cli, workdir):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(workdir / "hf"), "HTTPS_PROXY": "",
           "https_proxy": "", "ALL_PROXY": "", "all_proxy": ""}  # port 9: nothing listens, refused at once
    t0 = time.perf_counter()
    p = cli("summary", "model=timm", check=False, env=env)
    assert p.returncode == 2 and time.perf_counter() - t0 < 30  # 54 s of hub retries before
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "timm resnet18 weights not cached (127.0.0.1:9 unreachable" in err[0], p.stderr
    assert "model.net.weights_path=<file>" in err[0]
