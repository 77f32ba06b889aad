"""Where the neighbouring batch sizes say a batch size's optimal learning rate lies."""
from __future__ import annotations

import math

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from tuner.fit._optimum import BEST_TRIALS, NO_SIGNAL, QUADRATIC, BatchOptimum
from tuner.search._valley import fit_of
from tuner.trials import LR, Outcome, by_batch_size, outcome_of

# Theory bounds the slope of log lr* against log B between 0 (saturated) and 1 (linear scaling);
# with a single neighbour to go by, take the middle.
_SLOPE_RANGE = (0.0, 1.0)
_SLOPE_UNKNOWN = 0.5


def lr_hint(study: optuna.Study, batch_size: int) -> float | None:
    """The learning rate that the other batch sizes' optima point to (``tuner.fit``'s estimate from
    their trials so far, or their best trial while too few ran for one), interpolated
    on log-log axes between the nearest batch sizes below and above (extrapolated beyond them with
    their slope, kept within 0..1); None before any other batch size has a complete trial."""
    best = _best_lr_per_batch_size(study)
    best.pop(batch_size, None)
    if not best:
        return None
    x = math.log(batch_size)
    points = sorted((math.log(b), math.log(lr)) for b, lr in best.items())
    below = [p for p in points if p[0] < x]
    above = [p for p in points if p[0] > x]
    if below and above:
        return math.exp(_on_line(below[-1], above[0], x))
    side = below[-2:] if below else above[:2]
    nearest = below[-1] if below else above[0]
    slope = _SLOPE_UNKNOWN if len(side) < 2 else _slope(*side)
    return math.exp(nearest[1] + min(max(slope, _SLOPE_RANGE[0]), _SLOPE_RANGE[1]) * (x - nearest[0]))


def _best_lr_per_batch_size(study: optuna.Study) -> dict[int, float]:
    maximize = study.direction == StudyDirection.MAXIMIZE
    finished = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=True)
    best = {}
    for batch_size, trials in by_batch_size(finished).items():
        usable = [t for t in trials if outcome_of(t) == Outcome.COMPLETE and _positive(t.params.get(LR))]
        if not usable:
            continue
        fit = fit_of(trials, maximize)
        if fit is not None and NO_SIGNAL in fit.flags:
            continue  # no signal: its best run is the luckiest of the noise, and says nothing of its optimum
        best[batch_size] = _estimate(fit) or min(usable, key=lambda t: (-1.0 if maximize else 1.0) * t.value).params[LR]
    return best


def _estimate(fit: BatchOptimum | None) -> float | None:
    """Where the fit puts the optimum from these trials; None while it rests on one trial: on a
    valley between sparse trials the best one can sit ×1.5 off, and the hint extrapolates that."""
    return fit.lr if fit is not None and fit.method in (QUADRATIC, BEST_TRIALS) else None


def _positive(lr) -> bool:
    return isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0


def _slope(p: tuple[float, float], q: tuple[float, float]) -> float:
    return (q[1] - p[1]) / (q[0] - p[0])


def _on_line(p: tuple[float, float], q: tuple[float, float], x: float) -> float:
    return p[1] + _slope(p, q) * (x - p[0])
