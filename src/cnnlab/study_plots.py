"""Figures of an Optuna study for the report, as PNG bytes; None where there is nothing to draw. Built on
`matplotlib.figure.Figure` (no pyplot, no GUI backend), except Optuna's own parallel-coordinates plot."""

from __future__ import annotations

import io
import logging
import warnings
from itertools import accumulate

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

log = logging.getLogger(__name__)

SIZE, DPI = (5.5, 3.2), 100
DONE, PRUNED = "tab:blue", "tab:red"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    fig.clear()
    return buf.getvalue()


def _axes():
    fig = Figure(figsize=SIZE, layout="constrained")
    return fig, fig.subplots()


def _trials(study, *states: str) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=tuple(TrialState[s] for s in states))


def history(study) -> bytes | None:
    """Objective value per trial number: complete dots, pruned hollow grey (Optuna gives a pruned trial its
    last intermediate value), and the best so far."""
    from optuna.study import StudyDirection

    if not (done := _trials(study, "COMPLETE")):
        return None
    fig, ax = _axes()
    pruned = [t for t in _trials(study, "PRUNED") if t.value is not None]
    ax.plot([t.number for t in pruned], [t.value for t in pruned], "o", mfc="none", color="grey",
            label="pruned (last value)")
    ax.plot([t.number for t in done], [t.value for t in done], "o", color=DONE, label="complete")
    best = max if study.direction == StudyDirection.MAXIMIZE else min
    ax.step([t.number for t in done], list(accumulate((t.value for t in done), best)), where="post",
            color="black", lw=1, label="best so far")
    ax.set(xlabel="trial", ylabel="objective value")
    ax.legend(fontsize=8)
    return _png(fig)


def curves(study) -> bytes | None:
    """Intermediate values (validation metric per epoch) of every trial; an x where a pruned one stopped."""
    trials = [t for t in _trials(study, "COMPLETE", "PRUNED") if t.intermediate_values]
    if not trials:
        return None
    fig, ax = _axes()
    for t in trials:
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        color = PRUNED if t.state.name == "PRUNED" else DONE
        ax.plot(steps, values, color=color, alpha=0.6, lw=1)
        if color == PRUNED:
            ax.plot(steps[-1], values[-1], "x", color=PRUNED)
    ax.set(xlabel="epoch", ylabel="intermediate value")
    ax.legend(handles=[Line2D([], [], color=DONE, label="complete"),
                       Line2D([], [], color=PRUNED, marker="x", label="pruned (x: stopped)")], fontsize=8)
    return _png(fig)


def parallel(study) -> bytes | None:
    """Optuna's parallel-coordinates plot of the complete trials (categorical strings included)."""
    if not any(t.params for t in _trials(study, "COMPLETE")):
        return None
    import matplotlib

    matplotlib.use("Agg")  # Optuna draws through pyplot: never let it pick a GUI backend
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    fig = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            fig = plot_parallel_coordinate(study).figure
        fig.set_size_inches(*SIZE)
        for cax in fig.axes:  # Optuna's colorbar sits on the last axis' tick labels: move it right
            if cax.get_label() == "<colorbar>":
                x, y, w, h = cax.get_position().bounds
                cax.set_position([x + 0.1, y, w, h])
        return _png(fig)
    except Exception as e:  # a figure is not worth failing the report for
        log.debug("no parallel-coordinates plot of study %s: %s", study.study_name, e)
        return None
    finally:
        if fig is not None:
            plt.close(fig)  # pyplot keeps every figure it made until closed


def importances(study) -> tuple[bytes, dict] | None:
    """fANOVA parameter importances (seeded: the same study gives the same page) as a bar chart, and the
    numbers; None where they cannot be computed (under 2 complete trials, no parameter that varies)."""
    import optuna

    if len(_trials(study, "COMPLETE")) < 2:
        return None
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except Exception as e:  # e.g. every complete trial with the same parameters
        log.debug("no parameter importances for study %s: %s", study.study_name, e)
        return None
    if not imp:
        return None
    fig, ax = _axes()
    names = list(imp)[::-1]  # most important on top
    ax.barh(names, [imp[n] for n in names], color=DONE)
    ax.set(xlabel="importance (fANOVA)")
    return _png(fig), imp
