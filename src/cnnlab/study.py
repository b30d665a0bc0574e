"""Optuna studies behind `cnnlab train hparams_search=optuna` (the sweeper is hydra_plugins.cnnlab_sweeper).

A study lives in an RDB storage (paths.studies: a SQLite file in the project, or any SQLAlchemy URL) under a
name, so running the same command again continues it: trial numbers go on, and `n_trials` is the study's
total of finished (complete or pruned) trials. The sweeper asks trials in batches of `n_jobs`, launches each
as a Hydra job (any launcher), and tells the study how each ended. A job learns its trial number from the
environment (hydra.job.env_set, which every launcher applies in the job) and reports the monitored metric
after every validation through `TrialReporter`, which also asks the pruner.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cnnlab.errors import UserError
from cnnlab.io import pid_alive
from cnnlab.paths import anchored, optuna_trial

log = logging.getLogger(__name__)

DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}


def storage_url(spec: str) -> str:
    """A file path → a SQLite URL at the project root (also from a DVC workspace); a URL as it is."""
    if "://" in spec:
        return spec
    path = anchored(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def storage(spec: str):
    import optuna

    from cnnlab.tracking import check_sqlite

    url = storage_url(spec)
    check_sqlite(url, "restore it from a backup, or move it away (its studies go with it), or keep studies "
                      "elsewhere: hydra.sweeper.storage=<another file>")
    # parallel jobs write intermediate values to one SQLite file: wait for its lock instead of failing
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def search_space(params: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """`hydra.sweeper.params` in Hydra's sweep syntax → (Optuna distributions, fixed overrides):
    choice(a, b) categorical; range(lo, hi[, step]) integers (hi excluded, as in Python);
    interval(lo, hi) uniform (integers: int(interval(lo, hi))); tag(log, interval(...)) log-uniform; a
    plain value is fixed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    parser = OverridesParser.create()
    space, fixed = {}, []
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        v = override.value()
        if isinstance(v, ChoiceSweep):  # Optuna stores scalars: a list choice ([16,32]) as its override text
            space[key] = CategoricalDistribution([c if isinstance(c, bool | int | float | str | None)
                                                  else str(c).replace(" ", "") for c in v.list])
        elif isinstance(v, RangeSweep) and all(isinstance(x, int) for x in (v.start, v.stop, v.step)):
            space[key] = IntDistribution(v.start, v.start + v.step * ((v.stop - v.start - 1) // v.step),
                                         step=v.step)
        elif isinstance(v, RangeSweep):
            space[key] = CategoricalDistribution(list(override.sweep_iterator()))
        elif isinstance(v, IntervalSweep):
            log_ = "log" in v.tags
            if isinstance(v.start, int) and isinstance(v.end, int):
                space[key] = IntDistribution(v.start, v.end, log=log_)
            else:
                space[key] = FloatDistribution(v.start, v.end, log=log_)
        else:
            fixed.append(f"{key}={value}")
    return space, fixed


def grid_sampler(search_space: dict, seed: int | None = None):
    """Optuna's GridSampler for an ask/tell loop. After the grid's last trial it calls `study.stop()`, which
    raises outside `study.optimize()` and so killed the sweep at its last trial, before the winner's test; the
    sweeper stops at n_trials itself, so that call is dropped."""
    import optuna

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            pass

    return Grid(search_space, seed=seed)


def open_study(spec: str, name: str, direction: str, sampler=None, pruner=None, setup: dict | None = None):
    """Create or continue the study `name`. A study continues only with the settings it started with (its
    fixed overrides, search space and direction): trials of another experiment would not be comparable."""
    import optuna

    if direction not in DIRECTIONS:
        raise UserError(f"hydra.sweeper.direction={direction!r}; valid: max, min (or maximize, minimize)")
    rdb = storage(spec)
    try:  # loaded first: create_study(load_if_exists) logs "Using an existing study" beside cnnlab's lines
        study = optuna.load_study(study_name=name, storage=rdb, sampler=sampler, pruner=pruner)
    except KeyError:  # load_if_exists: another sweeper may create it at the same moment
        study = optuna.create_study(storage=rdb, study_name=name, direction=DIRECTIONS[direction],
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    setup = {"direction": DIRECTIONS[direction], **(setup or {})}
    if (before := study.user_attrs.get("setup")) is None:
        study.set_user_attr("setup", setup)
    elif before != setup:
        key = next(k for k in setup if setup[k] != before.get(k))
        raise UserError(f"study {name!r} in {storage_url(spec)} ran with other settings ({key}: "
                        f"{_difference(before.get(key), setup[key])}); continue it with the same command, or "
                        "start another with hydra.sweeper.study_name=<new name>")
    return study


def _difference(before: Any, now: Any) -> str:
    """What changed in one setting: for the overrides, those added and dropped, not both whole lists."""
    if not (isinstance(before, list) and isinstance(now, list)):
        return f"{before} then, {now} now"
    added, dropped = [o for o in now if o not in before], [o for o in before if o not in now]
    return ", ".join(([f"now {' '.join(added)}"] if added else []) + ([f"then {' '.join(dropped)}"]
                                                                      if dropped else []))


def load(spec: str, name: str):
    """An existing study, to read (report, leaderboard, promote)."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage(spec))
    except KeyError:
        names = optuna.study.get_all_study_names(storage(spec))
        raise UserError(f"no study {name!r} in {storage_url(spec)}; studies there: "
                        f"{', '.join(names) or 'none'}") from None


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def dead(who: str) -> bool:
    """Whether an `owner()` is a process of this host that is gone (one elsewhere cannot be told)."""
    host, _, pid = who.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def recover(study) -> list[int]:
    """Trials left RUNNING by a sweeper that died (kill -9, a lost node) on this host: marked FAIL and asked
    again with the same parameters (the retry comes first). Trials of live sweepers are left alone. Its MLflow
    runs are sweep.recover's."""
    from optuna.trial import TrialState

    retried = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if dead(str(t.user_attrs.get("owner", ""))):
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            retried.append(t.number)
    if retried:
        log.warning("study %s: trials %s were left running by a sweeper that died; marked failed and asked "
                    "again", study.study_name, retried)
    return retried


def finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def frozen(study, number: int):
    """A trial as the storage has it now (a Trial object caches what it read when created)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def outcome(value: Any, pruned: bool):
    """How a job ended → (TrialState, value to tell)."""
    from optuna.trial import TrialState

    if not isinstance(value, float | int) or not math.isfinite(value):
        return TrialState.FAIL, None
    return (TrialState.PRUNED, None) if pruned else (TrialState.COMPLETE, float(value))


def rows(study) -> list[dict]:
    """The study's leaderboard: complete trials best first, then pruned (best first), then the rest."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    sign = -1 if study.direction == StudyDirection.MAXIMIZE else 1
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: (
        order.get(t.state, 2), sign * t.value if t.value is not None else math.inf, t.number))
    return [{"trial": t.number, "state": t.state.name, "value": t.value, **t.params,
             "epochs": len(t.intermediate_values),
             "time_s": round(t.duration.total_seconds(), 1) if t.duration else None,
             "run": t.user_attrs.get("run")} for t in trials]


def winner(study):
    """The best complete trial, or None."""
    from optuna.trial import TrialState

    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


def current_trial() -> dict | None:
    """In a job of an Optuna sweep: where its trial is ({storage, study, number, pruner}); None otherwise."""
    from hydra.core.hydra_config import HydraConfig

    if (number := optuna_trial()) is None or not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().sweeper
    return {"storage": sweeper.storage, "study": sweeper.study_name, "number": number,
            "pruner": OmegaConf.to_container(sweeper.pruner, resolve=True) if sweeper.pruner else None}


class TrialReporter:
    """The job's side of a trial: report an intermediate value, ask the study's pruner. Plain settings only,
    so it pickles into ddp_spawn workers; the study is opened on first use."""

    def __init__(self, trial: dict):
        self.settings = trial
        self._trial = None

    def report(self, value: float, step: int) -> bool:
        """Record `value` at `step`; True when the pruner stops the trial (recorded in the trial)."""
        import optuna

        if self._trial is None:
            from hydra.utils import instantiate

            s = self.settings
            pruner = instantiate(s["pruner"]) if s["pruner"] else optuna.pruners.NopPruner()
            # the sampler is the sweeper's business; a random one costs nothing to build here
            study = optuna.load_study(study_name=s["study"], storage=storage(s["storage"]), pruner=pruner,
                                      sampler=optuna.samplers.RandomSampler())
            self._trial = optuna.Trial(study, frozen(study, s["number"])._trial_id)
        self._trial.report(value, step)
        if prune := self._trial.should_prune():
            self._trial.set_user_attr("pruned_at", step)
        return prune


def setup_of(space: Mapping[str, Any], fixed: list[str]) -> dict:
    """What makes two sessions of a study the same experiment."""
    return {"overrides": sorted(fixed), "params": {k: str(v) for k, v in sorted(space.items())}}


def job_dir(ret) -> Path | None:
    """The output folder of a finished Hydra job."""
    return Path(ret.hydra_cfg.hydra.runtime.output_dir) if getattr(ret, "hydra_cfg", None) else None
