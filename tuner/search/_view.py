from __future__ import annotations

import copy
from collections.abc import Container, Sequence

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.fit._optimum import NoisePrior
from tuner.trials import by_batch_size, is_diverged


class BatchSizeView:
    """A study seen through one batch size: an Optuna sampler or pruner handed this view learns
    from, and compares against, that batch size's trials only.

    Diverged trials show without their intermediate values, so that TPE ranks them below every
    trial that ran, instead of by the finite values they reported before blowing up.

    With ``cached``, ``get_trials`` reads Optuna's per-trial snapshot of the study (taken once a
    trial, as Optuna's samplers do) instead of the storage: a pruner asks at every report, and on
    a file or database each fresh read costs more than the comparison itself.

    ``lr_hint``: where the other batch sizes put the optimal learning rate (``ValleySampler`` starts
    its search there), or None. ``neighbours_lr``: the same whether or not the search starts there
    (``ValleySampler`` looks there once where its own search has lost the valley), or None.
    ``noise_prior``: the noise the study's repeated runs measure over all batch sizes
    (``ValleySampler``'s fit reads its noise from it), or None. ``repeats_wanted``: how many times
    this batch size repeats its best run to measure the noise. ``best_value_anywhere``: the best final
    value any batch size's runs reached (the metric's level near an optimum), or None.
    """

    def __init__(self, study: optuna.Study, batch_size: int, cached: bool = False,
                 lr_hint: float | None = None, noise_prior: NoisePrior | None = None,
                 repeats_wanted: int = 1, neighbours_lr: float | None = None,
                 best_value_anywhere: float | None = None) -> None:
        self._study = study
        self._batch_size = batch_size
        self._cached = cached
        self.lr_hint = lr_hint
        self.neighbours_lr = neighbours_lr
        self.noise_prior = noise_prior
        self.repeats_wanted = repeats_wanted
        self.best_value_anywhere = best_value_anywhere

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def get_trials(self, deepcopy: bool = True,
                   states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._keep(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=self._cached))

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        return self._keep(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache))

    # Optuna's best_* read the whole study; here they read this batch size's trials only (a pruner
    # such as WilcoxonPruner compares with best_trial)
    @property
    def best_trial(self) -> FrozenTrial:
        complete = [t for t in self.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.value is not None]
        if not complete:
            raise ValueError(f"no complete trials at batch size {self._batch_size} yet")
        pick = max if self._study.direction == StudyDirection.MAXIMIZE else min
        return copy.deepcopy(pick(complete, key=lambda t: t.value))

    @property
    def best_value(self) -> float:
        return self.best_trial.value

    @property
    def best_params(self) -> dict:
        return self.best_trial.params

    def _keep(self, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        return [_without_reports(t) if is_diverged(t) else t for t in by_batch_size(trials).get(self._batch_size, [])]


def _without_reports(trial: FrozenTrial) -> FrozenTrial:
    return FrozenTrial(number=trial.number, state=trial.state, value=None,
                       datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete,
                       params=trial.params, distributions=trial.distributions,
                       user_attrs=trial.user_attrs, system_attrs=trial.system_attrs,
                       intermediate_values={}, trial_id=trial._trial_id)
