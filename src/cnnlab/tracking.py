"""MLflow, in one place (the Lightning logger is in cnnlab.tasks.logger). Only global rank 0 talks to MLflow;
a store that cannot be reached never stops a run: a warning says what was not logged, and the local files keep
everything. Every run of the project lands in one store, tagged with what identifies it (git, DVC experiment,
sweep, data hash)."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.config import flat
from cnnlab.errors import UserError
from cnnlab.paths import anchored, optuna_trial, sweep_dir

log = logging.getLogger(__name__)

# DVC's environment for the commands of its stages: which experiment and baseline a run belongs to.
DVC_TAGS = {"dvc_exp_name": "DVC_EXP_NAME", "dvc_baseline_rev": "DVC_EXP_BASELINE_REV",
            "dvc_stage": "DVC_STAGE"}


def tracking_uri(cfg: DictConfig) -> str:
    """cfg.tracking.uri, else a SQLite store at an absolute path at the project root (MLflow ≥3.13 refuses the
    ./mlruns file store; a path relative to a DVC temporary workspace would be deleted with it)."""
    # timeout: parallel sweep jobs share the SQLite file; wait for its lock instead of failing
    # "database is locked"
    return cfg.tracking.uri or f"sqlite:///{anchored(cfg.paths.mlflow_db)}?timeout=60"


def unreachable(uri: str, timeout: float = 3.0) -> str | None:
    """Why an HTTP tracking server cannot be used now, or None (local stores are always reachable)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return None if r.status == 200 else f"HTTP {r.status}"
    except OSError as e:
        return str(getattr(e, "reason", e))


def check_sqlite(url: str, remedy: str) -> None:
    """A SQLite store (an `sqlite:///` URL) that exists but is no database (overwritten, truncated, a disk
    error) → one UserError naming the file and `remedy`, not the 80-line traceback MLflow or Optuna give."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///").split("?")[0]).resolve()
    if not path.is_file():
        return
    try:  # read-only; timeout: another process may be writing it
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=60)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:  # locked past the timeout, unreadable: not a verdict on the file
        raise
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path} is not a readable SQLite database ({e}): {remedy}") from None


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        return {"git_sha": sha or "unknown", "git_dirty": str(bool(git("status", "--porcelain", "-uno")))}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "git_dirty": "unknown"}


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """What identifies a run: git SHA and dirty flag, DVC experiment and baseline (when DVC runs it), sweep,
    the folder with its local files."""
    tags = {**git_state(), **{k: os.environ[v] for k, v in DVC_TAGS.items() if os.environ.get(v)}}
    if (d := sweep_dir()) is not None:
        tags["sweep_id"] = d.name
    if cfg.get("out_dir"):
        tags["out_dir"] = str(Path(cfg.out_dir).resolve())
    return tags


def run_name(name: str) -> str:
    """MLflow run names tell runs of one config apart: `<experiment>:<name>` inside `dvc exp run`,
    `<name>/job<N>` inside a sweep (`<name>/trial<N>` in an Optuna study, whose trial numbers go on across
    sessions)."""
    if sweep_dir() is not None:
        from hydra.core.hydra_config import HydraConfig

        num = OmegaConf.select(HydraConfig.get(), "job.num", default=None)  # unset for the sweep's parent run
        if (trial := optuna_trial()) is not None:  # an Optuna trial: its number
            name = f"{name}/trial{trial}"
        elif num is not None:
            name = f"{name}/job{num}"
    return f"{os.environ['DVC_EXP_NAME']}:{name}" if os.environ.get("DVC_EXP_NAME") else name


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as MLflow params: {dotted key: value}."""
    return flat(OmegaConf.to_container(cfg, resolve=True))


def usable_uri(cfg: DictConfig) -> str | None:
    """The tracking URI when tracking is on and the store answers; None (with a warning) otherwise."""
    if not cfg.tracking.enabled:
        return None
    # MLflow's HTTP defaults (7 retries with exponential backoff, 120 s timeout) would stall a run for minutes
    # when the server goes away; keep it bounded unless the user set these themselves.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    uri = tracking_uri(cfg)
    # a store that is there but broken is refused, not dropped: the user would lose tracking unknowingly
    check_sqlite(uri, "restore it from a backup, or move it away to start a new store; or track elsewhere "
                      "(tracking.uri=...) or not at all (tracking.enabled=false)")
    if why := unreachable(uri):
        log.warning("MLflow server %s unreachable (%s): this run is not tracked; local files are complete",
                    uri, why)
        return None
    return uri


