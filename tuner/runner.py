"""Run a study: create or resume it in the storage, train trials until ``n_trials`` have finished
(here, or in local worker processes), then fit the rules and store the fit.

``run`` is `tuner run` and ``join`` is `tuner worker`, whole; the CLI only shows what they return.
The spec is stored on the study (user attribute ``tuner_spec``) so that a resumed run can be
checked against it, and ``tuner worker`` can join with nothing but the study's name.

    from tuner.runner import run

    report = run(Path("studies/quadratic.toml"), "sqlite:///studies.db")
    print(report.fit.verdict if report.fit else report.not_fitted)
"""
from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.pruners import BasePruner, NopPruner
from optuna.samplers import RandomSampler, TPESampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import PendingRollbackError, SQLAlchemyError

from tuner.errors import InputError, Interrupted, Stopped, StorageFailing, WorkloadFailing
from tuner.fit import FitResult, fit_study, load_fit, save_fit
from tuner.progress import TrialProgress
from tuner.recovery import mark_worker, recover_dead_trials
from tuner.search import (
    BatchSizePruner,
    BatchSizeSampler,
    GoalPruner,
    SameStepMedianPruner,
    ValleyPruner,
    ValleySampler,
)
from tuner.spec import StudySpec, load_spec, parse_spec
from tuner.storage import load_study, open_storage, redact, storage_url
from tuner.trials import (
    BATCH_SIZE,
    ERROR,
    FINISHED,
    INFEASIBLE_ATTR,
    LR,
    OUT_OF_MEMORY,
    SEED,
    SPEC_ATTR,
    is_verification,
    search_trials,
)
from tuner.workers import STUDY_DIR_ENV, WORKER_INDEX_ENV, start_workers, stopped_by_signals, wait
from tuner.workload import Goal, Workload, describe_exception, load_workload, run_trial, trial_seed

# a workload that fails this many trials in a row is broken, not unlucky: stop and say why
MAX_CONSECUTIVE_FAILURES = 5

Callback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(frozen=True)
class RunReport:
    """What a run did: the study it searched (in the storage at ``url``), and its fit, or why there
    is none yet (``not_fitted``: the search itself succeeded)."""

    spec: StudySpec
    study: optuna.Study
    url: str
    fit: FitResult | None = None
    not_fitted: str | None = None


def run(spec_file: Path, storage: str | None = None, *, n_trials: int | None = None, study_name: str | None = None,
        workers: int = 1, fit: bool = True, quiet: bool = False) -> RunReport:
    """`tuner run`: search the study file's study (overrides: ``n_trials``, ``study_name``) in
    ``storage`` (default: ``storage_url``'s), here or in ``workers`` local processes, then fit it
    (unless ``fit`` is false) and store the fit in the study.

    Raises:
        InputError: bad input; nothing was written.
        WorkloadFailing: the workload keeps failing.
        Interrupted: Ctrl+C; the finished trials are kept.
    """
    spec = load_spec(spec_file).with_overrides(name=study_name, n_trials=n_trials)
    workload = load_workload(spec, spec_file.parent)
    study, url = search(spec, workload, storage, workers=workers, import_dirs=[spec_file.parent], quiet=quiet)
    if not fit:
        return RunReport(spec, study, url)
    try:
        return RunReport(spec, study, url, fit=fit_and_save(study))
    except InputError as e:
        return RunReport(spec, study, url, not_fitted=str(e))


def join(study_name: str, storage: str | None = None, *, quiet: bool = False) -> RunReport:
    """`tuner worker`: one more worker on a study that `tuner run` made, following the study file
    stored in it (workload modules are imported, and a command workload runs, from the working
    directory; a local worker `tuner run` started uses the study file's folder)."""
    spec = stored_spec(load_study(study_name, storage))
    if spec is None:
        raise InputError(f"study '{study_name}' was not made by `tuner run`: it stores no study file to follow")
    study, url = search(spec, load_workload(spec, os.environ.get(STUDY_DIR_ENV)), storage, quiet=quiet)
    return RunReport(spec, study, url)


