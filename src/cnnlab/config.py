"""Where the Hydra config tree lives, and composing it outside `cnnlab` (tests, notebooks)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig


def conf_dir() -> Path:
    """$CNNLAB_CONF, else the tree shipped in the wheel, else the checkout's conf/ (editable install)."""
    if env := os.environ.get("CNNLAB_CONF"):
        return Path(env).resolve()
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The config a `cnnlab <command> <overrides>` run would see (without the hydra node)."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return _compose(config_name, overrides=list(overrides or []))
