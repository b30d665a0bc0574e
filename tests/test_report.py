"""The report on its own: the pipeline's sections and summary metrics, and with report.history every training
run in MLflow (what differs between them, DVC experiment names) and every sweep's leaderboard."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from cnnlab.io import write_csv, write_json
from cnnlab.paths import RunDir
from cnnlab.stages import report
from cnnlab.tracking import experiment_id, tracking_uri


def test_pipeline_summary_experiments_and_every_sweep(cfg, workdir):
    c = cfg("out_dir=page")
    for key, acc in (("scratch", 0.9), ("transfer", 0.8)):
        run = RunDir(c.pipeline[key])
        write_json(run.eval / "metrics.json", {"accuracy": acc, "macro_f1": acc - 0.1, "loss": 0.3})
        write_json(run.train / "metrics.json", {"best_val/acc": acc + 0.01, "epochs": 3, "time_s": 12.5})
    client = MlflowClient(tracking_uri(c))
    exp = experiment_id(c, tracking_uri(c))
    for name, lr, acc in (("happy-fox", "0.001", 0.9), ("sad-owl", "0.01", 0.7)):
        r = client.create_run(exp, run_name=f"{name}:seed", tags={"data_hash": "abc", "dvc_exp_name": name})
        client.log_param(r.info.run_id, "optimizer.lr", lr)
        client.log_param(r.info.run_id, "seed", "42")  # the same in both: not a difference
        client.log_metric(r.info.run_id, "test/accuracy", acc)
    for sweep in ("10-00-00-train-sweep", "11-00-00-train-sweep"):
        write_csv([{"job": 0, "overrides": "optimizer.lr=0.1", "val/acc": 0.5}],
                  workdir / "runs/2026-11-27" / sweep / "leaderboard.csv")

    summary = report.run(c)
    assert summary == json.loads((workdir / "page/metrics.json").read_text())
    assert summary["scratch"]["test_accuracy"] == 0.9 and summary["transfer"]["best_val_acc"] == 0.81
    page = (workdir / "page/index.html").read_text()
    assert "happy-fox" in page and "sad-owl" in page and "optimizer.lr=0.01" in page and "seed=42" not in page
    assert "10-00-00-train-sweep" in page and "11-00-00-train-sweep" in page  # every sweep, not the latest

    quiet = report.run(cfg("out_dir=page2", "report.history=false"))  # the DVC stage: its own inputs only
    assert quiet == summary and "happy-fox" not in (workdir / "page2/index.html").read_text()


def _study(db, workdir) -> str:
    """A small real study: 8 trials (a float and a list-valued categorical), 2 pruned, 1 failed; the winner's
    run folder has its test result. Returns the winner's run."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState

    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="lr-widths", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("setup", {"direction": "maximize", "overrides": ["model=tiny"],
                                  "params": {"optimizer.lr": "interval(1e-4, 1e-1)", "model.widths": "..."}})
    space = {"optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True),
             "model.widths": CategoricalDistribution(["[8,16,32]", "[16,32,64]"])}
    for i in range(8):
        t = study.ask(space)
        t.set_user_attr("run", f"runs/2026-11-27/12-00-00-train-sweep/{i}")
        if i == 7:
            study.tell(t, state=TrialState.FAIL)
            continue
        pruned = i in (2, 5)
        for epoch in range(1, 2 if pruned else 4):
            t.report(0.3 + 0.05 * i + 0.02 * epoch, epoch)
        study.tell(t, state=TrialState.PRUNED) if pruned else study.tell(t, 0.3 + 0.05 * i + 0.06)
    winner = study.best_trial.user_attrs["run"]
    write_json(RunDir(workdir / winner).eval / "metrics.json", {"accuracy": 0.91, "macro_f1": 0.9})
    return winner


def test_studies_with_figures_and_grid_sweeps_apart(cfg, workdir):
    from cnnlab.study import storage_url

    db = workdir / "studies.db"
    winner = _study(db, workdir)
    day = workdir / "runs/2026-11-27"
    plain = day / "10-00-00-train-sweep"  # a grid sweep
    write_json(plain / "sweep.json", {"overrides": ["optimizer.lr=0.1,0.01"], "study": None})
    write_csv([{"job": 0, "overrides": "optimizer.lr=0.1", "val/acc": 0.55, "run": "runs/x/0"}],
              plain / "leaderboard.csv")
    write_json(plain / "winner.json", {"run": "runs/x/0", "test": {"accuracy": 0.77}})
    session = day / "12-00-00-train-sweep"  # an Optuna session: its leaderboard is the study's
    write_json(session / "sweep.json", {"study": {"storage": storage_url(str(db)), "name": "lr-widths"}})
    write_csv([{"trial": 6, "val/acc": 0.123456}], session / "leaderboard.csv")

    report.run(cfg("out_dir=page", f"paths.studies={db}"))
    page = (workdir / "page/index.html").read_text()
    studies, grid = page.split("<h2>Studies</h2>")[1].split("<h2>Grid sweeps</h2>")
    assert "lr-widths" in studies and "PRUNED" in studies and "FAIL" in studies and "[8,16,32]" in studies
    assert "5 complete, 2 pruned, 1 failed" in studies and "sessions: 12-00-00-train-sweep" in studies
    assert winner in studies and "91.00 %" in studies and "not tested yet" not in studies
    for caption in ("objective value per trial", "intermediate values per epoch", "parallel coordinates",
                    "parameter importances"):
        assert f'<img alt="{caption}' in studies, caption
    assert studies.count("data:image/png;base64,") == 4
    assert "10-00-00-train-sweep" in grid and "optimizer.lr=0.1" in grid and "77.00 %" in grid
    assert "12-00-00-train-sweep" not in grid and "0.1235" not in page


def test_no_studies_file_no_section(cfg, workdir):
    report.run(cfg("out_dir=page", "paths.studies=nope/optuna.db"))
    assert "<h2>Studies</h2>" not in (workdir / "page/index.html").read_text()
    assert not (workdir / "nope").exists()
