"""`cnnlab params`: write the composed config to params.yaml, exactly as DVC's Hydra composition does
(`dvc exp run` does it itself; run this before a plain `dvc repro` after editing conf/)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from cnnlab.io import write_text

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    cfg = cfg.copy()
    OmegaConf.resolve(cfg)
    write_text(cfg.paths.params_file, OmegaConf.to_yaml(cfg))
    log.info("wrote %s", cfg.paths.params_file)
    return {}
