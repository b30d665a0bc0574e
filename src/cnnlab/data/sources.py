"""Raw dataset readers. Each returns a `Raw`: uint8 NCHW images and int64 labels for train and test.

Readers look for the official files locally first (paths from config), then download with torchvision when
`data.download` is true and the network answers. They never fall back to other data.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from cnnlab.data.archives import check_md5, extract
from cnnlab.errors import UserError
from cnnlab.images import IMAGE_EXTS, chw, open_image, resize_square


@dataclass
class Raw:
    train_x: np.ndarray  # uint8 [N, C, H, W]
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    classes: list[str]
    source: dict = field(default_factory=dict)  # provenance recorded in the manifest


def _count(cfg: DictConfig, key: str, least: int) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise UserError(f"data.{key}={v!r} must be an integer >= {least}")
    return v


def _size(cfg: DictConfig, key: str, n: int | None) -> int:
    """data.<key> as a number of images: a count, or a fraction of the n training images (at least 1: a val
    split of 0 would train with NaN val metrics and never write best.ckpt)."""
    v = cfg.get(key)
    if isinstance(v, float):
        if not 0 < v < 1:
            raise UserError(f"data.{key}={v!r} must be an integer >= 1 or a fraction in (0, 1)")
        return max(1, round(v * n)) if n is not None else 1
    return _count(cfg, key, 1)


def split_sizes(cfg: DictConfig, raw: Raw) -> tuple[int, int | None]:
    """(val, test) images to carve from the training images (test None: the source has its own), checked
    against how many there are."""
    n = len(raw.train_y)
    val = _size(cfg, "val_size", n)
    if val >= n:
        raise UserError(f"data.val_size={cfg.val_size} must be smaller than the {n} training images")
    if raw.test_x is not None:
        return val, None
    test = _size(cfg, "test_size", n)  # carved from what val leaves
    if test >= n - val:
        raise UserError(f"data.test_size={cfg.test_size} must be smaller than the {n - val} training images "
                        f"left after data.val_size={cfg.val_size}")
    return val, test


def checked(reader: Callable[[DictConfig, Path], Raw]) -> Callable[[DictConfig, Path], Raw]:
    """Refuse impossible data.* values at the data boundary, naming the key: before reading what the reader
    takes (image_size, channels), after it the split sizes, which depend on how many images there are."""

    @functools.wraps(reader)
    def read(cfg: DictConfig, raw_dir: Path) -> Raw:
        if "image_size" in cfg:
            _count(cfg, "image_size", 1)
        if "channels" in cfg and cfg.channels not in (1, 3):
            raise UserError(f"data.channels={cfg.channels!r}: use 1 (grayscale) or 3 (RGB)")
        _size(cfg, "val_size", None)  # before reading: a wrong value fails fast
        raw = reader(cfg, raw_dir)
        if len(found := np.unique(raw.train_y)) == 1:  # one class: every prediction right, nothing learned
            raise UserError(f"{cfg.name}: every training image is of class {raw.classes[found[0]]!r}: a "
                            "classifier needs at least 2 classes")
        split_sizes(cfg, raw)
        return raw

    return read


def _download(cfg: DictConfig, raw_dir: Path, torchvision_name: str) -> None:
    """Fetch with torchvision into raw_dir; a clear error when offline."""
    import torchvision.datasets as tvd

    try:
        getattr(tvd, torchvision_name)(root=str(raw_dir), train=True, download=True)
        getattr(tvd, torchvision_name)(root=str(raw_dir), train=False, download=True)
    except Exception as e:  # network errors come in many types (URLError, socket, HTTP, RuntimeError)
        raise UserError(f"{cfg.name}: raw data not found locally and download failed "
                        f"({type(e).__name__}: {e})") from e


# --- MNIST-like idx files -------------------------------------------------------------------------------

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _read_idx(path: Path, checksums: DictConfig | None) -> np.ndarray:
    try:
        blob = path.read_bytes()
        payload = gzip.decompress(blob)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UserError(f"corrupt archive {path}: {e}") from e
    if checksums is not None and path.name in checksums:
        # Either the upstream .gz md5 or the md5 of the decompressed payload is accepted: Debian's
        # dataset-fashion-mnist re-compresses the same idx payload, so only the payload hash matches there.
        ok = checksums[path.name]
        got_gz, got_raw = hashlib.md5(blob).hexdigest(), hashlib.md5(payload).hexdigest()
        if got_gz not in ok and got_raw not in ok:
            raise UserError(f"checksum mismatch for {path}: md5 {got_gz} (payload {got_raw}), "
                            f"expected one of {list(ok)}")
    if len(payload) < 8 or payload[:2] != b"\x00\x00" or payload[2] != 0x08:
        raise UserError(f"corrupt archive {path}: not an idx file of unsigned bytes")
    ndim = payload[3]
    dims = [int.from_bytes(payload[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"corrupt archive {path}: {data.size} bytes of data, header says {dims}")
    return data.reshape(dims)


@checked
def read_mnist(cfg: DictConfig, raw_dir: Path) -> Raw:
    local = raw_dir / cfg.name
    candidates = [local, raw_dir / cfg.torchvision_name / "raw", *map(Path, cfg.get("system_dirs", []))]
    found = next((d for d in candidates if all((d / f).is_file() for f in MNIST_FILES)), None)
    if found is None and cfg.download:
        try:
            _download(cfg, raw_dir, cfg.torchvision_name)
        except UserError as e:
            raise UserError(
                f"{e}. Put {', '.join(MNIST_FILES)} in {local}/"
                + (f" (offline: {cfg.offline_hint})" if cfg.get("offline_hint") else "")) from e
        found = raw_dir / cfg.torchvision_name / "raw"
    if found is None:
        missing = [f for f in MNIST_FILES if not (local / f).is_file()]
        raise UserError(f"{cfg.name}: missing {', '.join(missing)} in {local}/ and download is off"
                        + (f" (offline: {cfg.offline_hint})" if cfg.get("offline_hint") else ""))
    arrays = [_read_idx(found / f, cfg.get("checksums")) for f in MNIST_FILES]
    train_x, train_y, test_x, test_y = arrays
    return Raw(train_x[:, None], train_y.astype(np.int64), test_x[:, None], test_y.astype(np.int64),
               list(cfg.classes), {"dir": str(found), "files": list(MNIST_FILES)})


# --- CIFAR python pickles ------------------------------------------------------------------------------


@checked
def read_cifar(cfg: DictConfig, raw_dir: Path) -> Raw:
    batches = raw_dir / cfg.folder
    archive = raw_dir / cfg.archive
    if not batches.is_dir():
        if not archive.is_file():
            if not cfg.download:
                raise UserError(f"{cfg.name}: missing {archive} (or its extracted {batches}/) and download "
                                f"is off; copy the official {cfg.archive} there")
            try:
                _download(cfg, raw_dir, cfg.torchvision_name)
            except UserError as e:
                raise UserError(f"{e}. Copy the official {cfg.archive} into {raw_dir}/") from e
        else:
            check_md5(archive, cfg.archive_md5)
            extract(archive, raw_dir / f".{cfg.folder}.extract")
            (raw_dir / f".{cfg.folder}.extract" / cfg.folder).rename(batches)
            (raw_dir / f".{cfg.folder}.extract").rmdir()
    # md5 before unpickling: only the official, known files are ever unpickled.
    for name, md5 in {**cfg.train_files, **cfg.test_files, cfg.meta_file: cfg.meta_md5}.items():
        if not (batches / name).is_file():
            raise UserError(f"{cfg.name}: missing {batches / name}; re-extract the official {cfg.archive}")
        check_md5(batches / name, md5)

    def load(names) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            with open(batches / name, "rb") as f:
                d = pickle.load(f, encoding="latin1")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[cfg.label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    with open(batches / cfg.meta_file, "rb") as f:
        classes = pickle.load(f, encoding="latin1")[cfg.classes_key]
    train_x, train_y = load(cfg.train_files)
    test_x, test_y = load(cfg.test_files)
    return Raw(train_x, train_y, test_x, test_y, list(classes),
               {"dir": str(batches), "archive_md5": cfg.archive_md5})


# --- image folders -------------------------------------------------------------------------------------


def _decode(job: tuple[str, int, int]) -> np.ndarray | str:
    """Decode one image to uint8 CHW at the target size. Runs in worker processes: the error comes back as
    its message, a string, so the parent decides whether to stop on the first bad file or skip them all."""
    path, size, channels = job
    try:
        return chw(resize_square(open_image(path, channels), size))
    except UserError as e:
        return str(e)


def _scan(split_dir: Path, classes: list[str] | None) -> tuple[list[str], list[Path], list[int]]:
    dirs = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise UserError(f"no class folders in {split_dir} (expected {split_dir}/<class>/<image files>)")
    names = [d.name for d in dirs]
    # Linux hands undecodable bytes over as surrogates: prepare would pass, evaluate's JSON and figures fail
    for name in names:
        if not name.isprintable() or name != name.encode("utf-8", "replace").decode("utf-8"):
            raise UserError(f"class folder {os.fsencode(name)!r} in {split_dir} is not a printable UTF-8 "
                            "name (class names go into the manifest, metrics and figures): rename it")
    if classes is not None and not set(names) <= set(classes):
        raise UserError(f"{split_dir} has classes not in train/: {sorted(set(names) - set(classes))}")
    classes = classes or names
    files, labels = [], []
    for d in dirs:
        imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not imgs:
            raise UserError(f"empty class folder {d} (no {'/'.join(sorted(IMAGE_EXTS))} files)")
        files += imgs
        labels += [classes.index(d.name)] * len(imgs)
    return classes, files, labels


def _load_images(files: list[Path], labels: list[int],
                 cfg: DictConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    jobs = [(str(f), cfg.image_size, cfg.channels) for f in files]
    if cfg.num_workers > 1 and len(jobs) > 1000:
        with Pool(cfg.num_workers) as pool:
            out = pool.map(_decode, jobs, chunksize=512)
    else:
        out = list(map(_decode, jobs))
    bad = [(f, r) for f, r in zip(files, out) if isinstance(r, str)]
    if bad and not cfg.skip_bad_images:
        f, r = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(f"{r}{more}; set data.skip_bad_images=true to skip bad images")
    keep = [i for i, r in enumerate(out) if not isinstance(r, str)]
    if not keep:
        raise UserError(f"no readable images among {len(files)} files")
    x = np.stack([out[i] for i in keep])
    y = np.asarray([labels[i] for i in keep], dtype=np.int64)
    return x, y, [str(f) for f, _ in bad]


def _kind(path: Path) -> str:
    mode = path.stat().st_mode
    return next((kind for test, kind in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                                         (stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket"))
                 if test(mode)), "special file")


@checked
def read_image_folder(cfg: DictConfig, raw_dir: Path) -> Raw:
    if cfg.root is None:
        raise UserError("image_folder needs data.root=<dir or archive with train/<class>/*.jpg>")
    root = Path(cfg.root)
    if not root.exists():
        raise UserError(f"data.root={root} does not exist")
    if not root.is_dir() and not root.is_file():
        raise UserError(f"data.root={root} is a {_kind(root)}, not a folder or an archive")
    if root.is_file():  # users often bring their data as one archive; its name decides nothing on disk
        root = extract(root, raw_dir / "extracted" / cfg.name)
    if not (root / "train").is_dir():
        inner = [d for d in root.iterdir() if (d / "train").is_dir()] if root.is_dir() else []
        if len(inner) != 1:
            raise UserError(f"no {root}/train/ folder (expected {root}/train/<class>/<images>, "
                            f"optional {root}/test/)")
        root = inner[0]
    classes, files, labels = _scan(root / "train", None)
    train_x, train_y, bad = _load_images(files, labels, cfg)
    test_x = test_y = None
    if (root / "test").is_dir():
        _, tfiles, tlabels = _scan(root / "test", classes)
        test_x, test_y, tbad = _load_images(tfiles, tlabels, cfg)
        bad += tbad
    return Raw(train_x, train_y, test_x, test_y, classes,
               {"root": str(root), "skipped_bad_images": len(bad), "skipped_files": bad})


# --- synthetic (tests only) -----------------------------------------------------------------------------


@checked
def read_synthetic(cfg: DictConfig, raw_dir: Path) -> Raw:
    """Tiny learnable data FOR TESTS ONLY: each class is a fixed random low-frequency pattern plus noise."""
    rng = np.random.default_rng(cfg.seed)
    c, s, k = cfg.channels, cfg.image_size, cfg.num_classes
    low = 128 + cfg.contrast * rng.uniform(-1, 1, size=(k, c, 4, 4))
    protos = low.repeat(s // 4 + 1, axis=2).repeat(s // 4 + 1, axis=3)[:, :, :s, :s]

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % k
        x = protos[y] + rng.normal(0, cfg.noise, size=(n, c, s, s))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    train_x, train_y = make(cfg.num_train)
    test_x, test_y = make(cfg.num_test)
    return Raw(train_x, train_y, test_x, test_y, [f"class_{i}" for i in range(k)],
               {"generator": "synthetic (tests only)", "seed": cfg.seed})


READERS: dict[str, Callable[[DictConfig, Path], Raw]] = {
    "mnist": read_mnist, "cifar": read_cifar, "image_folder": read_image_folder, "synthetic": read_synthetic,
}
