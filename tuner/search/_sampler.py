from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.fit._data import batch_trials
from tuner.fit._optimum import MIN_FIT, NO_SIGNAL, PRIOR_DF, QUADRATIC, TOLERATED
from tuner.search._hint import lr_hint
from tuner.search._valley import ValleySampler, _single_objective, fit_of, study_noise
from tuner.search._view import BatchSizeView
from tuner.trials import BATCH_SIZE, INFEASIBLE_ATTR, LR, Outcome, by_batch_size, outcome_of

# Every trial takes its batch size's turn, failed ones too: otherwise a batch size where some
# learning rates crash would be retried until it took every trial.
_ALLOCATED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
              TrialState.WAITING)
# A batch size whose optimum is still uncertain (following the estimate would likely cost TOLERATED
# of the metric or more, or no valley fits its trials) is due up to this many times the trials of
# one that is settled. Measured on the synthetic panel (10 seeds): the worst seed's rule regret fell
# from 10-32% to 5-7%, where the even share left the batch sizes next to a cliff with too few trials.
MAX_WEIGHT = 2.0


class BatchSizeSampler(BaseSampler):
    """Sampler that searches the optimal learning rate at every batch size, not the single best pair.

    Plain TPE over learning rate and batch size chases the best batch size and starves the others.
    This sampler gives every batch size a share of trials (the next trial goes to the batch size
    with the fewest for its weight; none to those listed in the study's user attribute
    ``infeasible_batch_sizes``) and proposes the learning rate with ``lr_sampler`` fed a view of
    the study that holds only that batch size's trials: one search per batch size. With
    ``warm_start``, the view also carries where the neighbouring batch sizes found the optimum, on
    log-log axes (``ValleySampler`` starts there instead of spreading over the whole range: on the
    noisy quadratic, at 48 trials, the worst batch size's error falls from ×2.9 to ×1.6, 30 seeds).
    With ``adaptive``, a batch size weighs 1 while its optimum is settled and up to MAX_WEIGHT while
    following its estimate would likely cost the tolerated 2% of the metric or more (``tuner.fit``'s
    bootstrap of its valley says how likely), so no batch size gets less than half the trials of
    another; without it, the shares are equal.

    The objective asks for ``batch_size`` first, then ``lr`` on a log scale. Use an int distribution
    for the batch size so that batch sizes can be added to a running study::

        import optuna
        from tuner import BatchSizePruner, BatchSizeSampler

        sizes = [16, 32, 64, 128]

        def objective(trial):
            batch_size = trial.suggest_int("batch_size", sizes[0], sizes[-1], log=True)
            lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
            return (lr / (1e-3 * batch_size) - 1.0) ** 2

        study = optuna.create_study(sampler=BatchSizeSampler(sizes, seed=0),
                                    pruner=BatchSizePruner())
        study.optimize(objective, n_trials=40)

    Args:
        batch_sizes: the batch sizes to search; every one gets trials.
        lr_sampler: proposes ``lr`` from one batch size's trials; ``ValleySampler`` by default.
        warm_start: hand ``lr_sampler`` the neighbouring batch sizes' optimum as ``lr_hint``.
        adaptive: more trials where the optimum is uncertain (see above); equal shares otherwise.
        seed: makes the study reproducible (in one process).
    """

    def __init__(self, batch_sizes: Sequence[int], *, lr_sampler: BaseSampler | None = None,
                 warm_start: bool = True, adaptive: bool = True, seed: int | None = None) -> None:
        sizes = list(batch_sizes)
        if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {sizes!r}")
        self._batch_sizes = sorted(set(sizes))
        self._rng = np.random.default_rng(seed)
        self._lr_sampler = lr_sampler or ValleySampler(seed=seed)
        self._warm_start = warm_start
        self._adaptive = adaptive
        self._fallback = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._lr_sampler.reseed_rng()
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        _single_objective(study, self)
        if param_name == BATCH_SIZE:
            return self._checked(self._next_batch_size(study), param_distribution)
        if param_name == LR and BATCH_SIZE in trial.params:
            batch_size = trial.params[BATCH_SIZE]
            neighbours = lr_hint(study, batch_size)
            # the noise as the repeated runs of every batch size measure it, how many repeats each
            # batch size owes so that together they measure it (PRIOR_DF degrees of freedom), and the
            # metric's level near an optimum (a batch size stuck at chance has not seen it)
            trials = study._get_trials(deepcopy=False, use_cache=True)
            maximize = study.direction == StudyDirection.MAXIMIZE
            view = BatchSizeView(study, batch_size, lr_hint=neighbours if self._warm_start else None,
                                 neighbours_lr=neighbours, noise_prior=study_noise(trials, maximize),
                                 repeats_wanted=math.ceil(PRIOR_DF / len(self._batch_sizes)),
                                 best_value_anywhere=_best_value(trials, maximize))
            return self._lr_sampler.sample_independent(view, trial, param_name, param_distribution)
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._lr_sampler.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._lr_sampler.after_trial(study, trial, state, values)

    def _next_batch_size(self, study: optuna.Study) -> int:
        # Optuna's snapshot of the study, taken afresh when each trial starts
        trials = study._get_trials(deepcopy=False, states=_ALLOCATED, use_cache=True)
        groups = by_batch_size(trials)
        infeasible = set(study.user_attrs.get(INFEASIBLE_ATTR, ()))
        feasible = [b for b in self._batch_sizes if b not in infeasible] or self._batch_sizes
        share = {b: len(groups.get(b, [])) / (_weight(groups.get(b, []), study.direction) if self._adaptive else 1.0)
                 for b in feasible}
        fewest = min(share.values())
        candidates = [b for b in feasible if share[b] == fewest]
        return candidates[int(self._rng.integers(len(candidates)))]

    @staticmethod
    def _checked(batch_size: int, distribution: BaseDistribution) -> int:
        if not distribution._contains(distribution.to_internal_repr(batch_size)):
            raise ValueError(f"batch size {batch_size} is outside the objective's distribution "
                             f"{distribution}; ask for batch_size over the sampler's batch sizes")
        return batch_size