def _artifact_location(cfg: DictConfig, uri: str) -> str | None:
    local = not uri.startswith(("http://", "https://"))  # a server decides where its artifacts go
    return anchored(cfg.paths.mlflow_artifacts).as_uri() if local else None


def experiment_id(cfg: DictConfig, uri: str) -> str:
    """The project's MLflow experiment, created on first use. A new SQLite store also makes an empty "Default"
    experiment pointing at ./mlruns, which nothing of cnnlab uses: it is deleted so no run can land there."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    if exp := client.get_experiment_by_name(cfg.tracking.experiment):
        return exp.experiment_id
    exp_id = client.create_experiment(cfg.tracking.experiment, artifact_location=_artifact_location(cfg, uri))
    default = client.get_experiment("0")
    if (default.name == "Default" and default.lifecycle_stage == "active"
            and not client.search_runs(["0"], max_results=1)):
        client.delete_experiment("0")
    return exp_id


def new_run(cfg: DictConfig, name: str, params: dict[str, Any], tags: dict[str, str]) -> str | None:
    """Create a finished-later MLflow run for a non-Lightning stage (e.g. style); None when untracked.
    Call only on rank 0. Add results with `log_run_files`."""
    if (uri := usable_uri(cfg)) is None:
        return None
    from mlflow import MlflowClient
    from mlflow.entities import Param

    try:
        client = MlflowClient(uri)
        run = client.create_run(experiment_id(cfg, uri), run_name=run_name(name),
                                tags={**tags, **run_tags(cfg)})
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=items[i:i + 100])
        return run.info.run_id
    except Exception as e:  # never lose a stage's local results over tracking
        log.warning("MLflow: run not created (%s: %s); local files are complete", type(e).__name__, e)
        return None


def log_run_files(cfg: DictConfig, run_id: str | None, files: dict[str, list[Path]],
                  metrics: dict[str, float], finish: str | None = None) -> None:
    """Add metrics and artifacts to an existing run (used by stages after training, e.g. evaluate); `finish`
    (FINISHED, FAILED, KILLED) ends it."""
    if not cfg.tracking.enabled:
        return
    if run_id is None:
        log.warning("MLflow: no run recorded for this model (trained untracked, or an outside checkpoint): "
                    "evaluation metrics and %d artifacts not logged", sum(map(len, files.values())))
        return
    uri = tracking_uri(cfg)
    if why := unreachable(uri):
        log.warning("MLflow server %s unreachable (%s): metrics and %d artifacts not logged; see local files",
                    uri, why, sum(map(len, files.values())))
        return
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    try:
        client = MlflowClient(uri)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        for subdir, paths in files.items():
            for p in paths:
                client.log_artifact(run_id, str(p), subdir or None)
        if finish:
            client.set_terminated(run_id, finish)
    except Exception as e:  # as in SafeMLFlowLogger: never lose the run's local results over tracking
        log.warning("MLflow: evaluation results not logged (%s: %s); see local files", type(e).__name__, e)


def set_tags(cfg: DictConfig, run_id: str, tags: dict[str, str]) -> None:
    """Tags on an existing run, e.g. how a sweep's trial ended (set by the sweeper after the job)."""
    if (uri := usable_uri(cfg)) is None:
        return
    from mlflow import MlflowClient

    try:
        client = MlflowClient(uri)
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
    except Exception as e:  # tags are a convenience; the study and the local files have the facts
        log.warning("MLflow: tags %s not set (%s: %s)", list(tags), type(e).__name__, e)


def register_model(cfg: DictConfig, run_id: str, metrics: dict[str, float]) -> str | None:
    """The run's logged model → a new version of `tracking.registered_model` in the Model Registry, tagged
    with data hash, git and `metrics`; `tracking.alias` moves to it (with `alias_if_better`, only when it
    beats the version that holds the alias on that metric, higher being better). Returns the version."""
    t = cfg.tracking
    if (uri := usable_uri(cfg)) is None:
        return None
    import mlflow
    from mlflow import MlflowClient

    try:
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                             filter_string=f"source_run_id = '{run_id}'")
        if not logged:
            log.warning("MLflow: run %s logged no model; nothing registered", run_id)
            return None
        tags = {k: run.data.tags[k] for k in ("data_hash", "git_sha", "git_dirty", "dvc_exp_name", "sweep_id")
                if k in run.data.tags}
        version = mlflow.register_model(logged[0].model_uri, t.registered_model,
                                        tags={**tags, "mlflow_run_id": run_id,
                                              **{k: str(v) for k, v in metrics.items()}}).version
        holder, better = None, True
        if t.alias_if_better:
            try:
                holder = client.get_model_version_by_alias(t.registered_model, t.alias)
            except Exception:  # nobody holds it yet
                holder = None
            if holder is not None and t.alias_if_better in holder.tags:
                better = metrics.get(t.alias_if_better, float("-inf")) > float(holder.tags[t.alias_if_better])
        if better:
            client.set_registered_model_alias(t.registered_model, t.alias, version)
        log.info("registered %s version %s%s", t.registered_model, version,
                 f" as @{t.alias}" if better else f" (@{t.alias} stays on version {holder.version}: "
                 f"{t.alias_if_better} not better)")
        return version
    except Exception as e:  # the local files and the run are complete; the registry is a convenience
        log.warning("MLflow: model not registered (%s: %s)", type(e).__name__, e)
        return None


