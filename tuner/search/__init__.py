"""Batch-aware search: an Optuna sampler and pruner that treat every batch size as its own search."""
from tuner.search._pruner import BatchSizePruner, GoalPruner, SameStepMedianPruner, ValleyPruner
from tuner.search._sampler import BatchSizeSampler
from tuner.search._valley import ValleySampler
from tuner.search._view import BatchSizeView

__all__ = ["BatchSizePruner", "BatchSizeSampler", "BatchSizeView", "GoalPruner", "SameStepMedianPruner",
           "ValleyPruner", "ValleySampler"]
