"""Safe, checked reading of downloaded archives."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from cnnlab.errors import UserError
from cnnlab.io import atomic_dir, md5_file


def check_md5(path: Path, expected: str) -> None:
    got = md5_file(path)
    if got != expected:
        raise UserError(f"checksum mismatch for {path}: md5 {got}, expected {expected} "
                        "(re-download the file)")


# An archive's members may add up to this much, and to at most this many times the archive's size: image
# archives barely compress (CIFAR-10: 163 MB → 178 MB), a zip bomb expands a thousandfold and more.
MAX_BYTES = 64 << 30
MAX_RATIO = 100


def _members(archive: Path) -> list[tuple[str, int]]:
    """(name, size) of every member, read from the archive's index without extracting."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return [(i.filename, i.file_size) for i in zf.infolist()]
    with tarfile.open(archive) as tf:
        return [(m.name, m.size) for m in tf.getmembers()]


def _check(archive: Path) -> None:
    """Refuse members that would land elsewhere than written (absolute, `..`: extractors silently rewrite
    them) and archives that expand past MAX_BYTES or MAX_RATIO, before anything is written."""
    members = _members(archive)
    for name, _ in members:
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
            raise UserError(f"refused archive {archive}: member {name!r} escapes the target dir")
    total, packed = sum(size for _, size in members), max(archive.stat().st_size, 1)
    if total > MAX_BYTES or total > MAX_RATIO * packed:
        raise UserError(f"refused archive {archive}: it expands to {total:,} bytes from {packed:,} (limits: "
                        f"{MAX_BYTES:,} bytes, {MAX_RATIO}x its size): a decompression bomb, or extract it "
                        "yourself and pass the folder")


def extract(archive: Path, dest: Path) -> Path:
    """Extract a .tar[.gz|.bz2|.xz] or .zip into `dest` (replaced atomically, nothing left on a refusal).
    Members that would land outside `dest` (absolute paths, `..`, links pointing out) and archives that
    expand too much are refused, not silently rewritten."""
    with atomic_dir(dest) as tmp:  # first removes the tmp of an extraction killed earlier
        try:
            _check(archive)
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
            else:
                with tarfile.open(archive) as tf:
                    tf.extractall(tmp, filter="data")  # PEP 706: also refuses links pointing out
        except tarfile.FilterError as e:
            raise UserError(f"refused archive {archive}: member {e.tarinfo.name!r} escapes the "
                            "target dir") from e
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise UserError(f"corrupt archive {archive}: {e}") from e
    return dest
