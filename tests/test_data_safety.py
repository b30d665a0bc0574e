"""Data safety (issue 27, part B): cnnlab never deletes what is not its own, a stopped or failed run leaves a
folder that resumes or nothing, and every such fault is one line, through the real CLI where it can be."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import CNNLAB, refused, run_cli, snapshot
from mlflow import MlflowClient

from cnnlab.errors import UserError
from cnnlab.stages import prepare, train

TINY = ["debug=tiny", "tracking.enabled=false"]




@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Prepared data and one good run (good/)."""
    d = tmp_path_factory.mktemp("safety")
    run_cli("prepare", "data=synthetic", cwd=d)
    run_cli("train", *TINY, "out_dir=good", cwd=d)
    return d


def mlflow_runs(project: Path) -> dict[str, str]:
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    return {r.info.run_id: r.info.status for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])}


# --- 1. out_dir must be cnnlab's ---------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["train", *TINY], ["evaluate", "data=synthetic", "tracking.enabled=false"],
    ["export", "data=synthetic", "tracking.enabled=false"], ["visualize", "visualize.what=kernels"],
    ["report", "report.history=false"]], ids=lambda a: a[0])
def test_a_folder_cnnlab_did_not_make_is_refused(project, args):
    ds = project / "dataset"  # e.g. an image-folder dataset root: train/ would be deleted
    for f in ("train/cat/0.png", "test/cat/0.png", "eval/notes.txt"):
        (ds / f).parent.mkdir(parents=True, exist_ok=True)
        (ds / f).write_text(f)
    before = snapshot(ds)
    refused([*args, "out_dir=dataset"], "out_dir=dataset is not a cnnlab folder (it holds eval, test, train)",
            cwd=project)
    assert snapshot(ds) == before and sorted(os.listdir(ds)) == ["eval", "test", "train"]


def test_new_empty_and_run_folders_are_written(project):
    (project / "empty").mkdir()
    run_cli("train", *TINY, "out_dir=empty", cwd=project)
    run_cli("train", *TINY, "out_dir=good", cwd=project)  # a run folder, again
    assert (project / "empty/model/best.ckpt").is_file() and (project / "empty/.cnnlab").is_file()


# --- 4, 5. signals, a second training, a failed run ---------------------------------------------------------

def start(project: Path, out: str, *args: str, epochs: int = 8) -> subprocess.Popen:
    """A training long enough to be stopped (~0.4 s an epoch), once its first checkpoint is written."""
    command = [CNNLAB, "train", "debug=tiny", f"trainer.max_epochs={epochs}", *args, f"out_dir={out}"]
    p = subprocess.Popen(command, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = project / out / ".partial/model/last.ckpt"
    deadline = time.time() + 120
    while not last.is_file() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, "training ended before it could be stopped"
    return p


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_training_resumably_in_one_line(project, sig, code):
    out = f"stopped_{sig.name}"
    p = start(project, out)
    os.kill(p.pid, sig)
    _, err = p.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("cnnlab train:")]
    assert p.returncode == code and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (f"cnnlab train: stopped by {sig.name} (the checkpoint is kept); continue it with: "
                        f"cnnlab train debug=tiny trainer.max_epochs=8 resume=true out_dir={out}")
    assert sorted(os.listdir(project / out)) == [".cnnlab", ".partial"]
    run_id = json.loads((project / out / ".partial/model/run.json").read_text())["mlflow_run_id"]
    assert mlflow_runs(project)[run_id] == "KILLED"
    run_cli(*lines[0].split(": ", 2)[2].split()[1:], cwd=project)  # the printed command, as printed
    assert mlflow_runs(project)[run_id] == "FINISHED"
    assert len((project / out / "train/history.csv").read_text().splitlines()) == 1 + 8


@pytest.mark.slow
def test_a_second_training_into_the_same_folder_is_refused_until_the_first_dies(project):
    p = start(project, "busy", "tracking.enabled=false", epochs=200)  # outlasts a second start (~5 s)
    refused(["train", *TINY, "out_dir=busy"], "out_dir=busy is in use by another `cnnlab train`", cwd=project)
    assert p.poll() is None  # the first goes on, its .partial/ untouched
    os.kill(p.pid, signal.SIGKILL)  # the kernel releases the lock of a process killed outright
    p.wait()
    run_cli("train", *TINY, "out_dir=busy", cwd=project)
    assert sorted(os.listdir(project / "busy")) == [".cnnlab", "model", "train"]


