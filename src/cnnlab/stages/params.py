"""`cnnlab params`: write the composed config to params.yaml, exactly as DVC's Hydra composition does
(`dvc exp run` does it itself; run this before a plain `dvc repro` after editing conf/).

params.yaml is generated, so a change made to it by hand would be lost without a word: such a file is not
overwritten without --force, and the keys that differ are named. What `dvc exp run -S` composed into it is no
hand edit (its stages note it), so `make run` after an experiment returns the workspace to conf/, naming
the keys it resets."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab.config import differing_keys, note_params, params_record, sha256_text
from cnnlab.errors import UserError
from cnnlab.io import write_text

log = logging.getLogger(__name__)


def _committed(path: Path) -> str | None:
    """The file as git's HEAD has it, or None (no git, not committed)."""
    try:
        p = subprocess.run(["git", "show", f"HEAD:./{path}"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return p.stdout if p.returncode == 0 else None


def run(cfg: DictConfig, force: bool = False) -> dict:
    cfg = cfg.copy()
    OmegaConf.resolve(cfg)
    path, text = Path(cfg.paths.params_file), OmegaConf.to_yaml(cfg)
    record = params_record(cfg)
    old = path.read_text() if path.is_file() else None
    ours = old is None or old == text or old == _committed(path) or (
        record.is_file() and record.read_text().strip() == sha256_text(old))
    if not ours and not force:
        keys = differing_keys(old, text)
        raise UserError(f"{path} was changed by hand since it was generated and "
                        f"differs from conf/ in {', '.join(keys[:6])}{' …' if len(keys) > 6 else ''}: put "
                        "the change in conf/ (or pass it as an override), or overwrite it with --force")
    if old is not None and (keys := differing_keys(old, text)):
        # what `dvc exp run -S` composed goes back to conf/ here: say which values, so nothing is lost unseen
        log.warning("%s: %s reset to conf/'s value%s (an experiment's values stay in its `dvc exp show` row; "
                    "`dvc exp apply <name>` brings them back)", path, ", ".join(keys[:6])
                    + (" …" if len(keys) > 6 else ""), "s" if len(keys) > 1 else "")
    write_text(path, text)
    note_params(cfg, path)
    log.info("wrote %s", path)
    return {}
