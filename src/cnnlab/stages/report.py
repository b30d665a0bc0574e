"""Stage `report`: one self-contained out_dir/index.html (images inlined) over every run of the pipeline —
test metrics, curves, confusion matrix, predictions — and its style transfer, with the provenance of every
number (git SHA, resolved config, data hash, MLflow run id). With report.history (not in the DVC stage, whose
inputs they are not) also every training run recorded in MLflow — DVC experiments, sweeps, runs by hand — in
one table with what differs between them, every Optuna study in paths.studies (leaderboard, figures, the
winner's test result) and every grid sweep's leaderboard. Beside it, metrics.json: the pipeline's summary,
its one DVC metrics file."""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import logging
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig

from cnnlab import tracking
from cnnlab.config import select_run
from cnnlab.io import write_json, write_text
from cnnlab.paths import RunDir, anchored, out_dir

log = logging.getLogger(__name__)

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.figs{display:flex;flex-wrap:wrap;gap:1em}
.figs figure{margin:0;max-width:48%}.figs img{max-width:100%;border:1px solid #eee}figcaption{color:#666}
.prov{color:#555;font-size:12px}pre{background:#f7f7f7;padding:.8em;overflow:auto;max-height:30em;font-size:12px}
.muted{color:#888}"""


def _img(path: Path, caption: str) -> str:
    return _png(path.read_bytes() if path.is_file() else None, caption)


def _png(png: bytes | None, caption: str) -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _cell(v) -> str:
    if isinstance(v, float):  # significant digits for the small ones (a learning rate of 1e-4)
        return f"{v:.4f}" if v == 0 or abs(v) >= 0.01 else f"{v:.3g}"
    return html.escape("" if v is None else str(v))


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _run_section(key: str, cfg: DictConfig) -> tuple[str, dict]:
    """The run's section of the page, and the numbers experiments are compared by (`_metrics`)."""
    run = RunDir(Path(cfg.pipeline[key]))
    ev, tr, prov = _json(run.eval / "metrics.json"), _json(run.train / "metrics.json"), _json(run.run_json)
    summary = _metrics(ev, tr)
    if not ev:
        return f"<h2>{html.escape(key)}</h2><p class=muted>not evaluated yet</p>", summary
    per_class = [{"class": k, "accuracy": v}
                 for k, v in _json(run.eval / "per_class.json").get("accuracy", {}).items()]
    figs = run.eval / "figures"
    config = run.config.read_text() if run.config.is_file() else ""
    parts = [
        f"<h2>{html.escape(key)}: {html.escape(cfg.model.name)}</h2>",
        f"<p class=prov>{html.escape(str(run.root))} · git {html.escape(prov.get('git_sha', '?')[:12])}"
        f"{' (dirty)' if prov.get('git_dirty') == 'True' else ''}"
        f" · data {html.escape(prov.get('data_hash', '?'))}"
        f" · MLflow run {html.escape(str(prov.get('mlflow_run_id', 'not tracked')))}</p>",
        _table([{k: v for k, v in ev.items() if not isinstance(v, dict)}]),
        '<div class="figs">', _img(figs / "curves.png", "training curves"),
        _img(figs / "confusion_matrix.png", "confusion matrix (test)"),
        _img(figs / "predictions.png", "test predictions: pred (true), blue right, red wrong"),
        _img(figs / "mistakes.png", "most confident mistakes"), _img(figs / "gradcam.png", "Grad-CAM"),
        "</div>",
        f"<details><summary>per-class accuracy</summary>{_table(per_class)}</details>",
        f"<details><summary>resolved config</summary><pre>{html.escape(config)}</pre></details>",
    ]
    return "\n".join(parts), summary


def _style_section(style_dir: Path) -> str:
    panels = sorted(style_dir.glob("**/panel.png"))
    out = []
    for panel in panels:
        m = _json(panel.parent / "metrics.json")
        out += [f"<h3>{html.escape(panel.parent.name)}</h3>",
                _table([{k: v for k, v in m.items() if not isinstance(v, (dict, list))}]),
                '<div class="figs">', _img(panel, "content | style | result"),
                _img(panel.parent / "losses.png", "losses"), "</div>"]
    return ("<h2>Neural style transfer</h2>" + "\n".join(out)) if out else ""


def _sweeps_section(runs_dir: Path) -> str:
    """Plain grid sweeps; an Optuna sweep's sessions are listed under their study (`_studies_section`)."""
    boards = sorted(runs_dir.glob("**/leaderboard.csv"), key=lambda p: p.stat().st_mtime, reverse=True)
    out = []
    for board in boards:
        info = _json(board.parent / "sweep.json")
        if info.get("study"):
            continue
        with open(board) as f:
            rows = list(csv.DictReader(f))
        win = _json(board.parent / "winner.json")
        acc = win.get("test", {}).get("accuracy")
        won = (f"<p>winner {html.escape(str(win.get('run')))}: "
               f"{f'test accuracy {acc:.4f}' if acc is not None else 'not tested'}</p>" if win else "")
        out.append(f"<h3>{html.escape(board.parent.name)}</h3><p class=prov>{html.escape(str(board.parent))}"
                   f" · {html.escape(' '.join(info.get('overrides', [])))}</p>{_table(rows)}{won}")
    return ("<h2>Grid sweeps</h2>" + "\n".join(out)) if out else ""


TOP = 25  # leaderboard rows shown per study


def _studies_section(spec: str, runs_dir: Path) -> str:
    """Every Optuna study in paths.studies, newest first."""
    import optuna

    from cnnlab import study as studies

    if "://" not in spec and not anchored(spec).is_file():
        return ""  # no study yet: reading must not create the file
    url, storage = studies.storage_url(spec), studies.storage(spec)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    # newest first: by first trial start, then by creation order (a study without trials yet)
    summaries = [s for _, s in sorted(enumerate(summaries), reverse=True, key=lambda p: (
        p[1].datetime_start or datetime.datetime.min, p[0]))]
    sessions: dict[str, list[str]] = {}  # the sweep folders of each study
    for d in sorted(runs_dir.glob("**/sweep.json")):
        if (st := _json(d).get("study") or {}).get("storage") == url:
            sessions.setdefault(st.get("name"), []).append(d.parent.name)
    out = [_study_block(optuna.load_study(study_name=s.study_name, storage=storage), url,
                        sessions.get(s.study_name, [])) for s in summaries]
    return (f"<h2>Studies</h2><p class=prov>Optuna studies in {html.escape(url)}</p>" + "\n".join(out)
            if out else "")


def _study_block(study, url: str, sessions: list[str]) -> str:
    from cnnlab import study as studies
    from cnnlab import study_plots as plots

    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    setup = study.user_attrs.get("setup") or {}
    rows = studies.rows(study)
    best = studies.winner(study)
    run = best.user_attrs.get("run") if best else None
    test = _json(RunDir(anchored(run)).eval / "metrics.json") if run else {}
    won = "<p class=muted>no winner yet</p>" if not best else (
        _table([{"winner": f"trial {best.number}", "run": run, "value": best.value,
                 **{f"test {k}": v for k, v in test.items() if isinstance(v, float | int)}}])
        + ("" if test else "<p class=muted>not tested yet</p>"))
    more = f"<p class=muted>and {len(rows) - TOP} more trials</p>" if len(rows) > TOP else ""
    imp = plots.importances(study)
    figs = [(plots.history(study), "objective value per trial (hollow grey: pruned) and the best so far"),
            (plots.curves(study), "intermediate values per epoch (red: pruned, x where it stopped)"),
            (plots.parallel(study), "parallel coordinates of the complete trials"),
            (imp and imp[0], "parameter importances (fANOVA): "
             + ", ".join(f"{k} {v:.2f}" for k, v in (imp[1] if imp else {}).items()))]
    return "\n".join([
        f"<h3>{html.escape(study.study_name)}</h3>",
        f"<p class=prov>{html.escape(url)} · {study.direction.name.lower()} · {counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed"
        + (f", {counts['RUNNING']} running" if counts["RUNNING"] else "")
        + (f" · sessions: {html.escape(', '.join(sessions))}" if sessions else "") + "</p>",
        f"<p class=prov>fixed: {html.escape(' '.join(setup.get('overrides', [])) or 'none')} · search space: "
        f"{html.escape('; '.join(f'{k}: {v}' for k, v in setup.get('params', {}).items()) or '?')}</p>",
        _table(rows[:TOP]) + more,
        won, f'<div class="figs">{"".join(_png(png, caption) for png, caption in figs)}</div>'])


# What tells experiments apart; paths, tracking and the other commands' settings do not change a model.
COMPARED = ("seed", "model.", "optimizer.", "scheduler.", "train.", "trainer.", "data.", "deterministic")


def _experiments_section(cfg: DictConfig) -> str:
    runs = tracking.training_runs(cfg)
    if not runs:
        return ""
    params = [{k: v for k, v in r.data.params.items() if k.startswith(COMPARED)} for r in runs]
    varying = sorted(k for k in set().union(*params) if len({p.get(k) for p in params}) > 1)
    rows = []
    for r, p in zip(runs, params):
        t, m = r.data.tags, r.data.metrics
        rows.append({"MLflow run": r.info.run_name, "started": _time(r.info.start_time),
                     "DVC experiment": t.get("dvc_exp_name", ""),
                     "baseline": t.get("dvc_baseline_rev", "")[:7], "sweep": t.get("sweep_id", ""),
                     "git": t.get("git_sha", "")[:7] + ("*" if t.get("git_dirty") == "True" else ""),
                     "differs": ", ".join(f"{k}={p[k]}" for k in varying if k in p),
                     "val/acc": m.get("val/acc"), "test/accuracy": m.get("test/accuracy"),
                     "status": r.info.status.lower(), "run id": r.info.run_id})
    return (f"<h2>Experiments</h2><p class=prov>every training run in "
            f"{html.escape(tracking.tracking_uri(cfg))} (newest first; * = uncommitted changes); open one "
            f"with the MLflow UI</p>{_table(rows)}")


def _time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def run(cfg: DictConfig) -> dict:
    pipeline = [("scratch", cfg)] + [(name, select_run(cfg, name)) for name in cfg.runs
                                     if name in cfg.pipeline]
    sections, numbers = zip(*(_run_section(key, c) for key, c in pipeline))
    summary = {key: m for (key, _), m in zip(pipeline, numbers)}
    rows = [{"run": key, "model": c.model.name, **summary[key]} for key, c in pipeline]
    runs_dir = Path(cfg.paths.runs_dir)
    history = (_experiments_section(cfg) + _studies_section(str(cfg.paths.studies), runs_dir)
               + _sweeps_section(runs_dir) if cfg.report.history else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cnnlab report</title>\
<style>{CSS}</style>
</head><body><h1>cnnlab report</h1><p class=prov>data: {html.escape(cfg.data.name)}</p>
<h2>The pipeline</h2>{_table(rows)}
{''.join(sections)}
{_style_section(Path(cfg.pipeline.style))}
{history}
</body></html>"""
    out = out_dir(cfg)
    write_text(out / "index.html", page)
    write_json(out / "metrics.json", summary)
    log.info("report → %s", (out / "index.html").resolve())
    return summary


def _metrics(ev: dict, tr: dict) -> dict:
    """The numbers experiments are compared by, from a run's eval and train metrics. One file for the
    whole pipeline, each name once (`scratch.test_accuracy`): `dvc exp show` needs no path in its columns."""
    pick = {"test_accuracy": ev.get("accuracy"), "test_macro_f1": ev.get("macro_f1"),
            "test_loss": ev.get("loss"), "test_ece": ev.get("ece"), "best_val_acc": tr.get("best_val/acc"),
            "epochs": tr.get("epochs"), "train_s": tr.get("time_s")}
    return {k: v for k, v in pick.items() if v is not None}
