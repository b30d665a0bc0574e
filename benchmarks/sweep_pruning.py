"""Does pruning pay? The same TPE search with and without a pruner, over sampler seeds, through the real CLI
(`cnnlab train hparams_search=optuna ...`) in a scratch folder (docs/BENCHMARKS.md).

    .venv/bin/python benchmarks/sweep_pruning.py --workdir /tmp/sweep_bench --seeds 1 2 3 --trials 30

Per sweep: trained epochs (compute), wall time, best validation accuracy, the winner's test accuracy (tested
once, after the search). Per seed: how much of the unpruned sweep's compute the pruned one needed to come
within `--tolerance` of the unpruned sweep's best validation accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import optuna

CNNLAB = str(Path(sys.executable).with_name("cnnlab"))

# Fashion-MNIST, builder CNN; a 3,000-image training subset and a 2,000-image validation split keep 6
# sweeps x 30 trials inside an hour of a 2-core CPU.
# The search space is conf/hparams_search/cnn.yaml's: lr, weight decay, widths, label smoothing.
BASE = ["data=fashion_mnist", "data.val_size=2000", "train.per_class=300", "hparams_search=cnn",
        "tracking.enabled=false", "evaluate.gradcam=0"]


def sweep(workdir: Path, name: str, seed: int, trials: int, epochs: int, pruner: str,
          extra: list[str]) -> dict:
    args = [*BASE, f"trainer.max_epochs={epochs}", f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweeper.study_name={name}", f"hydra.sweeper.sampler.seed={seed}",
            f"hydra/sweeper/pruner={pruner}", *extra]
    # a study already complete is not run again (n_trials is its total); the sweep still tests its winner once
    subprocess.run([CNNLAB, "train", *args], cwd=workdir, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")
    trials_ = sorted(study.trials, key=lambda t: t.number)
    # the search's wall time, from the study itself: first trial's start to the last one's end
    end, start = max(t.datetime_complete for t in trials_), min(t.datetime_start for t in trials_)
    wall = (end - start).total_seconds()
    curve, spent, best = [], 0, 0.0  # best validation accuracy against epochs trained so far
    for t in trials_:
        spent += len(t.intermediate_values)
        if t.state.name == "COMPLETE":
            best = max(best, t.value)
        curve.append((spent, best))
    winner = max(workdir.glob("runs/*/*-train-sweep/winner.json"), key=lambda p: p.stat().st_mtime)
    return {"name": name, "seed": seed, "pruner": pruner, "epochs": spent, "wall_s": round(wall, 1),
            "pruned": sum(t.state.name == "PRUNED" for t in trials_), "best_val": study.best_value,
            "test": json.loads(winner.read_text())["test"].get("accuracy"), "curve": curve}


def compute_to_reach(curve: list, target: float) -> int | None:
    return next((spent for spent, best in curve if best >= target), None)


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4g} ± {statistics.stdev(xs):.2g}" if len(xs) > 1 else f"{xs[0]:.4g}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=6, help="maximum epochs per trial")
    ap.add_argument("--pruner", default="median", help="hydra/sweeper/pruner choice to compare with none")
    ap.add_argument("--tolerance", type=float, default=0.003, help="0.3 points of accuracy")
    ap.add_argument("--pruned-trials", type=int, default=None,
                    help="trials of the pruned arm (default --trials): more trials for the compute it saves")
    ap.add_argument("--label", default="", help="names the pruned arm's studies (e.g. a pruner setting)")
    ap.add_argument("overrides", nargs="*",
                    help="for the pruned arm, e.g. hydra.sweeper.pruner.n_warmup_steps=1")
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run([CNNLAB, "prepare", *BASE[:2]], cwd=a.workdir, check=True, stdout=subprocess.DEVNULL)
    results = []
    for seed in a.seeds:
        for pruner in ("none", a.pruner):  # the unpruned studies are complete after one run: reused
            label = f"{pruner}{a.label}" if pruner != "none" else pruner
            trials = a.trials if pruner == "none" else a.pruned_trials or a.trials
            results.append(sweep(a.workdir, f"bench-{label}-s{seed}", seed, trials, a.epochs, pruner,
                                 a.overrides if pruner != "none" else []))
            r = results[-1]
            print(f"seed {seed} {pruner:>9}: {r['epochs']} epochs, {r['wall_s']} s, {r['pruned']} pruned, "
                  f"best val {r['best_val']:.4f}, winner test {r['test']:.4f}", flush=True)
        full, pruned = results[-2], results[-1]
        reach = compute_to_reach(pruned["curve"], full["best_val"] - a.tolerance)
        pruned["reach_fraction"] = None if reach is None else round(reach / full["epochs"], 3)
        print(f"seed {seed}: pruned sweep within {a.tolerance:.3f} of unpruned best after "
              f"{reach} of the unpruned {full['epochs']} epochs ({pruned['reach_fraction']})", flush=True)
    (a.workdir / f"sweep_pruning-{a.pruner}{a.label}.json").write_text(json.dumps(results, indent=1))
    print("\n| pruner | trained epochs | wall s | pruned trials | best val acc | winner test acc | "
          "compute to reach unpruned best − tol |\n| --- | --- | --- | --- | --- | --- | --- |")
    for pruner in ("none", a.pruner):
        rs = [r for r in results if r["pruner"] == pruner]
        fr = [r["reach_fraction"] for r in rs if r.get("reach_fraction") is not None]
        print(f"| {pruner} | {mean_std([r['epochs'] for r in rs])} | {mean_std([r['wall_s'] for r in rs])} | "
              f"{mean_std([r['pruned'] for r in rs])} | {mean_std([r['best_val'] for r in rs])} | "
              f"{mean_std([r['test'] for r in rs])} | "
              f"{(mean_std(fr) + f' ({len(fr)}/{len(rs)} reached)') if fr else '—'} |")


if __name__ == "__main__":
    main()
