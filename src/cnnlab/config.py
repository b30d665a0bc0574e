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


def compose(overrides: list[str] | None = None, config_name: str = "config",
            return_hydra_config: bool = False) -> DictConfig:
    """The config a `cnnlab <command> <overrides>` run would see (without the hydra node)."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return _compose(config_name, overrides=list(overrides or []), return_hydra_config=return_hydra_config)


# Config groups a named run replaces whole (merging two different models' `net` nodes would mix their
# options).
GROUPS = ("data", "model", "optimizer", "scheduler", "train", "trainer")


def for_run(name: str, run_keys: list[str], overrides: list[str]) -> list[str]:
    """Overrides meant for the run `runs.<name>` (`--run NAME`): those of a section the run sets go to the
    run's own copy (`trainer.max_epochs=1` → `runs.NAME.trainer.max_epochs=1`, `model=timm` →
    `model@runs.NAME.model=timm`); the others, e.g. `data=...`, stay at the root, which the run inherits."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        bare = key.lstrip("~+")
        prefix = key[: len(key) - len(bare)]
        if not eq or bare.split(".")[0] not in run_keys:
            out.append(o)
        elif "." not in bare and bare in GROUPS:  # a config group choice, relocated to the run's package
            out.append(f"{prefix}{bare}@runs.{name}.{bare}={value}")
        else:
            out.append(f"{prefix}runs.{name}.{bare}={value}")
    return out


def select_run(cfg: DictConfig, name: str) -> DictConfig:
    """The root config with `runs.<name>` laid over it: how one config (and one params.yaml) describes
    several trainings of a pipeline, e.g. the scratch model (the root) and `runs.transfer`."""
    from omegaconf import OmegaConf, open_dict

    from cnnlab.errors import UserError

    runs = cfg.get("runs") or {}
    if name not in runs:
        raise UserError(f"unknown run {name!r}; runs in the config: {', '.join(runs) or 'none'}")
    out = cfg.copy()
    with open_dict(out):
        for key, value in runs[name].items():
            merge = (key not in GROUPS and key in out and OmegaConf.is_dict(value)
                     and OmegaConf.is_dict(out[key]))
            out[key] = OmegaConf.merge(out[key], value) if merge else value
    return out


def load_params(path: str | Path, overrides: list[str], run: str | None = None) -> DictConfig:
    """A composed config file (params.yaml, which DVC writes from conf/) plus `key=value` overrides (of the
    run `runs.<run>` where they name a section it sets)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from cnnlab.errors import UserError

    if not Path(path).is_file():
        raise UserError(f"params file {path} does not exist (it is composed from conf/: see README)")
    try:
        cfg = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as e:
        raise UserError(f"params file {path} cannot be read as YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"params file {path} holds a list, not a config composed from conf/")
    if run is not None and run in (cfg.get("runs") or {}):
        overrides = for_run(run, list(cfg.runs[run]), overrides)
    for o in overrides:
        key, eq, _ = o.partition("=")
        if not eq or key.startswith(("~", "hydra.")) or "@" in key:
            raise UserError(f"with --params only key=value overrides apply, not {o!r}")
        if not key.startswith("+") and OmegaConf.select(cfg, key, default="\0missing") == "\0missing":
            raise UserError(f"unknown key {key!r} in {path} (prefix with + to add a new key)")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+")]))
    return cfg


def flat(node: object, prefix: str = "") -> dict:
    """Nested dicts → {dotted key: leaf value} (an empty dict is a leaf)."""
    if isinstance(node, dict) and node:
        return {k: v for key, sub in node.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def differing_keys(a: str, b: str) -> list[str]:
    """Dotted keys whose values differ between two YAML documents."""
    import yaml

    fa, fb = flat(yaml.safe_load(a) or {}), flat(yaml.safe_load(b) or {})
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, "\0") != fb.get(k, "\0"))


def params_record(cfg: DictConfig) -> Path:
    """Where `cnnlab params` notes the sha256 of the params file it wrote last (runs/ is cnnlab's, not
    git's)."""
    return Path(cfg.paths.runs_dir) / f".{Path(cfg.paths.params_file).name}.sha256"


def sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def note_params(cfg: DictConfig, path: str | Path) -> None:
    """Record a params file as generated (what `dvc exp run -S` composed is no hand edit): `cnnlab params` may
    then replace it without --force."""
    from cnnlab.io import write_text

    write_text(params_record(cfg), sha256_text(Path(path).read_text()) + "\n")


def drift(cfg: DictConfig, path: str | Path) -> list[str]:
    """Keys in which a params file differs from the composition of conf/, unless `cnnlab params` wrote it as
    it is (with overrides, perhaps): a hand edit that `dvc repro` would use and `cnnlab params` would
    revert."""
    from omegaconf import OmegaConf

    from cnnlab.paths import anchored

    if Path(path).resolve() != anchored(cfg.paths.params_file).resolve():
        return []  # another composed file (a run's config.yaml): conf/ is not what it claims to be
    text, record = Path(path).read_text(), params_record(cfg)
    if record.is_file() and record.read_text().strip() == sha256_text(text):
        return []
    conf = compose()
    OmegaConf.resolve(conf)
    return differing_keys(text, OmegaConf.to_yaml(conf))