def delete_run(cfg: DictConfig, run_id: str | None) -> None:
    """Remove a run that recorded nothing (a sweep refused before its first job), closed as FAILED first: a
    deleted run stays in the store (`mlflow gc` purges it) and lists with deleted runs."""
    if run_id is None or (uri := usable_uri(cfg)) is None:
        return
    from mlflow import MlflowClient

    try:
        client = MlflowClient(uri)
        client.set_terminated(run_id, "FAILED")
        client.delete_run(run_id)
    except Exception as e:
        log.warning("MLflow: empty run %s not deleted (%s: %s)", run_id, type(e).__name__, e)


def close_abandoned(cfg: DictConfig, tags: dict[str, str], dead: Callable[[str], bool]) -> list[str]:
    """Runs tagged `tags` and left RUNNING by a process that died (kill -9, a lost node): their `owner` tag
    (host:pid) is one `dead` says is gone. They and their RUNNING child runs are closed as KILLED. Returns
    the runs closed."""
    if (uri := usable_uri(cfg)) is None:
        return []
    from mlflow import MlflowClient

    try:
        client = MlflowClient(uri)
        if (exp := client.get_experiment_by_name(cfg.tracking.experiment)) is None:
            return []
        # tags are matched here, not in the filter: a study name may hold quotes
        running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
        gone = {r.info.run_id for r in running if tags.items() <= r.data.tags.items()
                and "owner" in r.data.tags and dead(r.data.tags["owner"])}
        closed = [r.info.run_id for r in running
                  if r.info.run_id in gone or r.data.tags.get("mlflow.parentRunId") in gone]
        for run_id in closed:
            client.set_terminated(run_id, "KILLED")
        return closed
    except Exception as e:  # the study is repaired either way; the runs only look alive
        log.warning("MLflow: runs of a sweep that died not closed (%s: %s)", type(e).__name__, e)
        return []


def training_runs(cfg: DictConfig, limit: int = 1000) -> list:
    """The project's training runs in MLflow (they carry a data hash), newest first; [] when there is no
    store."""
    if (uri := usable_uri(cfg)) is None:
        return []
    from mlflow import MlflowClient

    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                                  max_results=limit) if exp else []
    except Exception as e:  # the report still shows the pipeline's own files
        log.warning("MLflow: runs not read (%s: %s)", type(e).__name__, e)
        return []
    return [r for r in runs if "data_hash" in r.data.tags]


# What tells experiments apart: the settings of a training (paths, tracking and the other commands' settings
# do not change a model), less what differs without changing one (checksums, file names, hints, where things
# are, the class names a dataset brings).
COMPARED = ("seed", "model.", "optimizer.", "scheduler.", "train.", "trainer.", "data.", "deterministic")
NOISE = ("md5", "sha256", "hash", "checksum", "hint", "path", "_dir", "root", "_files", "folder", "archive",
         "classes")
CHOSEN = ("data", "model", "optimizer", "scheduler")  # config groups: another choice is one change, model=cnn


def compared(params: dict) -> dict[str, str]:
    return {k: str(v) for k, v in params.items() if k.startswith(COMPARED) and not any(w in k for w in NOISE)}


def _choice(params: dict[str, str], group: str) -> str | None:
    """A config group's choice (its name or target); "none" when no key of it was logged (scheduler=none),
    None when its keys do not say."""
    if not any(k.startswith(f"{group}.") for k in params):
        return "none"
    choice = params.get(f"{group}.name") or params.get(f"{group}._target_")
    return choice and choice.rsplit(".", 1)[-1]


