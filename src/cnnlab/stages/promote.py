"""Stage `promote`: a sweep's winner → a DVC experiment. Prints (with promote.run=true also runs) the
`dvc exp run -n <name> -S <override> ...` that trains the winner's settings through the whole pipeline, so it
gets its evaluation, report and dvc.lock like any experiment (`dvc exp show`, `dvc exp apply`). The winner is
the sweep's best on validation; its overrides are its job's own (.hydra/overrides.yaml)."""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab import study
from cnnlab.errors import UserError
from cnnlab.paths import project_root

log = logging.getLogger(__name__)


def _winner(cfg: DictConfig) -> tuple[str, Path]:
    """(a default experiment name, the winner's run folder)."""
    p = cfg.promote
    if p.study:
        best = study.winner(study.load(cfg.paths.studies, p.study))
        if best is None or "run" not in best.user_attrs:
            raise UserError(f"study {p.study!r} has no complete trial to promote yet")
        return f"{p.study}-trial{best.number}", Path(best.user_attrs["run"])
    if p.sweep:
        board = Path(p.sweep) / "winner.json"
    else:
        board = max(Path(cfg.paths.runs_dir).glob("*/*-sweep/winner.json"), key=lambda f: f.stat().st_mtime,
                    default=Path(cfg.paths.runs_dir) / "<none>")
    if not board.is_file():
        raise UserError(f"no finished sweep with a winner at {board.parent}: run a sweep (`cnnlab train -m "
                        "...`, hparams_search=optuna) or name one with promote.sweep=<folder> or "
                        "promote.study=<name>")
    won = json.loads(board.read_text())
    sweep = json.loads((board.parent / "sweep.json").read_text()) if (board.parent / "sweep.json").is_file() \
        else {}
    if "winner_trial" in won and sweep.get("study"):
        return f"{sweep['study']['name']}-trial{won['winner_trial']}", Path(won["run"])
    return f"{board.parent.name}-job{Path(won['run']).name}", Path(won["run"])


def run(cfg: DictConfig) -> dict:
    name, winner = _winner(cfg)
    recorded = winner / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        raise UserError(f"{recorded} is missing (the sweep ran with hydra.output_subdir=null?): the winner's "
                        "settings are unknown")
    # all of them, hparams_search=<x> too: its defaults may choose groups (model=cnn); what it sets under
    # hydra: is not part of params.yaml. Paths stay the pipeline's.
    overrides = [o for o in OmegaConf.load(recorded) if not o.lstrip("+~").startswith(("out_dir=", "hydra"))]
    # a DVC experiment name is a git ref: no spaces, colons, brackets...
    name = re.sub(r"[^\w.-]+", "-", cfg.promote.name or name).strip("-.")
    command = ["dvc", "exp", "run", "-n", name, *(a for o in overrides for a in ("-S", o))]
    print(f"winner: {winner}\n{shlex.join(command)}")
    if cfg.promote.run:
        if (code := subprocess.run(command, cwd=project_root()).returncode) != 0:
            raise UserError(f"dvc exp run failed (exit {code}); the command is above")
    return {"name": name, "winner": str(winner), "overrides": overrides, "command": command}
