from __future__ import annotations

import math
import statistics

import optuna
from optuna.pruners import BasePruner, HyperbandPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.fit._optimum import BatchOptimum
from tuner.search._valley import fit_of
from tuner.search._view import BatchSizeView
from tuner.spec import PRUNER_STARTUP_TRIALS
from tuner.trials import BATCH_SIZE, FINISHED, LR, by_batch_size, is_verification


class BatchSizePruner(BasePruner):
    """Prunes a trial only against trials of its own batch size, at equal training samples seen.

    Comparing a batch-1024 trial with a batch-8 trial at the same step is unfair by construction:
    the two have taken different numbers of updates on different amounts of data. This pruner hands
    the wrapped pruner a view of the study that holds only the trial's batch size; with steps
    reported as samples seen, trials of one batch size are compared at equal data. It compares with
    the trials that had finished when the trial started (Optuna's per-trial snapshot of the study).

    Args:
        pruner: the rule applied within a batch size; by default ``ValleyPruner()``, or
            any Optuna pruner that reads the study's trials (``MedianPruner``,
            ``PercentilePruner``). ``HyperbandPruner`` cannot be wrapped: it rebuilds its own
            view of the study from storage.
    """

    def __init__(self, pruner: BasePruner | None = None) -> None:
        if isinstance(pruner, HyperbandPruner):
            raise ValueError("HyperbandPruner cannot be restricted to one batch size "
                             "(it reads trials from storage itself); use MedianPruner or PercentilePruner")
        self._pruner = pruner if pruner is not None else ValleyPruner()

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        batch_size = trial.params.get(BATCH_SIZE)
        if batch_size is None or not trial.last_step or is_verification(trial):
            return False  # no fair comparison; it has not trained yet; or a verification, run to the end
        return self._pruner.prune(BatchSizeView(study, batch_size, cached=True), trial)


class SameStepMedianPruner(BasePruner):
    """Optuna's MedianPruner rule, in plain Python: prune a trial whose best value so far is worse
    than the median of the completed trials' values at the same step.

    It runs at every report, and on a study of short trials numpy's nanpercentile cost more than
    the rest of a report; the median of a handful of floats does not need numpy.

    Args:
        n_startup_trials: completed trials needed before any trial is pruned.
        n_warmup_steps: steps (training samples seen) before a trial can be pruned.
    """

    def __init__(self, n_startup_trials: int = PRUNER_STARTUP_TRIALS, n_warmup_steps: int = 0) -> None:
        if n_startup_trials < 0 or n_warmup_steps < 0:
            raise ValueError("n_startup_trials and n_warmup_steps must be >= 0")
        self._n_startup_trials = n_startup_trials
        self._n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self._n_warmup_steps:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < max(self._n_startup_trials, 1):
            return False
        others = [v for t in completed if not math.isnan(v := t.intermediate_values.get(step, math.nan))]
        mine = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
        if not mine:  # every report NaN: MedianPruner prunes it
            return True
        if not others:
            return False
        if study.direction == StudyDirection.MAXIMIZE:
            return max(mine) < statistics.median(others)
        return min(mine) > statistics.median(others)


NEIGHBOUR_REACH = math.log(4.0)  # complete trials this far away in learning rate bound a trial's finish


