"""What a study says about each batch size: the trials a fit reads, as arrays in log-lr.

Only the fields ``tuner run`` writes are read (see ``tuner.trials``), and a plain Optuna study with
``batch_size`` and ``lr`` params fits too: PRUNED without an ``outcome`` attribute counts as pruned.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from tuner.trials import (
    FINISHED,
    INFEASIBLE_ATTR,
    LR,
    NOISE_SCALE,
    SPEC_ATTR,
    Outcome,
    by_batch_size,
    gc_paused,
    outcome_of,
)


@dataclass(frozen=True)
class Curve:
    """One trial's reports: the metric after each number of training samples seen (ascending)."""

    x: float              # log lr
    samples: np.ndarray
    value: np.ndarray
    noise: dict | None = None  # the run's gradient noise scale record (tuner.trials.noise_scale reads it)


@dataclass(frozen=True)
class BatchTrials:
    """One batch size's finished trials; every ``x`` is the natural log of a learning rate."""

    batch_size: int
    x: np.ndarray           # complete trials
    value: np.ndarray       # their final metric, as stored
    pruned_x: np.ndarray    # stopped by the pruner: did worse than the median, final value unknown
    diverged_x: np.ndarray  # NaN/inf: the optimum lies below each of these
    baseline: float | None = None  # the untrained model's metric: the median report at step 0, if any
    curves: tuple[Curve, ...] = ()  # the learning curves of the complete and pruned trials

    @property
    def n_trials(self) -> int:
        return len(self.x) + len(self.pruned_x) + len(self.diverged_x)


@dataclass(frozen=True)
class StudyData:
    study_name: str
    maximize: bool
    batches: list[BatchTrials]     # ascending batch size
    lr_range: tuple[float, float]  # the widest range searched
    infeasible: frozenset[int]     # batch sizes that ran out of memory
    goal: float | None = None      # a metric value the study scored the steps to (trial values are steps)
    metric_maximize: bool = False  # whether the metric the runs reported improves upwards


@dataclass
class _Group:
    x: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    pruned_x: list[float] = field(default_factory=list)
    diverged_x: list[float] = field(default_factory=list)
    untrained: list[float] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)

    def add(self, trial: FrozenTrial, x: float) -> None:
        start = trial.intermediate_values.get(0)
        if start is not None and math.isfinite(start):
            self.untrained.append(start)
        outcome = outcome_of(trial)
        if outcome in (Outcome.COMPLETE, Outcome.PRUNED) and trial.intermediate_values:
            reports = sorted((s, v) for s, v in trial.intermediate_values.items() if math.isfinite(v))
            if reports:
                samples, values = zip(*reports)
                noise = trial.user_attrs.get(NOISE_SCALE)
                self.curves.append(Curve(x, np.asarray(samples, dtype=float), np.asarray(values, dtype=float),
                                         noise if isinstance(noise, dict) else None))
        if outcome == Outcome.COMPLETE:
            self.x.append(x)
            self.value.append(trial.value)
        elif outcome == Outcome.DIVERGED:
            self.diverged_x.append(x)
        elif outcome == Outcome.PRUNED:
            self.pruned_x.append(x)

    def freeze(self, batch_size: int) -> BatchTrials:
        baseline = float(np.median(self.untrained)) if self.untrained else None
        return BatchTrials(batch_size, *(np.asarray(v, dtype=float) for v in
                                         (self.x, self.value, self.pruned_x, self.diverged_x)), baseline,
                           tuple(self.curves))


def batch_trials(trials: Iterable[FrozenTrial], batch_size: int | None = None, param: str = LR) -> BatchTrials:
    """The finished trials of one batch size (of ``trials``; None: all of them) as a fit reads them,
    in the log of ``param`` (trials where it is missing or not positive say nothing of it)."""
    group = _Group()
    for trial in trials if batch_size is None else by_batch_size(trials).get(batch_size, []):
        value = trial.params.get(param)
        if trial.state in FINISHED and isinstance(value, (int, float)) and value > 0:
            group.add(trial, math.log(value))
    return group.freeze(batch_size or 0)


def read_study(study: optuna.Study) -> StudyData:
    """Group the study's finished trials by batch size (plus the batch sizes its stored spec lists)."""
    attrs = study.user_attrs  # once: on a database every read of them is a query
    search = _search_table(attrs)
    groups = {b: _Group() for b in _spec_batch_sizes(search)}
    low, high = _spec_lr_range(search)
    with gc_paused():  # the load builds tens of thousands of objects at once (see gc_paused)
        trials = study.get_trials(deepcopy=False, states=FINISHED)
    for batch_size, group in by_batch_size(trials).items():
        groups.setdefault(batch_size, _Group())
        for trial in group:
            lr = trial.params.get(LR)
            if isinstance(lr, (int, float)) and lr > 0:
                groups[batch_size].add(trial, math.log(lr))
                distribution = trial.distributions.get(LR)
                if isinstance(distribution, FloatDistribution):
                    low, high = min(low, distribution.low), max(high, distribution.high)
    batches = [groups[b].freeze(b) for b in sorted(groups)]
    if not math.isfinite(low):  # neither a distribution nor a spec: the searched span is all we know
        tried = np.concatenate([np.r_[b.x, b.pruned_x, b.diverged_x] for b in batches] or [np.zeros(0)])
        low, high = (math.exp(tried.min()), math.exp(tried.max())) if len(tried) else (math.nan, math.nan)
    maximize = len(study.directions) == 1 and study.direction == StudyDirection.MAXIMIZE
    infeasible = frozenset(attrs.get(INFEASIBLE_ATTR, ()))
    goal, metric_maximize = _spec_goal(attrs)
    if goal is not None:  # the untrained model's metric is no level of the steps: no baseline to beat
        batches = [replace(b, baseline=None) for b in batches]
    return StudyData(study.study_name, maximize, batches, (low, high), infeasible, goal,
                     maximize if goal is None else metric_maximize)


def _spec_goal(attrs: dict) -> tuple[float | None, bool]:
    """The stored spec's ``goal`` (None: the trials' values are the final metric) and whether the
    metric is maximized."""
    spec = attrs.get(SPEC_ATTR)
    study = spec.get("study") if isinstance(spec, dict) else None
    if not isinstance(study, dict):
        return None, False
    goal = study.get("goal")
    usable = isinstance(goal, (int, float)) and not isinstance(goal, bool) and math.isfinite(goal)
    return (float(goal) if usable else None), study.get("direction") == "maximize"


def _search_table(attrs: dict) -> dict:
    spec = attrs.get(SPEC_ATTR)
    search = spec.get("search") if isinstance(spec, dict) else None
    return search if isinstance(search, dict) else {}


def _spec_batch_sizes(search: dict) -> list[int]:
    sizes = search.get("batch_sizes") or []
    return [b for b in sizes if isinstance(b, int) and not isinstance(b, bool) and b > 0]


def _spec_lr_range(search: dict) -> tuple[float, float]:
    lr = search.get("lr")
    if isinstance(lr, list) and len(lr) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in lr):
        return float(min(lr)), float(max(lr))
    return math.inf, -math.inf