def search(spec: StudySpec, workload: Workload, storage: str | None = None, *, workers: int = 1,
           import_dirs: Sequence[Path] = (), quiet: bool = False) -> tuple[optuna.Study, str]:
    """Open or resume the spec's study and train until it holds n_trials finished trials, with a
    progress bar on a terminal (unless ``quiet``); the study and the storage URL it is in."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported by the progress callback
    url = storage_url(storage)
    study = open_study(spec, open_storage(url, create=True))
    progress = TrialProgress(study, spec.study.n_trials, spec.search.batch_sizes, enabled=not quiet)
    try:
        with interruptible(url):
            if workers == 1:
                run_study(study, spec, workload, callbacks=[progress])
            else:
                _run_workers(study, url, workers, list(import_dirs), progress)
    finally:
        progress.close()
    return study, url


@contextmanager
def interruptible(url: str) -> Iterator[None]:
    """Ctrl+C or SIGTERM (here or in local workers) ends the block as Interrupted: exit 130 or 143,
    and one line saying that the finished trials are kept."""
    try:
        with stopped_by_signals():
            yield
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        what = "terminated" if signum == signal.SIGTERM else "interrupted"
        raise Interrupted(f"{what}; finished trials are kept in {redact(url)}: run the same command to resume",
                          exit_code=128 + signum) from None


def _run_workers(study: optuna.Study, url: str, workers: int, import_dirs: list[Path],
                 progress: TrialProgress) -> None:
    codes = wait(start_workers(study.study_name, url, workers, import_dirs), lambda: progress.refresh(study))
    if any(codes):
        raise WorkloadFailing(f"{sum(c != 0 for c in codes)} of {workers} workers failed "
                              f"(exit codes {sorted(set(codes))}); their errors are above")


def fit_and_save(study: optuna.Study, target: float | None = None) -> FitResult:
    """`tuner fit`: fit the study and store the fit in it (replacing an earlier one, but for what
    `tuner verify` measured: that stays true of the learning rates it trained)."""
    result = fit_study(study, target=target)
    previous = load_fit(study)
    if previous is not None and previous.verify is not None:
        result = result.with_verification(previous.verify)
    save_fit(study, result)
    return result


def stored_spec(study: optuna.Study) -> StudySpec | None:
    data = study.user_attrs.get(SPEC_ATTR)
    return None if data is None else parse_spec(data, source=f"study '{study.study_name}'")


def open_study(spec: StudySpec, storage: BaseStorage) -> optuna.Study:
    """Create the spec's study, or load it and check that this spec may continue it."""
    study = _create_or_load(spec.study.name, storage, spec.study.objective)
    previous = stored_spec(study)
    if previous is None and study.trials:
        raise InputError(f"study '{spec.study.name}' exists but was not made by `tuner run`; "
                         "choose another name with --study-name")
    if previous is not None:
        spec.check_continues(previous)
    if previous != spec:
        study.set_user_attr(SPEC_ATTR, spec.to_stored())
    worker = int(os.environ.get(WORKER_INDEX_ENV, "0"))
    # Local workers all open the study before any trial exists: without their index they would
    # share one random stream and propose the same learning rates.
    study.sampler = make_sampler(spec, stream=(len(study.trials), *([worker] if worker else [])))
    study.pruner = make_pruner(spec)
    return study


def _create_or_load(name: str, storage: BaseStorage, direction: str) -> optuna.Study:
    # Several workers may start at once: whoever loses the creation race loads the winner's study.
    # A study that exists is loaded without trying to create it: on a journal file the attempt
    # is a record written (and a refused resume would leave the file changed).
    for attempt in range(5):
        if name not in optuna.get_all_study_names(storage):
            try:
                return optuna.create_study(study_name=name, storage=storage, direction=direction)
            except optuna.exceptions.DuplicatedStudyError:
                pass
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # the winner has not finished writing it yet
            time.sleep(0.05 * 2**attempt)
    return optuna.load_study(study_name=name, storage=storage)


# With fewer trials per batch size, spreading each batch size's first trials over the whole range
# wastes most of them: on the quadratic at 6 per batch size, starting from the neighbours' optimum
# cuts the worst batch size's error from ×2.9 to ×1.6 (30 seeds). From about 10 on, both reach
# about the same accuracy per sample (the warm start still a little ahead at 10-12), the spread's
# worst seed is closer at 15-19 (×1.8 against ×2.4), and it leaves more for the pruner to stop
# early (28% of samples saved at 12 per batch size, against 19%). A heuristic: see
# benchmarks/accuracy.py and benchmarks/pruning_savings.py. A study with a goal starts warm at any
# budget: the runs the spread puts far below the optimum never reach the goal and run their whole
# budget; on the noisy quadratic (10 seeds, 120 trials) warm runs took 31% fewer samples and the
# median seed's worst reading of the steps came 6.4% -> 4.7% off the closed form.
WARM_START_BELOW = 10
# With fewer trials per batch size, each one needs its whole even share to bracket its optimum: at 8,
# weights let a batch size fall to 6 trials, short of a bracket, and the study could not be fitted.
# From about 15 (the panel's budgets) they pay: rule regret, worst seed, 10-32% -> 5-7%.
ADAPTIVE_FROM = 10


