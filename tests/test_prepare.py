from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.prepared import load_manifest, load_split, stratified_split
from cnnlab.errors import UserError
from cnnlab.stages import prepare

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def leftovers(root: Path) -> list[Path]:
    """Temporary files/dirs of an atomic write that should never survive."""
    return [p for p in root.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]


# --- splits --------------------------------------------------------------------------------------------


def test_stratified_split_keeps_proportions_and_is_seeded():
    labels = np.repeat(np.arange(4), [400, 300, 200, 100])
    tr, va = stratified_split(labels, 100, seed=3)
    assert np.bincount(labels[va]).tolist() == [40, 30, 20, 10]
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert np.array_equal(va, stratified_split(labels, 100, seed=3)[1])
    assert not np.array_equal(va, stratified_split(labels, 100, seed=4)[1])


def test_synthetic_prepare_is_byte_identical(cfg, workdir):
    sizes = prepare.run(cfg("data=synthetic"))
    assert sizes == {"train": 500, "val": 100, "test": 200}
    out = workdir / "data/prepared/synthetic"
    first = files(out)
    m = json.loads(first["manifest.json"])
    assert m["image_shape"] == [1, 28, 28] and m["num_classes"] == 10 and m["split_seed"] == 0
    for name in ("train", "val", "test"):
        assert m["sha256"][f"{name}.safetensors"] == hashlib.sha256(first[f"{name}.safetensors"]).hexdigest()
    s = load_split(out, "val")
    assert s.images.dtype.is_floating_point is False and tuple(s.images.shape) == (100, 1, 28, 28)
    prepare.run(cfg("data=synthetic"))
    assert files(out) == first
    assert not leftovers(workdir)


def test_val_size_too_large_keeps_previous_output(cfg, workdir):
    prepare.run(cfg("data=synthetic"))
    before = files(workdir / "data/prepared/synthetic")
    with pytest.raises(UserError, match="val_size=600 must be smaller than the 600 training images"):
        prepare.run(cfg("data=synthetic", "data.val_size=600"))
    assert files(workdir / "data/prepared/synthetic") == before


def test_crash_mid_write_leaves_previous_output(cfg, workdir, monkeypatch):
    prepare.run(cfg("data=synthetic"))
    before = files(workdir / "data/prepared/synthetic")
    calls = []

    def flaky_save(path, images, labels):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # an interrupt half way through the splits
        real_save(path, images, labels)

    real_save = prepare.save_split
    monkeypatch.setattr(prepare, "save_split", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        prepare.run(cfg("data=synthetic", "data.seed=1"))
    assert files(workdir / "data/prepared/synthetic") == before
    assert not leftovers(workdir)


# --- MNIST-like ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_package(cfg, workdir):
    sizes = prepare.run(cfg("data=fashion_mnist", "data.download=false"))
    assert sizes == {"train": 55000, "val": 5000, "test": 10000}
    m = load_manifest(workdir / "data/prepared/fashion_mnist")
    assert m["image_shape"] == [1, 28, 28] and m["classes"][0] == "T-shirt/top" and len(m["classes"]) == 10
    assert m["class_counts"]["val"] == [500] * 10  # stratified
    assert m["source"]["dir"] == str(FMNIST)


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0))


def fake_mnist(root: Path, n: int = 60) -> Path:
    d = root / "data/raw/mnist"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
    write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(n) % 10)
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(20) % 10)
    return d


def test_mnist_missing_files_says_which_and_where(cfg, workdir):
    with pytest.raises(UserError) as e:
        prepare.run(cfg("data=mnist", "data.download=false"))
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "data/raw/mnist/" in msg and "offline" in msg
    assert not (workdir / "data/prepared").exists()


def test_mnist_checksum_mismatch(cfg, workdir):
    fake_mnist(workdir)
    with pytest.raises(UserError, match=r"checksum mismatch for data/raw/mnist/train-images-idx3-ubyte.gz"):
        prepare.run(cfg("data=mnist", "data.download=false"))
    assert not (workdir / "data/prepared").exists()


def test_mnist_local_files_with_their_checksums(cfg, workdir):
    d = fake_mnist(workdir)
    sums = {p.name: [hashlib.md5(p.read_bytes()).hexdigest()] for p in d.iterdir()}
    c = cfg("data=mnist", "data.download=false", "data.val_size=10")
    c.data.checksums = sums
    assert prepare.run(c) == {"train": 50, "val": 10, "test": 20}


def test_mnist_corrupt_archive(cfg, workdir):
    d = fake_mnist(workdir)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    c = cfg("data=mnist", "data.download=false", "data.val_size=10")
    c.data.checksums = None
    with pytest.raises(UserError, match=r"corrupt archive data/raw/mnist/t10k-images-idx3-ubyte.gz"):
        prepare.run(c)
    assert not (workdir / "data/prepared").exists()


# --- CIFAR ---------------------------------------------------------------------------------------------


