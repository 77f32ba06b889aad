from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.search._view import BatchSizeView
from tuner.trials import BATCH_SIZE, LR, is_diverged

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_MIN_GAP = 1.25  # stop bisecting towards the divergence cliff once it is this close
# Every trial takes its batch size's turn, failed ones too: otherwise a batch size where some
# learning rates crash would be retried until it took every trial.
_ALLOCATED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
              TrialState.WAITING)


class BatchSizeSampler(BaseSampler):
    """Sampler that searches the optimal learning rate at every batch size, not the single best pair.

    Plain TPE over learning rate and batch size chases the best batch size and starves the others.
    This sampler gives every batch size an equal share of trials (the next trial goes to the batch
    size with the fewest) and proposes the learning rate from that batch size's own trials: the
    first ``n_startup_trials`` spread evenly over log-lr (each lands in the widest gap left), then
    ``lr_sampler`` (TPE by default) fed a view of the study that holds only that batch size.

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
        lr_sampler: proposes ``lr`` from one batch size's trials after the startup trials.
        n_startup_trials: trials per batch size spread over the range before ``lr_sampler`` is used.
        seed: makes the study reproducible (in one process).
    """

    def __init__(self, batch_sizes: Sequence[int], *, lr_sampler: BaseSampler | None = None,
                 n_startup_trials: int = 4, seed: int | None = None) -> None:
        sizes = list(batch_sizes)
        if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {sizes!r}")
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0, got {n_startup_trials}")
        self._batch_sizes = sorted(set(sizes))
        self._n_startup_trials = n_startup_trials
        self._rng = np.random.default_rng(seed)
        self._lr_sampler = lr_sampler or TPESampler(
            n_startup_trials=n_startup_trials, constant_liar=True, seed=seed)
        self._fallback = RandomSampler(seed=seed)
        self._offsets: dict[int, float] = {}

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
        if param_name == BATCH_SIZE:
            return self._checked(self._next_batch_size(study), param_distribution)
        if param_name == LR and BATCH_SIZE in trial.params:
            return self._sample_lr(study, trial, param_distribution)
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._lr_sampler.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._lr_sampler.after_trial(study, trial, state, values)

    def _next_batch_size(self, study: optuna.Study) -> int:
        trials = study._get_trials(deepcopy=False, states=_ALLOCATED, use_cache=False)
        counts = Counter(t.params.get(BATCH_SIZE) for t in trials)
        fewest = min(counts[b] for b in self._batch_sizes)
        candidates = [b for b in self._batch_sizes if counts[b] == fewest]
        return candidates[int(self._rng.integers(len(candidates)))]

    def _sample_lr(self, study: optuna.Study, trial: FrozenTrial, distribution: BaseDistribution) -> float:
        batch_size = trial.params[BATCH_SIZE]
        view = BatchSizeView(study, batch_size)
        earlier = [t for t in view._get_trials(deepcopy=False, states=_ALLOCATED) if t.number != trial.number]
        if not isinstance(distribution, FloatDistribution):
            return self._lr_sampler.sample_independent(view, trial, LR, distribution)
        if len(earlier) < self._n_startup_trials:
            return self._spread(batch_size, len(earlier), distribution)
        gap = _unbracketed_gap(earlier, study.direction, distribution)
        if gap is not None:
            return math.sqrt(gap[0] * gap[1])
        return self._lr_sampler.sample_independent(view, trial, LR, distribution)

    def _spread(self, batch_size: int, index: int, distribution: FloatDistribution) -> float:
        """The index-th point of a golden-ratio sequence over the range: each lands in the widest gap."""
        if batch_size not in self._offsets:
            self._offsets[batch_size] = float(self._rng.uniform())
        position = (self._offsets[batch_size] + index * _GOLDEN) % 1.0
        low, high = distribution.low, distribution.high
        if distribution.log:
            return float(math.exp(math.log(low) + position * (math.log(high) - math.log(low))))
        return float(low + position * (high - low))

    @staticmethod
    def _checked(batch_size: int, distribution: BaseDistribution) -> int:
        if not distribution._contains(distribution.to_internal_repr(batch_size)):
            raise ValueError(f"batch size {batch_size} is outside the objective's distribution "
                             f"{distribution}; ask for batch_size over the sampler's batch sizes")
        return batch_size


def _unbracketed_gap(trials: list[FrozenTrial], direction: StudyDirection,
                     distribution: FloatDistribution) -> tuple[float, float] | None:
    """The gap beside the best trial that no worse trial closes, when it is wider than ×_MIN_GAP.

    The optimum often sits just below the divergence cliff. When the best LR so far has only
    diverged trials (or the range's end) above it, the optimum may lie anywhere in between, and
    TPE, which counts diverged trials as bad, rarely looks there; bisecting the gap finds it.
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
    best = min(complete, key=lambda t: sign * t.value)
    best_lr = best.params[LR]
    # trials that ran and did worse close the gap on their side; diverged ones do not
    ran = [t.params[LR] for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
           and not is_diverged(t) and t.number != best.number]
    above = [t.params[LR] for t in trials if t.params.get(LR, 0) > best_lr]
    below = [t.params[LR] for t in trials if 0 < t.params.get(LR, 0) < best_lr]
    upper = min(above, default=distribution.high)
    lower = max(below, default=distribution.low)
    if upper / best_lr > _MIN_GAP and not any(best_lr < lr <= upper for lr in ran):
        return best_lr, upper
    if best_lr / lower > _MIN_GAP and not any(lower <= lr < best_lr for lr in ran):
        return lower, best_lr
    return None