class ValleyPruner(BasePruner):
    """Prunes a trial only when even the best finish its neighbours had cannot save it.

    Meant for one batch size's learning-rate search (``BatchSizePruner`` hands it a view of the
    study that holds only that batch size). At a report after ``step`` training samples, the trial's
    **optimistic finish** is its value now, improved by the most that any of its ``n_neighbours``
    nearest complete trials at lower learning rates (within ×4), or the nearest one above, improved
    from that step to their end: a lower learning rate starts slower and gains more later, so a trial
    with no complete trial below it is never pruned. It is pruned when both hold:

    1. its optimistic finish is still worse than the best complete trial's final value by more than
       the noise (``Z`` standard deviations of one run's final metric, as the fit estimates it);
    2. its learning rate is outside the current optimum's 95% interval and outside the bracket of
       learning rates either side of the best where trials did clearly worse (the fit of the
       finished trials so far): the trials there are the ones the fit needs.

    Why not MedianPruner's rule (worse than the median at the same step)? Early in training a higher
    learning rate is ahead of a lower one that will end better, so the median prunes the learning
    rates just below the optimum and leaves the valley one-sided (the short-horizon bias); and while
    every run is still at chance level it compares noise. Here a trial is judged by where its
    neighbours' curves took them: a run at chance level whose neighbours went on to learn is kept.

    Args:
        n_startup_trials: complete trials needed before any trial is pruned.
        n_warmup_steps: steps (training samples seen) before a trial can be pruned.
        n_neighbours: complete trials whose improvement bounds a trial's finish.
    """

    Z = 2.5  # "beyond noise": one-sided, about 99%

    def __init__(self, n_startup_trials: int = PRUNER_STARTUP_TRIALS, n_warmup_steps: int = 0,
                 n_neighbours: int = 3) -> None:
        if n_startup_trials < 0 or n_warmup_steps < 0 or n_neighbours < 1:
            raise ValueError("n_startup_trials and n_warmup_steps must be >= 0 and n_neighbours >= 1")
        self._n_startup_trials = n_startup_trials
        self._n_warmup_steps = n_warmup_steps
        self._n_neighbours = n_neighbours

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step, lr = trial.last_step, trial.params.get(LR)
        if not step or step < self._n_warmup_steps or lr is None or not lr > 0:
            return False
        completed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if t.params.get(LR, 0) > 0 and t.value is not None and math.isfinite(t.value)]
        now = trial.intermediate_values.get(step, math.nan)
        if len(completed) < max(self._n_startup_trials, 1) or not math.isfinite(now):
            return False
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        x = math.log(lr)
        # (log-lr, how much it improved from this step to its end), lower is better
        gains = [(math.log(t.params[LR]), sign * (v - t.value)) for t in completed
                 if math.isfinite(v := t.intermediate_values.get(step, math.nan))]
        slower = sorted((g for g in gains if x - NEIGHBOUR_REACH <= g[0] <= x), key=lambda g: -g[0])
        faster = sorted((g for g in gains if x < g[0] <= x + NEIGHBOUR_REACH), key=lambda g: g[0])
        if not slower:  # nobody that started slower says how much a slow start can still gain
            return False
        nearest = slower[:self._n_neighbours] + faster[:1]
        optimistic = sign * now - max(gain for _, gain in nearest)
        best = min(sign * t.value for t in completed)
        if optimistic <= best:  # the cheap test first: the fit below costs milliseconds
            return False
        fit = self._fit(study, trial.params.get(BATCH_SIZE), sign < 0)
        if fit is None or fit.ci is None or fit.noise is None or _protected(fit, lr):
            return False
        return optimistic > best + self.Z * fit.noise

    def _fit(self, study: optuna.Study, batch_size: int | None, maximize: bool) -> BatchOptimum | None:
        """The fit of this batch size's finished trials (remembered until one more finishes); None
        before any completed."""
        trials = by_batch_size(study.get_trials(deepcopy=False, states=FINISHED)).get(batch_size, [])
        return fit_of(trials, maximize, least=1)


class GoalPruner(BasePruner):
    """In a study scored by the steps to a goal (``[study] goal``): stops a run once it has seen
    ``limit`` times the samples that the fastest complete run of its batch size, or of any larger
    one, needed to get there.

    Such a run's steps are more than ``limit`` times the fewest its batch size needs: it cannot be
    the optimum, and the valley's fit reads the runs near the best, not its far walls. A larger batch
    size bounds a smaller one because the samples to a goal never fall as the batch grows
    (McCandlish et al. 2018: E(B) = E_min (1 + B / B_crit); Shallue et al. 2019 measured it on 35
    workloads): so a batch size's first runs, spread over the learning-rate range before any of them
    reached the goal, do not each run their whole budget. It judges samples seen, not a metric that
    a slower start lags on, so no learning rate is favoured. Use it unwrapped (``BatchSizePruner``
    would hide the larger batch sizes).

    Args:
        limit: how many times the fastest run's samples a run may take.
        n_warmup_steps: steps (training samples seen) before a trial can be pruned.
    """

    def __init__(self, limit: float = 2.0, n_warmup_steps: int = 0) -> None:
        if not limit >= 1 or n_warmup_steps < 0:
            raise ValueError("limit must be >= 1 and n_warmup_steps >= 0")
        self._limit = limit
        self._n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step, batch_size = trial.last_step, trial.params.get(BATCH_SIZE)
        if not step or step < self._n_warmup_steps or not batch_size or is_verification(trial):
            return False  # a verification runs to the goal: it measures a rule's cost
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        fastest = [t.value * t.params[BATCH_SIZE] for t in complete
                   if t.params.get(BATCH_SIZE, 0) >= batch_size and not is_verification(t)
                   and t.value is not None and math.isfinite(t.value) and t.value > 0]
        return bool(fastest) and step > self._limit * min(fastest)


def _protected(fit: BatchOptimum, lr: float) -> bool:
    """Inside the optimum's interval, or inside the bracket where no trial did clearly worse yet."""
    low, high = fit.ci
    if fit.bracket is not None:
        low = min(low, fit.bracket[0] or 0.0)
        high = max(high, fit.bracket[1] or math.inf)
    return low <= lr <= high
