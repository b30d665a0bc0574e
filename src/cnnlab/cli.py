"""`cnnlab <command> [hydra overrides]` → cnnlab.stages.<command>.run(cfg)."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
import warnings

COMMANDS = {
    "params": "compose conf/ (+ overrides) into params.yaml, the file DVC stages read",
    "prepare": "raw dataset → prepared train/val/test tensors + manifest.json",
    "summary": "Keras-style table of a model's layers, output shapes and parameter counts",
    "train": "train a model (Lightning), checkpoints + history + one MLflow run",
    "evaluate": "test-split metrics, confusion matrix, prediction grids of a run → <out_dir>/eval/",
    "export": "a trained model → ONNX + torch.export (.pt2) with its preprocessing, checked against PyTorch "
              "→ <out_dir>/export/",
    "predict": "top-k classes of image files, with a trained checkpoint or the ImageNet backbone",
    "style": "neural style transfer (Gatys et al.) → <out_dir>/<content>_<style>/",
    "report": "one self-contained index.html: the pipeline's runs, style transfer, every experiment "
              "and sweep",
    "promote": "a sweep's winner → the `dvc exp run -S ...` that gives it the full pipeline "
               "(promote.run=true runs it)",
    "visualize": "kernels, learned filters, feature maps, Grad-CAM, saliency → <out_dir>/<what>/",
    "compare": "every training run in MLflow (DVC experiments, sweeps, runs by hand) as one ≤120-column "
               "table",
}

USAGE = """usage: cnnlab <command> [key=value ...] [group=choice ...] [--run NAME] [--params FILE] \
[--cfg job] [-m] [--debug]

commands:
{commands}

Overrides are Hydra's (e.g. `cnnlab prepare data=cifar10 data.val_size=5000`); `--cfg job` prints the
resolved config, `-m` sweeps comma-separated values, `--debug` shows full tracebacks. Results go to a new
folder runs/<date>/<time>-<command>/ unless you name one with out_dir=<folder>. `--run NAME` lays `runs.NAME`
(e.g. `transfer`) over the config, and overrides of its sections apply to it; `--params params.yaml` reads a
composed config file instead of conf/ (what DVC stages do), with key=value overrides only."""

# Commands that write results: to out_dir, else to the folder Hydra makes for this command under
# paths.runs_dir.
WRITES = ("train", "evaluate", "style", "visualize", "report", "export")


def _one_line(text: str) -> str:
    """Hydra's composition errors span many lines (option lists, search paths); keep what matters."""
    text = text.split("\nConfig search path")[0]
    return re.sub(r"\s*\n\s*", " ", text.replace(":\n\t", ": ").replace("\n\t", ", ")).strip()


def _fail(command: str, message: str) -> None:
    print(f"cnnlab {command}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _jobs(overrides: list[str]) -> list[list[str]]:
    """A multirun's overrides → override lists that hold every swept value (a comma list, range(), choice())
    at least once: the fixed overrides with the first value of each sweep, then each other value in turn.
    interval() sweeps, which the Optuna sweeper samples, are left to its jobs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values = {o.input_line: [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
              if o.is_sweep_override() else [o.input_line] for o in parsed
              if not (o.is_sweep_override() and o.is_interval_sweep())}
    first = [v[0] for v in values.values()]
    return [first] + [[*first[:i], v, *first[i + 1:]] for i, vs in enumerate(values.values()) for v in vs[1:]]


def _validate(command: str, overrides: list[str], run: str | None, values: bool = True,
              sweep: bool = False) -> None:
    """Compose before Hydra takes over (and writes its run folder), so a wrong key, choice or value is one
    clear line, not a traceback; for a multirun, every swept value before any job starts."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from cnnlab import schema
    from cnnlab.config import compose
    from cnnlab.errors import UserError

    overrides = [o for o in overrides if not o.startswith("hydra.")]
    if deleted := next((o for o in overrides if o.startswith("~")), None):
        _fail(command, f"{deleted}: cnnlab reads every key conf/ sets, none can be deleted; give it "
                       "another value instead (null where null is allowed)")
    try:
        for job in _jobs(overrides) if sweep else [overrides]:
            cfg = compose(job)
            if values:  # not for `--cfg job`: printing a GPU config needs no GPU
                schema.validate(cfg, command, run, sweep)
    except UserError as e:
        _fail(command, str(e))
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
        elif m := re.match(r"LexerNoViableAltException: (.*?)=(.*?) \^", message):  # e.g. a non-ASCII letter
            key, value = m.groups()
            message = f"cannot read {key}={value}: quote it, as in \"{key}='{value}'\" (unquoted, Hydra's " \
                      "grammar takes ASCII words, numbers and lists only)"
        _fail(command, message)


@functools.cache  # once per process: the main one, and each joblib worker (task() calls it there)
def _quiet() -> None:
    """Lightning chatter that asks nothing of a cnnlab user: the accelerator banner before every run (and
    every error), its advertising tip, and warnings about what cnnlab does on purpose (per-epoch logging, its
    own on_after_batch_transfer, reusing the checkpoint folder)."""
    warnings.filterwarnings("ignore", message=r".*(LeafSpec|log_every_n_steps|on_after_batch_transfer|exists "
                                              r"and is not empty|module\(s\) in eval mode).*")
    # torch's note on a pickle protocol while it refuses a hostile file: the refusal is cnnlab's one line
    warnings.filterwarnings("ignore", message="Detected pickle protocol")
    banner = re.compile(r"^(GPU|TPU|HPU|IPU) available: |💡")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda r: not banner.search(r.getMessage()))


