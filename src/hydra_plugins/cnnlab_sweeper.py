"""cnnlab's Optuna sweeper for Hydra (`hydra/sweeper=optuna`, conf/hydra/sweeper/optuna.yaml), on Optuna's
ask/tell API. It lives here because Hydra loads plugins only from the hydra_plugins package; the study logic
is cnnlab.study's. Hydra's own Optuna plugin (hydra-optuna-sweeper 1.3) pins Optuna < 3 and has no pruning."""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from cnnlab import study as studies
from cnnlab import sweep
from cnnlab.errors import UserError
from cnnlab.paths import TRIAL_ENV

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    def __init__(self, storage: str, study_name: str, direction: str, n_trials: int, n_jobs: int,
                 max_failures: int, sampler: DictConfig | None, pruner: DictConfig | None,
                 params: DictConfig | None) -> None:
        self.storage, self.study_name, self.direction = storage, study_name, direction
        self.n_trials, self.n_jobs, self.max_failures = n_trials, n_jobs, max_failures
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.params = OmegaConf.to_container(params, resolve=True) if params else {}

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def _sampler(self, space: dict, asked: int):
        from hydra.utils import instantiate

        if not self.sampler_cfg:
            return None
        extra = {}
        if self.sampler_cfg.get("seed") is not None:  # a continued study must not replay its first session
            extra["seed"] = self.sampler_cfg.seed + asked
        if self.sampler_cfg._target_.endswith(("GridSampler", "grid_sampler")):  # the search space's choices
            if bad := [k for k, d in space.items() if not hasattr(d, "choices")]:
                raise UserError(f"the grid sampler needs choice(...) for every parameter, not for {bad}")
            extra["search_space"] = {k: list(d.choices) for k, d in space.items()}
        return instantiate(self.sampler_cfg, **extra)

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self._sweep(arguments)
        except UserError as e:
            sweep.refuse(self.config, e)

    def _sweep(self, arguments: list[str]) -> Any:
        from optuna.trial import TrialState

        # the command line's own sweeps (a,b / interval(...)) join the search space; plain values are fixed
        parser = OverridesParser.create()
        params = dict(self.params)
        fixed = []
        for o in parser.parse_overrides(arguments):
            if o.is_sweep_override():
                params[o.get_key_element()] = o.input_line.split("=", 1)[1]
            else:
                fixed.append(o.input_line)
        space, fixed_params = studies.search_space(params)
        fixed += fixed_params
        if not space:
            raise UserError("hparams_search: hydra.sweeper.params is empty: nothing to search")
        from hydra.utils import instantiate

        sweep.recover(self.config)  # first: a broken MLflow store is refused before the study is touched
        study = studies.open_study(self.storage, self.study_name, self.direction,
                                   pruner=instantiate(self.pruner_cfg) if self.pruner_cfg else None,
                                   setup=studies.setup_of(params, fixed))
        study.sampler = self._sampler(space, len(study.trials)) or study.sampler
        studies.recover(study)
        sweep.start(self.config)  # only now: a study that refuses this session leaves no MLflow run
        done = studies.finished(study)
        if done >= self.n_trials:
            log.info("study %s already has %d finished trials (n_trials=%d counts the study's total): raise "
                     "hydra.sweeper.n_trials to extend it", self.study_name, done, self.n_trials)
            return []
        log.info("study %s (%s): %d finished trials, running %d more to reach n_trials=%d", self.study_name,
                 studies.storage_url(self.storage), done, self.n_trials - done, self.n_trials)
        returns, job, failures = [], 0, 0
        while (left := self.n_trials - studies.finished(study)) > 0:
            batch = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            for t in batch:
                t.set_user_attr("owner", studies.owner())
            overrides = [[*fixed, *(f"{k}={v}" for k, v in t.params.items()),
                          f"++hydra.job.env_set.{TRIAL_ENV}={t.number}"] for t in batch]
            results = self.launcher.launch(overrides, initial_job_idx=job)
            job += len(batch)
            for t, ret in zip(batch, results):
                ok = ret.status.name == "COMPLETED"
                if not ok:  # the job's one-line error (a UserError) or its exception
                    log.error("trial %d failed: %s", t.number, ret._return_value)
                pruned = "pruned_at" in studies.frozen(study, t.number).user_attrs  # the job's reporter says
                state, told = studies.outcome(ret._return_value if ok else None, pruned)
                if (run := studies.job_dir(ret)) is not None:
                    t.set_user_attr("run", os.path.relpath(run))
                study.tell(t, told, state=state)
                sweep.tag_job(self.config, run, {"optuna_study": self.study_name,
                                                 "optuna_trial": str(t.number), "optuna_state": state.name})
                failures = failures + 1 if state == TrialState.FAIL else 0
            returns.append(results)
            if failures >= self.max_failures:
                raise UserError(f"study {self.study_name}: {failures} trials in a row failed (see the log "
                                "above); stopping (hydra.sweeper.max_failures)")
        return returns