def _best_value(trials: Sequence[FrozenTrial], maximize: bool) -> float | None:
    """The best final value of any complete run in the study (None before one completed)."""
    values = [t.value for t in trials if outcome_of(t) == Outcome.COMPLETE and math.isfinite(t.value)]
    return (max if maximize else min)(values, default=None)


def _weight(trials: Sequence[FrozenTrial], direction: StudyDirection) -> float:
    """How many trials a batch size is due against one whose optimum is settled: 1 plus the regret
    its estimate is likely to have (``Valley.expected_regret``) in units of TOLERATED of the metric,
    up to MAX_WEIGHT; MAX_WEIGHT where no valley fits its trials yet (the estimate rests on the best
    runs alone), or where MIN_FIT of its trials finished but fewer completed (they diverged or were
    pruned: bracketing a cliff took them, and the valley is still to be found); 1 with fewer than
    MIN_FIT finished (still spreading and bracketing) or no signal (more of the same range will not
    find one)."""
    found = batch_trials(trials)
    if len(found.x) < MIN_FIT <= len(found.x) + len(found.pruned_x) + len(found.diverged_x):
        return MAX_WEIGHT
    fit = fit_of(trials, direction == StudyDirection.MAXIMIZE)
    if fit is None or fit.n_complete < MIN_FIT or fit.valley is None or NO_SIGNAL in fit.flags or not fit.best_value:
        return 1.0
    regret = fit.valley.expected_regret() if fit.method == QUADRATIC else None
    if regret is None:
        return MAX_WEIGHT
    return 1.0 + min(max(regret / (TOLERATED * abs(fit.best_value)), 0.0), MAX_WEIGHT - 1.0)