def _omp_policy(command: str) -> None:
    """Style transfer only, and before torch loads OpenMP. libgomp's threads spin while waiting for each
    other: best on free cores, a collapse when the cores are already busy. Per evaluation on a 2-core box: 256
    px at load ~3.5, 2129 ms spinning vs 61 ms PASSIVE; 512 px at load ~1.3, 110-118 ms spinning vs 152-164 ms
    PASSIVE. So PASSIVE only when the load already fills the cores."""
    if (command == "style" and "OMP_WAIT_POLICY" not in os.environ
            and os.getloadavg()[0] >= (os.cpu_count() or 1)):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _for_run(command: str, name: str, args: list[str]) -> list[str]:
    """Overrides of the sections `runs.<name>` sets apply to that run (see config.for_run)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cnnlab.config import compose, for_run

    overrides = [a for a in args if "=" in a and not a.startswith(("-", "hydra."))]
    try:
        runs = compose(overrides).get("runs") or {}
    except (HydraException, OmegaConfBaseException) as e:
        _fail(command, _one_line(str(e)))
    if name not in runs:
        _fail(command, f"unknown run {name!r}; runs in the config: {', '.join(runs) or 'none'}")
    return [*for_run(name, list(runs[name]), overrides), *[a for a in args if a not in overrides]]


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
    # MLflow draws a progress bar for every artifact it downloads (a registered model's checkpoint, a file of
    # the logged model): noise between cnnlab's own lines
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    debug = "--debug" in rest
    rest = [a for a in rest if a != "--debug"]
    if debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    force = "--force" in rest  # `cnnlab params --force`: overwrite a params.yaml changed by hand
    rest = [a for a in rest if a != "--force"]
    if force and command != "params":
        _fail(command, "--force applies to `cnnlab params` only")
    params, rest = _take(rest, "--params")
    run_name, rest = _take(rest, "--run")
    # hparams_search=<x> sets hydra.mode=MULTIRUN in its config: its command line may carry sweeps too
    multirun = any(a in ("-m", "--multirun")
                   or (a.startswith("hparams_search=") and a != "hparams_search=null") for a in rest)
    if run_name and params is None:
        rest = _for_run(command, run_name, rest)
    if params is None:  # before Hydra writes anything
        _validate(command, [a for a in rest if "=" in a and not a.startswith("-") or a.startswith("~")],
                  run_name, values=not {"--cfg", "-c"} & set(rest), sweep=multirun)

    _quiet()
    _omp_policy(command)
    from cnnlab import schema
    from cnnlab.config import conf_dir, drift, load_params, note_params, select_run
    from cnnlab.errors import UserError
    from cnnlab.paths import sweep_dir

    original_argv = list(sys.argv)

    def task(cfg):
        # Lightning's DDP launcher re-runs sys.argv for ranks > 0: give it back the user's command line
        sys.argv = original_argv
        _quiet()  # a joblib launcher's job runs in a worker process, which main() never ran in
        try:
            if params is not None or multirun:  # a params file, or one of a sweep's combinations of values
                schema.validate(cfg, command, run_name, sweep=multirun)
            # `dvc exp run -S` composes params.yaml itself (no hand edit: `cnnlab params` may replace it
            # later); a plain `dvc repro` should find exactly conf/'s
            if params is not None and os.environ.get("DVC_EXP_NAME"):
                note_params(cfg, params)
            elif params is not None and (keys := drift(cfg, params)):
                logging.getLogger("cnnlab").warning(
                    "%s is not the composition of conf/ (differs in %s): run `cnnlab params` to regenerate "
                    "it, or put the change in conf/", params,
                    ", ".join(keys[:6]) + (" …" if len(keys) > 6 else ""))
            cfg = select_run(cfg, run_name) if run_name else cfg
            if command in WRITES and cfg.out_dir is None and params is None:
                from hydra.core.hydra_config import HydraConfig

                cfg.out_dir = os.path.relpath(HydraConfig.get().runtime.output_dir)  # a new folder of its own
            # imported here, not before: `--cfg job` prints the config without loading torch
            stage = importlib.import_module(f"cnnlab.stages.{command}")
            return stage.run(cfg, force=True) if force else stage.run(cfg)
        except UserError as e:
            if debug or sweep_dir() is not None:  # a sweep's job: it fails, the sweep records it and goes on
                raise
            _fail(command, str(e))

    if params is not None:  # DVC stages: the composed params.yaml, no Hydra run (no sweeps, no run dir)
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        try:
            cfg = load_params(params, rest, run_name)
        except UserError as e:
            _fail(command, str(e))
        task(cfg)
        return

    import hydra

    # argparse (inside Hydra) rejects overrides on both sides of a flag: put all overrides first.
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    flags = [a for a in rest if a not in overrides]
    job_name = ([] if any(o.startswith("hydra.job.name=") for o in overrides)
                else [f"hydra.job.name={command}"])
    named = any(o.startswith("out_dir=") and o != "out_dir=null" for o in overrides)
    if (command not in WRITES or named) and not multirun and not any(
            o.startswith(("hydra.run", "hydra/job_logging")) for o in overrides):
        # nothing of its own to keep (params, prepare, summary, predict) or a folder named to write to: no run
        # folder (one a refusal would leave behind), log to the terminal
        job_name += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    sys.argv = [f"cnnlab-{command}", *job_name, *overrides, *flags]
    hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")(task)()


if __name__ == "__main__":
    main()