def make_sampler(spec: StudySpec, stream: tuple[int, ...] = ()) -> BatchSizeSampler:
    """The spec's sampler; ``stream`` (trials so far, worker index) keeps a resumed run from
    replaying the first run's draws, and local workers from drawing the same numbers."""
    search = spec.search
    seed = int(np.random.SeedSequence([spec.study.seed, *stream]).generate_state(1)[0])
    lr_samplers = {
        "valley": lambda: ValleySampler(n_startup_trials=search.startup_trials, replicates=search.replicates,
                                        seed=seed),
        "tpe": lambda: TPESampler(n_startup_trials=search.startup_trials, constant_liar=True, seed=seed),
        "random": lambda: RandomSampler(seed=seed),
    }
    warm_start = search.warm_start
    if warm_start is None:  # a study with a goal: the spread's far runs each take their whole budget
        warm_start = (spec.study.goal is not None
                      or spec.study.n_trials < WARM_START_BELOW * len(search.batch_sizes))
    adaptive = search.shares == "adaptive" or (
        search.shares == "auto" and spec.study.n_trials >= ADAPTIVE_FROM * len(search.batch_sizes))
    return BatchSizeSampler(search.batch_sizes, lr_sampler=lr_samplers[search.sampler](),
                            warm_start=warm_start, adaptive=adaptive, seed=seed)


def make_pruner(spec: StudySpec) -> BasePruner:
    search = spec.search
    if search.pruner == "none":
        return NopPruner()
    if spec.study.goal is not None:  # scored by steps, not by the metric the runs report
        return GoalPruner(n_warmup_steps=search.pruner_warmup_samples)
    within = ValleyPruner if search.pruner == "valley" else SameStepMedianPruner
    return BatchSizePruner(within(n_startup_trials=search.pruner_startup_trials,
                                  n_warmup_steps=search.pruner_warmup_samples))


def objective_for(spec: StudySpec, workload: Workload, watch: _Watch | None = None) -> Callable[[optuna.Trial], float]:
    """The trial: a batch size, a learning rate, a training run. A storage that fails to write (a
    full disk, a database gone) is not the workload failing: ``watch`` is told, to stop the run."""
    sizes, (low, high) = spec.search.batch_sizes, spec.search.lr
    goal = Goal(spec.study.goal, spec.study.direction == "maximize") if spec.study.goal is not None else None

    def ask(trial: optuna.Trial) -> tuple[int, float]:
        try:
            mark_worker(trial.study, trial)
            with warnings.catch_warnings():  # a verification's fixed params may lie outside the search's
                warnings.filterwarnings("ignore", message="Fixed parameter", category=UserWarning)
                # an int (log) distribution, not a categorical one, so batch sizes can be added on resume
                return (trial.suggest_int(BATCH_SIZE, sizes[0], sizes[-1], log=True),
                        trial.suggest_float(LR, low, high, log=True))
        except (optuna.exceptions.StorageInternalError, SQLAlchemyError):
            raise
        except Exception as e:  # a sampler that failed: recorded as a workload's error is, else it says nothing
            trial.set_user_attr(ERROR, describe_exception(e))
            raise

    def objective(trial: optuna.Trial) -> float:
        try:
            batch_size, lr = ask(trial)
            seed = trial.user_attrs[SEED] if is_verification(trial) else trial_seed(spec.study.seed, trial.number)
            return run_trial(workload, trial, batch_size, lr, seed, goal)
        except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as e:
            failure = _failed_write(e)
            if watch is not None:
                watch.storage_failure = failure
            raise failure from e

    return objective


def _root_cause(error: BaseException) -> str:
    """The database's own words (``database or disk is full``), not Optuna's guess that wraps them.
    Where the connection dropped inside a transaction, SQLAlchemy's words are about its own session
    ("Can't reconnect until invalid transaction is rolled back"), which a user cannot act on: say
    what happened instead."""
    while error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, PendingRollbackError):
        return "the connection to the database was lost inside a transaction"
    return str(getattr(error, "orig", None) or error).splitlines()[0]


