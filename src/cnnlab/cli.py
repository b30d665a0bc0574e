"""`cnnlab <command> [hydra overrides]` → cnnlab.stages.<command>.run(cfg)."""

from __future__ import annotations

import importlib
import os
import re
import sys

COMMANDS = {
    "params": "compose conf/ (+ overrides) into params.yaml, the file DVC stages read",
    "prepare": "raw dataset → prepared train/val/test tensors + manifest.json",
    "summary": "Keras-style table of a model's layers, output shapes and parameter counts",
    "train": "train a model (Lightning), checkpoints + history + one MLflow run",
    "evaluate": "test-split metrics, confusion matrix, prediction grids → reports/<run>/eval/",
    "predict": "top-k classes of image files, with a trained checkpoint or the ImageNet backbone",
    "style": "neural style transfer (Gatys et al.) → reports/style/",
    "report": "one self-contained reports/index.html over all runs, style transfer and sweeps",
    "visualize": "kernels, learned filters, feature maps, Grad-CAM, saliency → reports/visualize/",
}

USAGE = """usage: cnnlab <command> [key=value ...] [group=choice ...] [--run NAME] [--params FILE] [--cfg job] [-m] [--debug]

commands:
{commands}

Overrides are Hydra's (e.g. `cnnlab prepare data=cifar10 data.val_size=5000`); `--cfg job` prints the
resolved config, `-m` sweeps comma-separated values, `--debug` shows full tracebacks. `--run NAME` lays
`runs.NAME` (e.g. `transfer`) over the config; `--params params.yaml` reads a composed config file instead of
conf/ (what DVC stages do), with key=value overrides only."""


def _one_line(text: str) -> str:
    """Hydra's composition errors span many lines (option lists, search paths); keep what matters."""
    text = text.split("\nConfig search path")[0]
    return re.sub(r"\s*\n\s*", " ", text.replace(":\n\t", ": ").replace("\n\t", ", ")).strip()


def _fail(command: str, message: str) -> None:
    print(f"cnnlab {command}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _validate(command: str, overrides: list[str]) -> None:
    """Compose once before Hydra takes over, so a wrong key or choice is one clear line, not a traceback."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from cnnlab.config import compose

    overrides = [o for o in overrides if not o.startswith("hydra.")]
    try:
        compose(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        message = _one_line(str(e))
        if m := re.match(r"Could not override '([\w.]+)'", message):  # name the keys that do exist there
            parent, _, key = m.group(1).rpartition(".")
            try:
                node = compose([o for o in overrides if not o.lstrip("~+").startswith(m.group(1) + "=")])
                node = OmegaConf.select(node, parent) if parent else node
                message = f"unknown key {m.group(1)!r}; valid keys{' in ' + parent if parent else ''}: " \
                          f"{', '.join(node.keys())} (prefix with + to add a new key)"
            except (HydraException, OmegaConfBaseException, AttributeError):
                pass
        _fail(command, message)


def _take(args: list[str], flag: str) -> tuple[str | None, list[str]]:
    """Remove `flag VALUE` / `flag=VALUE` from args."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2:]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1], args[:i] + args[i + 1:]
    return None, args


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(commands="\n".join(f"  {k:<10} {v}" for k, v in COMMANDS.items())))
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(command, f"unknown command; valid: {', '.join(COMMANDS)}")
    debug = "--debug" in rest
    rest = [a for a in rest if a != "--debug"]
    if debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    params, rest = _take(rest, "--params")
    run_name, rest = _take(rest, "--run")
    multirun = any(a in ("-m", "--multirun") for a in rest)
    if not multirun and not debug and params is None:
        _validate(command, [a for a in rest if "=" in a and not a.startswith("-")])

    from cnnlab.config import conf_dir, load_params, select_run
    from cnnlab.errors import UserError

    stage = importlib.import_module(f"cnnlab.stages.{command}")
    original_argv = list(sys.argv)

    def task(cfg):
        # Lightning's DDP launcher re-runs sys.argv for ranks > 0: give it back the user's command line
        sys.argv = original_argv
        try:
            return stage.run(select_run(cfg, run_name) if run_name else cfg)
        except UserError as e:
            if debug:
                raise
            _fail(command, str(e))

    if params is not None:  # DVC stages: the composed params.yaml, no Hydra run (no sweeps, no run dir)
        import logging

        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        try:
            cfg = load_params(params, rest)
        except UserError as e:
            _fail(command, str(e))
        task(cfg)
        return

    import hydra

    # argparse (inside Hydra) rejects overrides on both sides of a flag: put all overrides first.
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    flags = [a for a in rest if a not in overrides]
    job_name = [] if any(o.startswith("hydra.job.name=") for o in overrides) else [f"hydra.job.name={command}"]
    sys.argv = [f"cnnlab-{command}", *job_name, *overrides, *flags]
    hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")(task)()


if __name__ == "__main__":
    main()
