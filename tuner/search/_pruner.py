from __future__ import annotations

import math
import statistics

import optuna
from optuna.pruners import BasePruner, HyperbandPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.search._view import BatchSizeView
from tuner.trials import BATCH_SIZE


class BatchSizePruner(BasePruner):
    """Prunes a trial only against trials of its own batch size, at equal training samples seen.

    Comparing a batch-1024 trial with a batch-8 trial at the same step is unfair by construction:
    the two have taken different numbers of updates on different amounts of data. This pruner hands
    the wrapped pruner a view of the study that holds only the trial's batch size; with steps
    reported as samples seen, trials of one batch size are compared at equal data. It compares with
    the trials that had finished when the trial started (Optuna's per-trial snapshot of the study).

    Args:
        pruner: the rule applied within a batch size; by default ``SameStepMedianPruner()``, or
            any Optuna pruner that reads the study's trials (``MedianPruner``,
            ``PercentilePruner``). ``HyperbandPruner`` cannot be wrapped: it rebuilds its own
            view of the study from storage.
    """

    def __init__(self, pruner: BasePruner | None = None) -> None:
        if isinstance(pruner, HyperbandPruner):
            raise ValueError("HyperbandPruner cannot be restricted to one batch size "
                             "(it reads trials from storage itself); use MedianPruner or PercentilePruner")
        self._pruner = pruner if pruner is not None else SameStepMedianPruner()

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        batch_size = trial.params.get(BATCH_SIZE)
        if batch_size is None:  # no batch size, no fair comparison
            return False
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

    def __init__(self, n_startup_trials: int = 4, n_warmup_steps: int = 0) -> None:
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
        if not others or not mine:
            return False
        if study.direction == StudyDirection.MAXIMIZE:
            return max(mine) < statistics.median(others)
        return min(mine) > statistics.median(others)
