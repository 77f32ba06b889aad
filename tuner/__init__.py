"""Measure the optimal learning rate as a function of batch size, with Optuna.

    >>> import tuner
    >>> spec = tuner.load_spec("studies/quadratic.toml")

Public names are imported on first use, so that `tuner --help` stays fast and never imports torch.
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "InputError": "tuner.errors",
    "Run": "tuner.workload",
    "TrialDiverged": "tuner.workload",
    "GoalReached": "tuner.workload",
    "load_workload": "tuner.workload",
    "StudySpec": "tuner.spec",
    "load_spec": "tuner.spec",
    "BatchSizeSampler": "tuner.search",
    "BatchSizePruner": "tuner.search",
    "ValleyPruner": "tuner.search",
    "GoalPruner": "tuner.search",
    "ValleySampler": "tuner.search",
    "fit_study": "tuner.fit",
    "FitResult": "tuner.fit",
    "open_storage": "tuner.storage",
    "open_study": "tuner.runner",
    "run_study": "tuner.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
