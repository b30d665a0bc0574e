"""Atomic file and directory writes: a reader never sees a half-written file, a crash leaves the old one."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnnlab.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it over `path`, on error remove
    it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(rows: list[dict], path: str | Path) -> None:
    """Header = union of keys in first-seen order; missing cells are empty."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def write_figure(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib Figure as PNG, then cleared (no pyplot reference exists, so that is the whole of
    closing)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")  # format: tmp ends in .tmp, not .png
    fig.clear()


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces `path` whole, on error it is removed.

    The previous `path` survives any failure before the final renames, so a failed run loses nothing. A
    writer killed outright (kill -9) cannot clean up: the next writer of `path` removes what it left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_dead(path)
    # the pid in the name tells a dead writer's temporary (a prepared dataset's: ~50 MB) from a live one's
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        mask = _umask()
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes 0700 (and some writers 0600): give what open() would
        for f in tmp.rglob("*"):
            f.chmod((0o777 if f.is_dir() else 0o666) & ~mask)
        _swap(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clear_dead(path: Path) -> None:
    """Remove the temporaries (`.<name>.<pid>-XXXXXXXX.tmp`) and half-swapped old folders
    (`.<name>.old-<pid>`) that writers of `path` killed mid-write left beside it; a living writer's stay."""
    left = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)-[a-z0-9_]{{8}}\.tmp|old-(\d+))")
    for p in path.parent.iterdir():
        if (m := left.fullmatch(p.name)) and not pid_alive(int(m[1] or m[2])):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _swap(new: Path, path: Path) -> None:
    """Rename the finished folder `new` over `path` (each rename is atomic); the old one is removed after."""
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def replace_dirs(moves: dict[Path, Path], remove: tuple[Path, ...] | list[Path] = ()) -> None:
    """Publish finished folders: each `new` replaces its destination whole; then the folders in `remove`
    go."""
    for new, path in moves.items():
        if new.exists():
            _swap(new, path)
    for p in remove:
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing, never changed) while the block runs; UserError
    `busy` when another process holds it. The kernel releases a flock when its holder dies, kill -9 included,
    so no stale lock is ever left."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(busy) from None
        yield


def no_space(e: BaseException, where: Path) -> UserError | None:
    """A full disk as one line naming what was being written: the file, or `where` when the error names none
    inside it (Lightning's checkpoints name a temporary file elsewhere); None for any other error."""
    if not (isinstance(e, OSError) and e.errno == errno.ENOSPC):
        return None
    inside = e.filename and Path(os.path.abspath(e.filename)).is_relative_to(os.path.abspath(where))
    return UserError(f"no space left on device writing {e.filename if inside else where}")
