"""What a trial of a tuner study holds: the hand-off between `tuner run` and everything after it.

Parameters ``batch_size`` (an int, log scale) and ``lr`` (a float, log scale). The state is Optuna's
own; user attributes say what happened in terms a person reads in optuna-dashboard:

* ``outcome``: ``complete`` (value is the final metric; in a study with a ``goal``, the steps the run
  took to reach it), ``pruned`` (stopped by the pruner, or a run that never reached the goal),
  ``diverged`` (NaN/inf or FloatingPointError; stored as PRUNED so it counts as finished and Optuna
  tools treat it as a bad trial, without a sentinel value squashing the plots) or ``failed``.
* ``samples``: training samples seen, the largest step the workload reported.
* ``seed``: the run's seed (``run.seed``); a learning rate repeated near the optimum (a replicate)
  differs from its first run only by it.
* ``error``: for a failed trial, the exception and where it was raised.
* ``retry_of``: on a trial re-run because the worker of that earlier trial died.
* ``out_of_memory``: true on a failed trial that ran out of memory; its batch size is then listed
  in the study's ``infeasible_batch_sizes`` and gets no more trials.
* ``purpose``: ``verify`` on a training `tuner verify` queued (a learning rate a rule gives at a
  held-out batch size, run with its planned ``seed``). Such trials are held out of everything
  the search and the fit read (``by_batch_size`` leaves them out) and never count toward
  ``n_trials``.
* ``log``: on a command workload's trial (``tuner.command``), the path of the script's output (both
  streams) on the machine that ran it.

On a journal file (no heartbeats), the system attribute ``tuner:worker`` holds ``host:pid`` of the
process running the trial: ``tuner.recovery`` retries the trials of processes that are gone, and
``tuner studies`` shows it beside a trial still RUNNING.
"""
from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum

import optuna
from optuna.trial import FrozenTrial, TrialState

SPEC_ATTR = "tuner_spec"  # study user attribute: the study file it was run with (tuner.spec)
FIT_ATTR = "lr_batch_fit"  # study user attribute: the fit result (tuner.fit, docs/design.md schema)
RULE_ATTR = "lr_batch_rule"  # study user attribute: the recommended rule in one line, which
                             # optuna-dashboard's attribute table shows whole (it cuts values at 1,024 characters)
INFEASIBLE_ATTR = "infeasible_batch_sizes"  # study user attribute: batch sizes that ran out of memory

BATCH_SIZE = "batch_size"
LR = "lr"
OUTCOME = "outcome"
SAMPLES = "samples"
NOISE_SCALE = "noise_scale"  # what the gradient noise scale is read from, per window (train_torch's noise_scale)
SEED = "seed"
ERROR = "error"
WORKER_ATTR = "tuner:worker"  # system attribute: "host:pid" of the process running the trial (journal)
RETRY_OF = "retry_of"  # a retried trial: the number of the trial whose worker died
OUT_OF_MEMORY = "out_of_memory"  # a failed trial that ran out of memory: its batch size is infeasible
PURPOSE = "purpose"  # "verify" on a trial `tuner verify` queued
VERIFY = "verify"
LOG = "log"  # a command workload's trial: the path of the script's output on its worker's machine

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_RETRY = 3  # a run whose worker died is re-run at most this many times


class Outcome(StrEnum):
    COMPLETE = "complete"
    PRUNED = "pruned"
    DIVERGED = "diverged"
    FAILED = "failed"


def outcome_of(trial: FrozenTrial) -> Outcome | None:
    """The trial's outcome, read from its state (None while it runs): the ``outcome`` attribute only
    tells a diverged trial from a pruned one, and a COMPLETE trial whose value is not finite
    (Optuna stores inf) diverged. The state decides because it is written last: a trial whose
    worker died after writing ``outcome`` and before its state was failed, whatever it says."""
    if trial.state == TrialState.COMPLETE:
        finite = trial.value is not None and math.isfinite(trial.value)
        return Outcome.COMPLETE if finite else Outcome.DIVERGED
    if trial.state == TrialState.PRUNED:
        return Outcome.DIVERGED if trial.user_attrs.get(OUTCOME) == Outcome.DIVERGED else Outcome.PRUNED
    return Outcome.FAILED if trial.state == TrialState.FAIL else None