def test_a_failed_run_leaves_nothing_in_a_good_runs_folder(project):
    before = snapshot(project / "good")
    refused(["train", *TINY, "optimizer=sgd", "optimizer.lr=1e38", "out_dir=good"],
            "non-finite training loss", cwd=project)
    assert snapshot(project / "good") == before and not (project / "good/.partial").exists()


# --- 2, 3. archives and odd data ---------------------------------------------------------------------------

def image_tree(root: Path, classes: tuple[str, ...] = ("cat", "dog"), n: int = 5, side: int = 8) -> Path:
    from PIL import Image

    for c in classes:
        (root / "train" / c).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (side, side), 40 * i).save(root / "train" / c / f"{i}.png")
    return root


def folder(cfg, root: str | Path, *extra: str):
    return cfg("data=image_folder", f"data.root={root}", "data.image_size=8", "data.val_size=2",
               "data.test_size=2", "data.num_workers=1", *extra)


def leftovers(d: Path) -> list[str]:
    return [p.name for p in d.rglob("*") if p.name.endswith(".tmp") or ".old-" in p.name]


def test_an_archives_file_name_decides_nothing_on_disk(cfg, workdir):
    mine = workdir / "data/raw/fashion_mnist/train-images-idx3-ubyte.gz"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's download")
    root = image_tree(workdir / "imgs")
    (workdir / "x").mkdir()
    for name in ("fashion_mnist.tar.gz", ".tar.gz"):  # replaced data/raw/fashion_mnist/, all of data/raw/
        with tarfile.open(workdir / "x" / name, "w:gz") as tf:
            tf.add(root, arcname="pets")
        assert prepare.run(folder(cfg, f"x/{name}")) == {"train": 6, "val": 2, "test": 2}
        assert mine.read_bytes() == b"the user's download"
    assert sorted(os.listdir(workdir / "data/raw")) == ["extracted", "fashion_mnist"]