def fake_cifar_tar(root: Path) -> Path:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        def add(name, obj):
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for i in range(1, 6):
            add(f"data_batch_{i}", {"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8),
                                    "labels": list(range(10)) * 2})
        add("test_batch", {"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8),
                           "labels": list(range(10))})
        add("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    path = root / "data/raw/cifar-10-python.tar.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(buf.getvalue())
    return path


def test_cifar_archive_checksum_mismatch(cfg, workdir):
    fake_cifar_tar(workdir)
    with pytest.raises(UserError, match="checksum mismatch for data/raw/cifar-10-python.tar.gz"):
        prepare.run(cfg("data=cifar10", "data.download=false"))
    assert (not (workdir / "data/raw/cifar-10-batches-py").exists()
            and not (workdir / "data/prepared").exists())


def test_cifar_from_archive(cfg, workdir):
    tar = fake_cifar_tar(workdir)
    c = cfg("data=cifar10", "data.download=false", "data.val_size=10")
    c.data.archive_md5 = hashlib.md5(tar.read_bytes()).hexdigest()
    with tarfile.open(tar) as tf:  # the md5s of our fake members, in place of the official ones
        sums = {m.name.split("/")[1]: hashlib.md5(tf.extractfile(m).read()).hexdigest()
                for m in tf.getmembers()}
    c.data.train_files = {k: v for k, v in sums.items() if k.startswith("data_batch")}
    c.data.test_files = {"test_batch": sums["test_batch"]}
    c.data.meta_md5 = sums["batches.meta"]
    assert prepare.run(c) == {"train": 90, "val": 10, "test": 10}
    m = load_manifest(workdir / "data/prepared/cifar10")
    assert m["image_shape"] == [3, 32, 32] and m["classes"][3] == "c3"


def test_cifar_missing_says_where(cfg):
    with pytest.raises(UserError, match=r"missing data/raw/cifar-10-python.tar.gz .*download is off"):
        prepare.run(cfg("data=cifar10", "data.download=false"))


# --- image folders -------------------------------------------------------------------------------------


def image_tree(root: Path, classes=("cat", "dog"), n: int = 12, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 3)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(count):
                arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


def test_image_folder(cfg, workdir):
    image_tree(workdir / "imgs")
    sizes = prepare.run(cfg("data=image_folder", "data.root=imgs", "data.val_size=4", "data.image_size=16"))
    assert sizes == {"train": 20, "val": 4, "test": 6}
    m = load_manifest(workdir / "data/prepared/image_folder")
    assert (m["classes"] == ["cat", "dog"] and m["image_shape"] == [3, 16, 16]
            and m["test_source"] == "official")


def test_image_folder_without_test_dir_carves_test(cfg, workdir):
    root = image_tree(workdir / "imgs")
    import shutil
    shutil.rmtree(root / "test")
    sizes = prepare.run(cfg("data=image_folder", "data.root=imgs", "data.val_size=4", "data.test_size=4",
                            "data.channels=1"))
    assert sizes == {"train": 16, "val": 4, "test": 4}
    assert load_manifest(workdir / "data/prepared/image_folder")["image_shape"] == [1, 32, 32]


def test_image_folder_splits_are_fractions_by_default(cfg, workdir):
    """The README's `data=image_folder data.root=... data.image_size=64` on a small folder: val and test are
    10 % of the training images each (a count of 5,000 refused every folder of <= 5,000 images)."""
    import shutil

    root = image_tree(workdir / "imgs", n=20)
    shutil.rmtree(root / "test")
    sizes = prepare.run(cfg("data=image_folder", "data.root=imgs", "data.image_size=8"))
    assert sizes == {"train": 32, "val": 4, "test": 4}  # 40 images: 4 + 4 carved, stratified
    with pytest.raises(UserError, match=r"val_size=1.5 must be an integer >= 1 or a fraction in \(0, 1\)"):
        prepare.run(cfg("data=image_folder", "data.root=imgs", "data.val_size=1.5"))


def test_truncated_image_named_then_skipped(cfg, workdir):
    root = image_tree(workdir / "imgs")
    bad = root / "train/dog/005.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(UserError,
                       match=r"cannot read image imgs/train/dog/005.png: .*data.skip_bad_images=true"):
        prepare.run(cfg("data=image_folder", "data.root=imgs", "data.val_size=4"))
    assert not (workdir / "data/prepared").exists()
    sizes = prepare.run(cfg("data=image_folder", "data.root=imgs", "data.val_size=4",
                            "data.skip_bad_images=true"))
    assert sizes["train"] + sizes["val"] == 23
    assert load_manifest(workdir / "data/prepared/image_folder")["source"]["skipped_bad_images"] == 1


def test_empty_class_folder(cfg, workdir):
    root = image_tree(workdir / "imgs")
    (root / "train/zebra").mkdir()
    with pytest.raises(UserError, match=r"empty class folder imgs/train/zebra"):
        prepare.run(cfg("data=image_folder", "data.root=imgs", "data.val_size=4"))
    assert not (workdir / "data/prepared").exists()


def test_image_folder_from_archive(cfg, workdir):
    root = image_tree(workdir / "imgs")
    with tarfile.open(workdir / "pets.tar.gz", "w:gz") as tf:
        tf.add(root, arcname="pets")
    sizes = prepare.run(cfg("data=image_folder", "data.root=pets.tar.gz", "data.val_size=4"))
    assert sizes == {"train": 20, "val": 4, "test": 6}


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_archive_member_escaping_is_refused(cfg, workdir, kind):
    path = workdir / f"evil.{kind}"
    if kind == "tar":
        with tarfile.open(path, "w") as tf:
            info = tarfile.TarInfo("../escaped.txt")
            info.size = 3
            tf.addfile(info, io.BytesIO(b"bad"))
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("train/../../escaped.txt", "bad")
    with pytest.raises(UserError, match=r"refused archive evil\.(tar|zip): member .*escaped.txt.* escapes"):
        prepare.run(cfg("data=image_folder", f"data.root=evil.{kind}"))
    assert not list(workdir.rglob("escaped.txt"))
    assert not (workdir / "data/raw/evil").exists() and not leftovers(workdir)