def is_verification(trial: FrozenTrial) -> bool:
    """A training `tuner verify` queued: held out of the search and the fit."""
    return trial.user_attrs.get(PURPOSE) == VERIFY


def by_batch_size(trials: Iterable[FrozenTrial]) -> dict[int, list[FrozenTrial]]:
    """The search's trials grouped by their ``batch_size`` param, in the order given (trials without
    one, and verification trials, left out)."""
    groups: dict[int, list[FrozenTrial]] = {}
    for trial in trials:
        batch_size = trial.params.get(BATCH_SIZE)
        if batch_size is not None and not is_verification(trial):
            groups.setdefault(int(batch_size), []).append(trial)
    return groups


def is_diverged(trial: FrozenTrial) -> bool:
    return outcome_of(trial) == Outcome.DIVERGED


def queue_retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a re-run of ``trial``, whose worker died: the same parameters, ``retry_of`` its number;
    none once the run was retried MAX_RETRY times already (it is what kills its workers). The one
    way a retry is recorded on every storage: Optuna's stale-trial callback on a database
    (``tuner.storage``), ``tuner.recovery`` on a journal file."""
    numbers = {t.number: t for t in study.get_trials(deepcopy=False)}
    retries, earlier = 0, trial.user_attrs.get(RETRY_OF)
    while earlier in numbers:
        retries, earlier = retries + 1, numbers[earlier].user_attrs.get(RETRY_OF)
    if retries < MAX_RETRY:
        # a verification's retry is the same training: the same purpose and planned seed
        carried = {PURPOSE: VERIFY, SEED: trial.user_attrs.get(SEED)} if is_verification(trial) else {}
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number, **carried}, skip_if_exists=False)


def count_finished(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: complete and pruned (diverged included), all workers;
    verification trials never count."""
    return len(search_trials(study.get_trials(deepcopy=False, states=FINISHED)))


def search_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The trials of the search: all but verification ones."""
    return [t for t in trials if not is_verification(t)]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a storage builds many objects at once.

    Loading 10,000 trials from SQLite builds about 55,000 SQLAlchemy objects, each in a reference
    cycle: the collector ran again and again over the growing heap and doubled the load (2.3 s
    against 1.1 s). Nothing leaks: it collects as usual once the block ends.
    """
    if not gc.isenabled():  # a caller already paused it: leave it to them
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def noise_scale(record: dict, low: float = 0.0, high: float = math.inf) -> float | None:
    """B_simple = tr(Σ) / |G|² over the windows of a ``noise_scale`` record that end within [low,
    high] samples seen: E|G_n|² = |G|² + tr(Σ) / n for the batch (n = B) and its half (n = b), each
    averaged over those windows' steps before the ratio (a ratio of noisy estimates is biased). None
    without windows there, or where noise swamps the estimate (neither comes out positive)."""
    try:
        windows = [(big, small, steps) for end, big, small, steps
                   in zip(record["samples"], record["big"], record["small"], record["steps"]) if low <= end <= high]
        batch, half = record["batch"], record["half"]
    except (KeyError, TypeError):
        return None  # not a record this version writes
    steps = sum(w[2] for w in windows)
    if not steps or not batch > half > 0:
        return None
    big, small = (sum(w[i] * w[2] for w in windows) / steps for i in (0, 1))
    gradient = (batch * big - half * small) / (batch - half)
    noise = (small - big) / (1 / half - 1 / batch)
    return noise / gradient if gradient > 0 and noise > 0 else None


def samples_to_reach(samples: Sequence[float], values: Sequence[float], goal: float, maximize: bool) -> float:
    """Samples seen when a learning curve (reports of ``values`` after ``samples``) first reaches
    ``goal``, between the reports either side of it (the metric linear in log samples: exact to a few
    percent with reports every few percent of the run); inf where it never does. Reached by the first
    report, the curve says only that it took no longer than that."""
    sign = -1.0 if maximize else 1.0
    for k, (seen, value) in enumerate(zip(samples, values)):
        if sign * value <= sign * goal:
            before, earlier = (samples[k - 1], sign * values[k - 1]) if k else (0.0, math.inf)
            if before <= 0 or not earlier > sign * value:
                return float(seen)
            share = (earlier - sign * goal) / (earlier - sign * value)
            return float(math.exp(math.log(before) + share * math.log(seen / before)))
    return math.inf