def test_a_zip_bomb_is_refused_before_it_is_written(cfg, workdir, monkeypatch):
    with zipfile.ZipFile(workdir / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/a/0.png", bytes(20 << 20))  # 20 MB of zeros in ~20 kB
    with pytest.raises(UserError) as e:
        prepare.run(folder(cfg, "bomb.zip"))
    assert "\n" not in str(e.value) and str(e.value).startswith(
        "refused archive bomb.zip: it expands to 20,971,520 bytes from ")
    from cnnlab.data import archives

    monkeypatch.setattr(archives, "MAX_BYTES", 100)  # the total, whatever the ratio
    with tarfile.open(workdir / "big.tar", "w") as tf:
        tf.add(image_tree(workdir / "imgs"), arcname="pets")
    with pytest.raises(UserError, match=r"big.tar: it expands to .* \(limits: 100 bytes, 100x its size\)"):
        prepare.run(folder(cfg, "big.tar"))
    assert not (workdir / "data/raw/extracted/image_folder").exists() and not leftovers(workdir)


@pytest.mark.parametrize("name", ["/etc/evil.txt", "a/../../evil.txt", "a/../b.txt"])
def test_absolute_and_dotdot_members_are_refused_not_rewritten(cfg, workdir, name):
    with tarfile.open(workdir / "evil.tar", "w") as tf:
        info = tarfile.TarInfo(name)
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(UserError) as e:
        prepare.run(folder(cfg, "evil.tar"))
    assert str(e.value) == f"refused archive evil.tar: member {name!r} escapes the target dir"
    assert not list(workdir.rglob("*.txt")) and not leftovers(workdir)


def test_a_device_or_fifo_root_says_what_it_is(cfg, workdir):
    os.mkfifo(workdir / "pipe")
    for root, says in (("/dev/zero", "data.root=/dev/zero is a character device, not a folder or an archive"),
                       ("pipe", "data.root=pipe is a named pipe (FIFO), not a folder or an archive"),
                       ("nope", "data.root=nope does not exist")):
        with pytest.raises(UserError) as e:
            prepare.run(folder(cfg, root))
        assert str(e.value) == says


def test_one_class_is_refused(cfg, workdir):
    with pytest.raises(UserError) as e:
        prepare.run(folder(cfg, image_tree(workdir / "imgs", classes=("cat",)), "data.test_size=1"))
    assert str(e.value) == "image_folder: every training image is of class 'cat': a classifier needs at " \
                           "least 2 classes"
    with pytest.raises(UserError, match="every training image is of class 'class_0'"):
        prepare.run(cfg("data=synthetic", "data.num_classes=1"))
    assert not (workdir / "data/prepared").exists()


def test_a_decompression_bomb_image_is_one_line(cfg, workdir, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns from 1x to 2x this: a 40x40 image
    root = image_tree(workdir / "imgs")
    Image.new("L", (40, 40)).save(root / "train/cat/huge.png")
    with pytest.raises(UserError) as e:
        prepare.run(folder(cfg, root))
    assert str(e.value).startswith(f"cannot read image {root}/train/cat/huge.png: DecompressionBombWarning: "
                                   "Image size (1600 pixels) exceeds limit of 1000 pixels")
    assert str(e.value).endswith("; set data.skip_bad_images=true to skip bad images")
    assert prepare.run(folder(cfg, root, "data.skip_bad_images=true"))["train"] == 6


# --- 6. a full disk ----------------------------------------------------------------------------------------

def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(cfg, workdir, synthetic, monkeypatch):
    from safetensors import SafetensorError

    from cnnlab.data import prepared
    from cnnlab.tasks import callbacks

    def full(rows, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(callbacks, "write_csv", full)
    with pytest.raises(UserError) as e:
        train.run(cfg(*TINY, "out_dir=r"))
    assert str(e.value) == "no space left on device writing r/.partial/train/history.csv"
    assert os.listdir(workdir / "r") == [".cnnlab"]  # .partial/ is not left to fill the disk

    def serialize(tensors, path):  # what safetensors raises on a full disk: not an OSError
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(prepared, "save_file", serialize)
    before = snapshot(workdir / "data")
    with pytest.raises(UserError) as e:
        prepare.run(cfg("data=synthetic"))
    assert str(e.value) == "no space left on device writing data/prepared/synthetic"
    assert snapshot(workdir / "data") == before and not leftovers(workdir / "data")


@pytest.fixture
def full_disk(workdir):
    """A real 300 KB file system (tmpfs): smaller than a checkpoint, an export or the prepared data."""
    d = workdir / "full"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(d)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a tmpfs")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=True)


def test_a_full_disk_through_the_cli(workdir, synthetic, full_disk):
    """prepare, train and export onto a disk that fills: one line each (export used to abort the process
    with SIGABRT from inside torch's zip writer), and nothing of theirs is left on it but cnnlab's marker."""
    run_cli("train", *TINY, "out_dir=good")
    cases = [("prepare", "data=synthetic", f"paths.prepared_dir={full_disk}/p"),
             ("train", *TINY, f"out_dir={full_disk}/run"),
             ("export", "data=synthetic", "tracking.enabled=false", "export.source=good/model/best.ckpt",
              f"out_dir={full_disk}/x")]
    for args in cases:
        refused(args, "no space left on device writing")
    left = sorted(str(p.relative_to(full_disk)) for p in full_disk.rglob("*") if p.is_file())
    assert left == ["run/.cnnlab", "x/.cnnlab"], left


# --- 7. checkpoints and MLflow on resume -------------------------------------------------------------------

def test_last_ckpt_is_the_last_epoch_and_a_copied_run_keeps_its_best(cfg, workdir, synthetic):
    train.run(cfg("debug=tiny", "trainer.max_epochs=8", "out_dir=a"))  # val/acc reaches 1.0 by epoch ~5
    a = workdir / "a/model"
    assert torch.load(a / "last.ckpt", weights_only=True)["epoch"] == 7  # Lightning's epochs count from 0
    shutil.copytree(workdir / "a", workdir / "b")
    train.run(cfg("debug=tiny", "trainer.max_epochs=9", "out_dir=b", "resume=true"))
    b = workdir / "b/model"
    assert torch.load(b / "last.ckpt", weights_only=True)["epoch"] == 8
    # a ninth epoch cannot beat 1.0: the copy's best.ckpt stays the original's
    assert torch.load(b / "best.ckpt", weights_only=True)["epoch"] == \
        torch.load(a / "best.ckpt", weights_only=True)["epoch"]
    ids = [json.loads((m / "run.json").read_text())["mlflow_run_id"] for m in (a, b)]
    assert ids[0] != ids[1]  # the copy is a run of its own, not more epochs of the original's
    assert set(mlflow_runs(workdir).values()) == {"FINISHED"}
