"""Where things are, derived from the config in one place: a run's folder, the prepared data, and the project
root that anchors the MLflow store."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig

from cnnlab.errors import UserError


def project_root() -> Path:
    """DVC's project root when DVC runs us (queued and --temp experiments run in a temporary copy that DVC
    deletes afterwards; DVC_ROOT names the parent repo there), else the current directory."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def anchored(path: str | Path) -> Path:
    """A relative path at the project root, so files meant to outlive an experiment's workspace do."""
    return Path(path) if Path(path).is_absolute() else project_root() / path


def data_dir(cfg: DictConfig) -> Path:
    """The prepared data of `data=`."""
    return Path(cfg.paths.prepared_dir) / cfg.data.name


class RunDir:
    """One run's folder: model/ (checkpoints and their provenance), train/ (metrics, history), eval/."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.model, self.train, self.eval = self.root / "model", self.root / "train", self.root / "eval"
        self.best, self.last = self.model / "best.ckpt", self.model / "last.ckpt"
        self.run_json, self.config = self.model / "run.json", self.model / "config.yaml"


# Marks a folder cnnlab writes to: commands replace their subfolders there whole (train: model/, train/ and
# eval/), so a folder without it, e.g. a dataset root with train/, is refused rather than emptied.
MARKER = ".cnnlab"


def out_dir(cfg: DictConfig) -> Path:
    """Where this command writes: `out_dir`, which the CLI sets to Hydra's run folder when the user names
    none. It must be new, empty or cnnlab's (see `MARKER`); it is claimed with the marker before anything is
    written."""
    if cfg.get("out_dir") is None:
        raise UserError("out_dir is not set: pass out_dir=<folder> (the DVC stages pass the pipeline's "
                        "folders)")
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"out_dir={out} is a file, not a folder")
    if out.is_dir() and not _ours(out):
        names = sorted(p.name for p in out.iterdir())
        raise UserError(f"out_dir={out} is not a cnnlab folder (it holds {', '.join(names[:4])}"
                        f"{' …' if len(names) > 4 else ''}) and cnnlab replaces model/, train/, eval/ … in "
                        "it: name a new or empty folder, or a cnnlab run folder")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).exists():
        (out / MARKER).touch()
    return out


def _ours(d: Path) -> bool:
    """Empty, marked, a Hydra run folder (where a command writes when no out_dir is named), or a run without
    the marker: written before it existed, or restored by DVC, which tracks only the files it declares
    (`dvc exp run --queue` lays out results/scratch/ with train/metrics.json and eval/, no marker)."""
    return (not any(d.iterdir()) or (d / MARKER).is_file() or (d / ".hydra").is_dir()
            or (d / ".partial").is_dir() or (d / "model/run.json").is_file()
            or (d / "model/config.yaml").is_file() or any((d / "model").glob("*.ckpt"))
            or (d / "train/metrics.json").is_file() or (d / "eval/metrics.json").is_file())


def run_dir(cfg: DictConfig) -> RunDir:
    return RunDir(out_dir(cfg))


def latest_run(cfg: DictConfig, ckpt: str = "last.ckpt") -> Path | None:
    """The newest run folder under paths.runs_dir (sweep jobs included) with model/<ckpt>: a hint for the
    user."""
    newest = max(Path(cfg.paths.runs_dir).glob(f"**/model/{ckpt}"), key=lambda p: p.stat().st_mtime,
                 default=None)
    return newest.parents[1] if newest else None


def provenance(model_dir: Path) -> dict:
    """run.json beside a checkpoint (MLflow run id, git, data hash), or {} for a checkpoint from elsewhere."""
    f = Path(model_dir) / "run.json"
    return json.loads(f.read_text()) if f.is_file() else {}


TRIAL_ENV = "CNNLAB_OPTUNA_TRIAL"  # set by the Optuna sweeper in each job (hydra.job.env_set)


def optuna_trial() -> int | None:
    """The Optuna trial number of this sweep job, or None."""
    return int(n) if (n := os.environ.get(TRIAL_ENV)) is not None else None


def sweep_dir() -> Path | None:
    """The running sweep's folder (sweep.json, leaderboard, a folder per job), or None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir)
