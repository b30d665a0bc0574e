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


def extract(archive: Path, dest: Path) -> Path:
    """Extract a .tar[.gz|.bz2|.xz] or .zip into `dest` (replaced atomically). Members that would land
    outside `dest` (absolute paths, `..`, links pointing out) are refused, not silently rewritten."""
    with atomic_dir(dest) as tmp:  # first removes the tmp of an extraction killed earlier
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    root = tmp.resolve()
                    for name in zf.namelist():
                        target = (root / name).resolve()
                        if name.startswith("/") or not target.is_relative_to(root):
                            raise UserError(f"refused archive {archive}: member {name!r} escapes the "
                                            "target dir")
                    zf.extractall(tmp)
            else:
                with tarfile.open(archive) as tf:
                    tf.extractall(tmp, filter="data")  # PEP 706: refuses absolute/.. paths and outward links
        except tarfile.FilterError as e:
            raise UserError(f"refused archive {archive}: member {e.tarinfo.name!r} escapes the "
                            "target dir") from e
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise UserError(f"corrupt archive {archive}: {e}") from e
    return dest
