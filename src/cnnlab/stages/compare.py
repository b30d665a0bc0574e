"""`cnnlab compare`: every training run recorded in MLflow — DVC experiments, sweeps, runs by hand — as one
table that fits 120 columns: name, state, what it changes against its own baseline (keys abbreviated to their
last part), the best val accuracy of its epochs, its own test accuracy, seconds trained. `dvc exp show` gives
every param a column: 167–268 columns for the default pipeline, even with --only-changed and --drop."""

from __future__ import annotations

from omegaconf import DictConfig

from cnnlab import tracking

WIDTH = 120  # columns, whatever the terminal (or none: CI, a pipe)


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:#.4g} %"


def run(cfg: DictConfig) -> dict:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    rows = tracking.experiments(cfg)
    store = tracking.tracking_uri(cfg).split("?")[0]  # less the SQLite lock timeout
    table = Table(box=box.SIMPLE_HEAD, title=f"training runs in {store}, newest first",
                  caption="changes: against the run's DVC baseline, its sweep's shared config, else conf/")
    table.add_column("run", max_width=44, overflow="fold")
    table.add_column("state")
    table.add_column("changes", ratio=1, overflow="fold")
    for name in ("val acc", "test acc", "time s"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        changes = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in r["changes"].items())
        table.add_row(r["name"], r["state"], changes or "(baseline)", _pct(r["val_acc"]), _pct(r["test_acc"]),
                      "" if r["seconds"] is None else f"{r['seconds']:.0f}")
    Console(width=WIDTH).print(table if rows else "no training runs recorded yet")
    return {r["run_id"]: {"val_acc": r["val_acc"], "test_acc": r["test_acc"]} for r in rows}
