"""Stage `report`: one self-contained reports/index.html (images inlined) over every run of the pipeline —
test metrics, curves, confusion matrix, predictions — plus style transfer and the latest sweep leaderboard,
with the provenance of every number (git SHA, resolved config, data hash, MLflow run id)."""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from cnnlab.config import select_run
from cnnlab.io import write_text

log = logging.getLogger(__name__)

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.figs{display:flex;flex-wrap:wrap;gap:1em}
.figs figure{margin:0;max-width:48%}.figs img{max-width:100%;border:1px solid #eee}figcaption{color:#666}
.prov{color:#555;font-size:12px}pre{background:#f7f7f7;padding:.8em;overflow:auto;max-height:30em;font-size:12px}
.muted{color:#888}"""


def _img(path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))  # noqa: E731
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(k, ''))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _run_section(cfg: DictConfig) -> tuple[str, dict]:
    name = cfg.run_name
    rep, mod = Path(cfg.paths.reports_dir) / name, Path(cfg.paths.models_dir) / name
    ev, tr, prov = _json(rep / "eval/metrics.json"), _json(rep / "train/metrics.json"), _json(mod / "run.json")
    summary = {"run": name, "model": cfg.model.name, "test accuracy": ev.get("accuracy"),
               "macro F1": ev.get("macro_f1"), "ECE": ev.get("ece"), "test loss": ev.get("loss"),
               "epochs": tr.get("epochs"), "train time (s)": tr.get("time_s")}
    if not ev:
        return f"<h2>{html.escape(name)}</h2><p class=muted>not evaluated yet</p>", summary
    per_class = [{"class": k, "accuracy": v} for k, v in ev.get("per_class_accuracy", {}).items()]
    figs = rep / "eval/figures"
    config = (mod / "config.yaml").read_text() if (mod / "config.yaml").is_file() else ""
    parts = [
        f"<h2>{html.escape(name)}</h2>",
        f"<p class=prov>git {html.escape(prov.get('git_sha', '?')[:12])}"
        f"{' (dirty)' if prov.get('git_dirty') == 'True' else ''} · data {html.escape(prov.get('data_hash', '?'))}"
        f" · MLflow run {html.escape(str(prov.get('mlflow_run_id', 'not tracked')))}</p>",
        _table([{k: v for k, v in ev.items() if not isinstance(v, dict)}]),
        '<div class="figs">', _img(figs / "curves.png", "training curves"),
        _img(figs / "confusion_matrix.png", "confusion matrix (test)"),
        _img(figs / "predictions.png", "test predictions: pred (true), blue right, red wrong"),
        _img(figs / "mistakes.png", "most confident mistakes"), _img(figs / "gradcam.png", "Grad-CAM"), "</div>",
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


def _sweep_section(log_dir: Path) -> str:
    boards = sorted(log_dir.glob("**/leaderboard.csv"), key=lambda p: p.stat().st_mtime)
    if not boards:
        return ""
    with open(boards[-1]) as f:
        rows = list(csv.DictReader(f))
    return f"<h2>Latest sweep</h2><p class=prov>{html.escape(str(boards[-1].parent))}</p>{_table(rows)}"


def run(cfg: DictConfig) -> dict:
    configs = [cfg] + [select_run(cfg, name) for name in (cfg.get("runs") or {})]
    sections, rows = zip(*(_run_section(c) for c in configs))
    reports = Path(cfg.paths.reports_dir)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cnnlab report</title><style>{CSS}</style>
</head><body><h1>cnnlab report</h1><p class=prov>data: {html.escape(cfg.data.name)}</p>
<h2>Summary</h2>{_table(list(rows))}
{''.join(sections)}
{_style_section(Path(cfg.style.dir))}
{_sweep_section(Path(cfg.paths.log_dir))}
</body></html>"""
    out = reports / "index.html"
    write_text(out, page)
    log.info("report → %s", out.resolve())
    return {"runs": len(rows)}