def changes(params: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    """What a run's compared params change against a baseline's: a group chosen otherwise as `group: choice`
    (its keys are the new choice's, not changes), any other key as `key: value`."""
    out = {g: c for g in CHOSEN if (c := _choice(params, g)) is not None and c != _choice(base, g)}
    return out | {k: v for k, v in params.items() if k.split(".")[0] not in out and base.get(k) != v}


def _baselines(cfg: DictConfig, rev: str | None) -> list[dict[str, str]]:
    """The compared params a run may have started from: DVC's baseline commit's params file (`rev`; else
    `cfg`, the config given) and each of its named runs laid over it (`runs.transfer`)."""
    from cnnlab.config import select_run
    from cnnlab.paths import project_root

    base = cfg
    if rev:
        p = subprocess.run(["git", "show", f"{rev}:{cfg.paths.params_file}"], capture_output=True, text=True,
                           cwd=project_root())
        base = OmegaConf.create(p.stdout) if p.returncode == 0 else cfg  # a rev gone: the config given
    return [compared(flatten(c)) for c in (base, *(select_run(base, n) for n in base.get("runs") or {}))]


def experiments(cfg: DictConfig) -> list[dict[str, Any]]:
    """Every training run (`training_runs`, newest first) as experiments are compared: a name that tells runs
    by hand apart (their folder), its state (an Optuna trial's PRUNED included), what it changes against its
    own baseline (the config its sweep's jobs share, its DVC baseline's params file, else `cfg`), the best
    val/acc of its epochs, its own test accuracy, the evaluations recorded apart from it ({name: test
    accuracy}), and the seconds it trained."""
    runs = training_runs(cfg)
    if not runs:
        return []
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri(cfg))
        evaluations: dict[str, dict[str, float | None]] = {}
        for e in client.search_runs([runs[0].info.experiment_id], "tags.evaluates LIKE '%'",
                                    order_by=["attributes.start_time ASC"], max_results=5000):
            evaluations.setdefault(e.data.tags["evaluates"], {})[e.info.run_name] = e.data.metrics.get(
                "test/accuracy")
        val = {r.info.run_id: [m.value for m in client.get_metric_history(r.info.run_id, "val/acc")]
               for r in runs}
    except Exception as e:  # the report still shows the pipeline's own files
        log.warning("MLflow: runs not read (%s: %s)", type(e).__name__, e)
        return []
    # a run extended on resume keeps its first params (MLflow refuses a change): its later values are tags
    params = {r.info.run_id: compared({**r.data.params, **{
        k.removeprefix("resumed_with."): v for k, v in r.data.tags.items() if k.startswith("resumed_with.")}})
        for r in runs}
    jobs: dict[str, list[dict[str, str]]] = {}
    for r in runs:
        if sweep := r.data.tags.get("sweep_id"):
            jobs.setdefault(sweep, []).append(params[r.info.run_id])
    shared = {s: dict(set.intersection(*(set(p.items()) for p in ps)))  # what a sweep's jobs share
              for s, ps in jobs.items() if len(ps) > 1}
    bases: dict[str | None, list[dict[str, str]]] = {}
    rows = []
    for r in runs:
        t, p, i = r.data.tags, params[r.info.run_id], r.info
        rev = t.get("dvc_baseline_rev")
        base = shared.get(t.get("sweep_id")) or min(bases.setdefault(rev, _baselines(cfg, rev)),
                                                    key=lambda b: len(changes(p, b)))
        by_hand = not t.get("dvc_exp_name") and not t.get("sweep_id")  # the same run_name every time
        rows.append({
            "name": i.run_name + (f" ({Path(t['out_dir']).name if t.get('out_dir') else i.run_id[:8]})"
                                  if by_hand else ""),
            "run_id": i.run_id, "started": i.start_time, "dvc_exp": t.get("dvc_exp_name"),
            "dvc_stage": t.get("dvc_stage"),
            "baseline": (rev or "")[:7], "sweep": t.get("sweep_id"),
            "git": t.get("git_sha", "")[:7] + ("*" if t.get("git_dirty") == "True" else ""),
            "state": "pruned" if t.get("optuna_state") == "PRUNED" else i.status.lower(),
            "changes": changes(p, base), "val_acc": max(val[i.run_id], default=None),
            "test_acc": r.data.metrics.get("test/accuracy"), "evaluations": evaluations.get(i.run_id, {}),
            "seconds": (i.end_time - i.start_time) / 1000 if i.end_time else None})
    return rows
