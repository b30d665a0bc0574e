"""Stage `report`: one self-contained out_dir/index.html (images inlined) over every run of the pipeline —
test metrics, curves, confusion matrix, predictions — and its style transfer, with the provenance of every
number (git SHA, resolved config, data hash, MLflow run id). With report.history (not in the DVC stage, whose
inputs they are not) also every training run recorded in MLflow — DVC experiments, sweeps, runs by hand — in
one table with what each changes against its own baseline, every Optuna study in paths.studies (leaderboard,
figures, the winner's test result) and every grid sweep's leaderboard. The page is
cnnlab/templates/report.html.j2 (Jinja2). Beside it, metrics.json: the pipeline's summary, its one DVC metrics
file."""

from __future__ import annotations

import base64
import csv
import datetime
import itertools
import json
import logging
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig

from cnnlab import tracking
from cnnlab.config import select_run
from cnnlab.io import write_json, write_text
from cnnlab.paths import RunDir, anchored, data_dir, out_dir

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"  # report.html.j2, shipped inside the package
PERCENT = ("acc", "f1", "precision", "recall")  # ratios read as percentages


def _fmt(key: str, v) -> str:
    """A cell as people read it: ratios (accuracy, F1…) as % to 4 significant digits, seconds whole, other
    floats to 4 significant digits; numbers read from CSV files too."""
    if isinstance(v, str):
        for kind in (int, float):
            try:
                v = kind(v)
                break
            except ValueError:
                pass
    if v is None or isinstance(v, bool | str):
        return "" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if key.endswith(("_s", "(s)")):
        return f"{v:,.0f}"
    if any(w in key for w in PERCENT) and 0 <= v <= 1:
        return f"{100 * v:#.4g} %"
    return f"{v:.4g}"


def _table(rows: list[dict]) -> dict:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {"keys": keys, "rows": [[_fmt(k, r.get(k)) for k in keys] for r in rows]}


_ids = itertools.count()  # figure ids: each figure's zoom toggle


def _png(png: bytes | None, caption: str, wide: bool = False) -> dict:
    return {"id": f"fig{next(_ids)}", "caption": caption, "wide": wide,
            "png": base64.b64encode(png).decode() if png else ""}


def _img(path: Path, caption: str, wide: bool = False) -> dict:
    return _png(path.read_bytes() if path.is_file() else None, caption, wide)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _train_size(cfg: DictConfig) -> int | None:
    """The images a run trained on: its data's training split, or `train.per_class` of each class."""
    counts = _json(data_dir(cfg) / "manifest.json").get("class_counts", {}).get("train")
    k = cfg.train.per_class
    return sum(min(n, k) if k else n for n in counts) if counts else None


def _run_section(key: str, cfg: DictConfig) -> tuple[dict, dict]:
    """The run's section of the page, and the numbers experiments are compared by (`_metrics`)."""
    run = RunDir(Path(cfg.pipeline[key]))
    ev, tr, prov = _json(run.eval / "metrics.json"), _json(run.train / "metrics.json"), _json(run.run_json)
    summary = _metrics(ev, tr)
    if not ev:
        return {"key": key, "model": cfg.model.name, "evaluated": False}, summary
    figs = run.eval / "figures"
    n, k = _train_size(cfg), cfg.train.per_class
    return {
        "key": key, "model": cfg.model.name, "evaluated": True, "root": str(run.root),
        "train_size": "?" if n is None else f"{n:,} images" + (f" ({k} per class)" if k else ""),
        "git": prov.get("git_sha", "?")[:12] + (" (dirty)" if prov.get("git_dirty") == "True" else ""),
        "data_hash": prov.get("data_hash", "?"), "mlflow_run_id": prov.get("mlflow_run_id", "not tracked"),
        "metrics": _table([{k: v for k, v in ev.items() if not isinstance(v, dict)}]),
        "figures": [_img(figs / "curves.png", "training curves"),
                    _img(figs / "confusion_matrix.png", "confusion matrix (test)"),
                    # the grids are read at full width: their labels are 8 pt
                    _img(figs / "predictions.png", "test predictions: pred (true), blue right, red wrong",
                         True),
                    _img(figs / "mistakes.png", "most confident mistakes", True),
                    _img(figs / "gradcam.png", "Grad-CAM", True)],
        "per_class": _table([{"class": c, "accuracy": v}
                             for c, v in _json(run.eval / "per_class.json").get("accuracy", {}).items()]),
        "config": run.config.read_text() if run.config.is_file() else "",
    }, summary


def _style_section(style_dir: Path) -> list[dict]:
    return [{"name": panel.parent.name,
             "metrics": _table([{k: v for k, v in _json(panel.parent / "metrics.json").items()
                                 if not isinstance(v, dict | list)}]),
             "figures": [_img(panel, "content | style | result", True),
                         _img(panel.parent / "losses.png", "losses")]}
            for panel in sorted(style_dir.glob("**/panel.png"))]


def _sweeps_section(runs_dir: Path) -> list[dict]:
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
        out.append({"name": board.parent.name, "table": _table(rows),
                    "prov": f"{board.parent} · {' '.join(info.get('overrides', []))}",
                    "winner": win and f"winner {win.get('run')}: " + (
                        f"test accuracy {_fmt('accuracy', acc)}" if acc is not None else "not tested")})
    return out


