from __future__ import annotations

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner
from optuna.trial import FrozenTrial

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
        pruner: the rule applied within a batch size; by default
            ``MedianPruner(n_startup_trials=4)``. ``HyperbandPruner`` cannot be wrapped: it rebuilds
            its own view of the study from storage.
    """

    def __init__(self, pruner: BasePruner | None = None) -> None:
        if isinstance(pruner, HyperbandPruner):
            raise ValueError("HyperbandPruner cannot be restricted to one batch size "
                             "(it reads trials from storage itself); use MedianPruner or PercentilePruner")
        self._pruner = pruner if pruner is not None else MedianPruner(n_startup_trials=4)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        batch_size = trial.params.get(BATCH_SIZE)
        if batch_size is None:  # no batch size, no fair comparison
            return False
        return self._pruner.prune(BatchSizeView(study, batch_size, cached=True), trial)