def run_study(study: optuna.Study, spec: StudySpec, workload: Workload,
              callbacks: Sequence[Callback] = (), until: Callable[[optuna.Study], bool] | None = None) -> None:
    """Train trials until the study (from ``open_study``) holds ``spec.study.n_trials`` finished
    ones, counting every worker's, and none is queued (or until ``until(study)``: `tuner verify`
    runs only the trainings it queued). Raises WorkloadFailing when MAX_CONSECUTIVE_FAILURES trials
    fail in a row, or when every batch size ran out of memory.
    """
    recover_dead_trials(study)
    done = until or (lambda s: _done(s, spec.study.n_trials))
    if done(study):
        return
    watch = _Watch(spec.search.batch_sizes, done)
    try:
        with _quiet_heartbeat_failures():
            study.optimize(objective_for(spec, workload, watch), catch=(Exception,), callbacks=[watch, *callbacks])
    except Exception as e:  # Optuna masks a failed write of the trial's end with "Should not reach"
        raise _storage_failure(e) or e from None
    watch.raise_if_stopped_early()


@contextmanager
def _quiet_heartbeat_failures() -> Iterator[None]:
    """Keep a failed write in Optuna's heartbeat thread off the terminal: the trial's own next
    write fails the same way, and the main thread reports that in one line."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if _storage_failure(args.exc_value) is None:
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _storage_failure(error: BaseException | None) -> StorageFailing | None:
    """The StorageFailing behind ``error``, if a failed write is what it comes from (Optuna masks
    one that fails the trial's end with "Should not reach", or an UnboundLocalError)."""
    while error is not None:
        if isinstance(error, StorageFailing):
            return error
        if isinstance(error, (optuna.exceptions.StorageInternalError, SQLAlchemyError)):
            return _failed_write(error)
        error = error.__cause__ or error.__context__
    return None


def _failed_write(error: BaseException) -> StorageFailing:
    return StorageFailing(f"the study's storage failed to write: {_root_cause(error)}; the trials finished "
                          "before it are kept")


def _done(study: optuna.Study, n_trials: int) -> bool:
    """n_trials search trials finished, and nothing queued: a retry of a dead worker's trial (the
    trial it lost would have counted, so running its retry keeps the total within workers - 1 of
    n_trials), or a training `tuner verify` queued for any worker to run."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.WAITING))
    if any(t.state == TrialState.WAITING for t in trials):
        return False
    return len(search_trials(trials)) >= n_trials


class _Watch:
    """After every trial (one callback: Optuna deep-copies the trial for each): stop at n_trials
    finished trials; list a batch size that ran out of memory as infeasible, so that the sampler
    gives it no more trials (a retry would fail the same way) and the fit leaves it out; stop a
    workload whose trials keep failing, which is broken, not unlucky."""

    def __init__(self, batch_sizes: list[int], done: Callable[[optuna.Study], bool]) -> None:
        self.batch_sizes, self.done = set(batch_sizes), done
        self.infeasible: set[int] = set()
        self.failures_in_a_row, self.last_error = 0, ""
        self.storage_failure: StorageFailing | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(OUT_OF_MEMORY):
            self.infeasible = set(study.user_attrs.get(INFEASIBLE_ATTR, [])) | {trial.params[BATCH_SIZE]}
            study.set_user_attr(INFEASIBLE_ATTR, sorted(self.infeasible))
        if trial.state == TrialState.FAIL:
            self.failures_in_a_row += 1
            self.last_error = trial.user_attrs.get(ERROR, "no error recorded")
        else:
            self.failures_in_a_row = 0
        if self._stopped_early() or self.done(study):
            study.stop()

    def _stopped_early(self) -> bool:
        return (self.storage_failure is not None or self.batch_sizes <= self.infeasible
                or self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES)

    def raise_if_stopped_early(self) -> None:
        if self.storage_failure is not None:
            raise self.storage_failure
        if self.batch_sizes <= self.infeasible:
            raise WorkloadFailing(f"every batch size ran out of memory ({sorted(self.infeasible)}); "
                                  "try smaller batch sizes or a smaller model")
        if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
            raise WorkloadFailing(f"stopped: the last {self.failures_in_a_row} trials failed; "
                                  f"the latest with {self.last_error}")