TOP = 25  # leaderboard rows shown per study


def _studies_section(spec: str, runs_dir: Path) -> dict | None:
    """Every Optuna study in paths.studies, newest first."""
    import optuna

    from cnnlab import study as studies

    if "://" not in spec and not anchored(spec).is_file():
        return None  # no study yet: reading must not create the file
    url, storage = studies.storage_url(spec), studies.storage(spec)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    # newest first: by first trial start, then by creation order (a study without trials yet)
    summaries = [s for _, s in sorted(enumerate(summaries), reverse=True, key=lambda p: (
        p[1].datetime_start or datetime.datetime.min, p[0]))]
    sessions: dict[str, list[str]] = {}  # the sweep folders of each study
    for d in sorted(runs_dir.glob("**/sweep.json")):
        if (st := _json(d).get("study") or {}).get("storage") == url:
            sessions.setdefault(st.get("name"), []).append(d.parent.name)
    blocks = [_study_block(optuna.load_study(study_name=s.study_name, storage=storage), url,
                           sessions.get(s.study_name, [])) for s in summaries]
    return {"url": url, "blocks": blocks} if blocks else None


def _study_block(study, url: str, sessions: list[str]) -> dict:
    from cnnlab import study as studies
    from cnnlab import study_plots as plots

    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    setup = study.user_attrs.get("setup") or {}
    rows = studies.rows(study)
    best = studies.winner(study)
    run = best.user_attrs.get("run") if best else None
    test = _json(RunDir(anchored(run)).eval / "metrics.json") if run else {}
    imp = plots.importances(study)
    figs = [(plots.history(study), "objective value per trial (hollow grey: pruned) and the best so far"),
            (plots.curves(study), "intermediate values per epoch (red: pruned, x where it stopped)"),
            (plots.parallel(study), "parallel coordinates of the complete trials"),
            (imp and imp[0], "parameter importances (fANOVA): "
             + ", ".join(f"{k} {v:.2f}" for k, v in (imp[1] if imp else {}).items()))]
    return {
        "name": study.study_name,
        "prov": [f"{url} · {study.direction.name.lower()} · {counts['COMPLETE']} complete, "
                 f"{counts['PRUNED']} pruned, {counts['FAIL']} failed"
                 + (f", {counts['RUNNING']} running" if counts["RUNNING"] else "")
                 + (f" · sessions: {', '.join(sessions)}" if sessions else ""),
                 f"fixed: {' '.join(setup.get('overrides', [])) or 'none'} · search space: "
                 + ("; ".join(f"{k}: {v}" for k, v in setup.get("params", {}).items()) or "?")],
        "table": _table(rows[:TOP]), "more": max(0, len(rows) - TOP),
        "winner": best and _table([{"winner": f"trial {best.number}", "run": run, "value": best.value,
                                    **{f"test {k}": v for k, v in test.items()
                                       if isinstance(v, float | int)}}]),
        "note": "no winner yet" if not best else "" if test else "not tested yet",
        "figures": [_png(png, caption) for png, caption in figs]}


CHANGE_WIDTH = 40  # characters of one changed value (a list of widths, a long path)


def _experiments_section(cfg: DictConfig) -> dict | None:
    rows = tracking.experiments(cfg)
    if not rows:
        return None
    return {"uri": tracking.tracking_uri(cfg).split("?")[0], "table": _table([{
        "run": r["name"],
        "from": (f"DVC {r['dvc_exp']} of {r['baseline'] or '?'}" if r["dvc_exp"]
                 else f"sweep {r['sweep']}" if r["sweep"]
                 else f"dvc repro ({r['dvc_stage']})" if r["dvc_stage"] else "by hand"),
        "started": _time(r["started"]), "git": r["git"],
        "changes": ", ".join(f"{k}={v[:CHANGE_WIDTH]}" for k, v in r["changes"].items()) or "(baseline)",
        "val/acc (best)": r["val_acc"], "test accuracy": r["test_acc"],
        "other evaluations": ", ".join(f"{n} {_fmt('accuracy', a)}" for n, a in r["evaluations"].items()),
        "train (s)": r["seconds"], "status": r["state"], "run id": r["run_id"][:8]} for r in rows])}


def _time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def run(cfg: DictConfig) -> dict:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    pipeline = [("scratch", cfg)] + [(name, select_run(cfg, name)) for name in cfg.runs
                                     if name in cfg.pipeline]
    sections, numbers = zip(*(_run_section(key, c) for key, c in pipeline))
    summary = {key: m for (key, _), m in zip(pipeline, numbers)}
    # the training set's size beside the figures: transfer learns from 1,000 images, scratch from 55,000
    rows = [{"run": key, "model": c.model.name, "training images": _train_size(c), **summary[key]}
            for key, c in pipeline]
    runs_dir = Path(cfg.paths.runs_dir)
    history = cfg.report.history
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined)
    page = env.get_template("report.html.j2").render(
        data_name=cfg.data.name, pipeline=_table(rows), runs=sections,
        style=_style_section(Path(cfg.pipeline.style)),
        experiments=_experiments_section(cfg) if history else None,
        studies=_studies_section(str(cfg.paths.studies), runs_dir) if history else None,
        sweeps=_sweeps_section(runs_dir) if history else [])
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
