"""A progress bar for `tuner run`: trials finished out of n_trials, and the best LR per batch size."""
from __future__ import annotations

import sys

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from tuner.summary import BatchSummary, summarize
from tuner.trials import BATCH_SIZE, ERROR, LR, count_finished, is_verification


def report_failure(trial: FrozenTrial, what: str = "trial") -> None:
    """A failed trial's error, one line above the bar (always shown, even without a bar)."""
    if trial.state == TrialState.FAIL:
        error = trial.user_attrs.get(ERROR, "no error recorded (stopped, or its storage failed)")
        tqdm.write(f"{what} {trial.number} failed (batch {trial.params.get(BATCH_SIZE)}, lr "
                   f"{trial.params.get(LR, float('nan')):.3g}): {error}", file=sys.stderr)


class TrialProgress:
    """An Optuna callback that draws the bar (on a terminal) and reports failed trials (always)."""

    def __init__(self, study: optuna.Study, n_trials: int, batch_sizes: list[int], enabled: bool = True) -> None:
        self._maximize = study.direction == StudyDirection.MAXIMIZE
        self._batch_sizes = batch_sizes
        self._rows = {r.batch_size: r for r in summarize(study, batch_sizes)}
        self._bar = tqdm(total=n_trials, initial=min(count_finished(study), n_trials), unit="trial",
                         desc=study.study_name, file=sys.stderr, disable=None if enabled else True,
                         dynamic_ncols=True)
        self._show_best()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        batch_size = trial.params.get(BATCH_SIZE)
        if batch_size is not None and not is_verification(trial):  # a worker may run `tuner verify`'s
            self._rows.setdefault(batch_size, BatchSummary(batch_size)).add(trial, self._maximize)
        report_failure(trial)
        self._bar.n = min(count_finished(study), self._bar.total)
        self._show_best()

    def refresh(self, study: optuna.Study) -> None:
        """Redraw from the storage: trials finished by other processes (workers) included."""
        self._rows = {r.batch_size: r for r in summarize(study, self._batch_sizes)}
        self._bar.n = min(count_finished(study), self._bar.total)
        self._show_best()

    def _show_best(self) -> None:
        best = " ".join(f"{b}:{r.best_lr:.2g}" for b, r in sorted(self._rows.items()) if r.best_lr is not None)
        self._bar.set_postfix_str(f"best lr {best}" if best else "", refresh=True)

    def close(self) -> None:
        self._bar.close()
