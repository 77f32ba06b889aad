"""The workload contract: ``train(run) -> float``, and running one trial of it.

A workload trains with ``run.lr`` and ``run.batch_size``, calls ``run.report(step, value)`` where
``step`` counts the training samples seen so far (so different batch sizes are compared at equal
data), and returns the final metric. ``report`` raises ``optuna.TrialPruned`` when the trial should
stop. NaN/inf (reported or returned) or ``FloatingPointError`` means the run diverged: the trial is
kept, because a diverged learning rate bounds the optimum from above. The built-in workloads also
call a run diverged once its loss climbs ``DIVERGENCE_FACTOR`` times above the untrained model's.

A workload can be tried without a study::

    >>> from tuner import Run
    >>> from tuner.workloads.quadratic import train
    >>> loss = train(Run(lr=0.05, batch_size=32))
"""
from __future__ import annotations

import importlib
import math
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np
import optuna
from pydantic import BaseModel, ValidationError

from tuner import trials
from tuner.errors import InputError
from tuner.spec import StudySpec, describe_error
from tuner.trials import Outcome

# a loss this far above the untrained model's has diverged, even while still finite (as training code says)
DIVERGENCE_FACTOR = 100.0

TrainFn = Callable[["Run"], float]


class TrialDiverged(optuna.TrialPruned):
    """Raised by ``Run.report`` on a NaN/inf value: the run stops and is recorded as diverged."""


class GoalReached(optuna.TrialPruned):
    """Raised by ``Run.report`` once the metric reaches the study's ``goal``: the run stops (as a pruned
    one does, so a training loop or script that stops on ``TrialPruned`` stops on it) and is complete."""


@dataclass(frozen=True)
class Goal:
    """A metric value to reach (``[study] goal``), and which way the metric improves."""

    value: float
    maximize: bool

    def reached(self, metric: float) -> bool:
        return metric >= self.value if self.maximize else metric <= self.value

    def steps(self, reports: list[tuple[int, float]], batch_size: int) -> float:
        """Optimizer steps until the reports first reach the goal (between two reports); inf if never."""
        samples, values = zip(*reports) if reports else ((), ())
        return trials.samples_to_reach(samples, values, self.value, self.maximize) / batch_size


class Run:
    """One training run: what the workload reads, and where it reports progress."""

    def __init__(self, lr: float, batch_size: int, seed: int = 0,
                 options: Mapping[str, Any] | None = None, trial: optuna.Trial | None = None,
                 direction: str = "minimize", goal: Goal | None = None):
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.direction = direction  # whether the metric reported is minimized or maximized
        self.options = MappingProxyType(dict(options or {}))
        self.samples_seen = 0
        self.noise_scale: dict | None = None  # what B_simple is read from, where the workload measures it
        # (train_torch's noise_scale; tuner.trials.noise_scale reads it)
        self.reports: list[tuple[int, float]] = []
        self._trial = trial
        self._goal = goal

    def report(self, step: int, value: float) -> None:
        """Record the metric after ``step`` training samples; raises optuna.TrialPruned to stop (also
        when the metric reached the study's goal: ``GoalReached``)."""
        if isinstance(step, bool) or not float(step).is_integer() or step < 0:
            raise ValueError(f"run.report: step counts samples seen, a non-negative integer; got {step!r}")
        step, value = int(step), _number(value, f"run.report: the metric after {step} samples was {value!r}")
        if not math.isfinite(value):
            raise TrialDiverged(f"metric was {value} after {step} samples")
        self.samples_seen = max(self.samples_seen, step)
        self.reports.append((step, value))
        if self._trial is not None:
            self._trial.report(value, step)
        if self._goal is not None and self._goal.reached(value):
            if not step:  # no steps to count: every learning rate would tie at zero
                raise ValueError(f"the untrained model's metric, {value:g}, already reaches the goal "
                                 f"{self._goal.value:g}: choose a goal that training has to work for")
            raise GoalReached(f"reached {self._goal.value:g} after {step} samples")
        if self._trial is not None and self._trial.should_prune():
            raise optuna.TrialPruned(f"pruned after {step} samples")

    @property
    def trial(self) -> optuna.Trial | None:
        """The Optuna trial this run reports to; None outside a study."""
        return self._trial

    def __repr__(self) -> str:
        return f"Run(lr={self.lr:.4g}, batch_size={self.batch_size}, seed={self.seed})"


@dataclass(frozen=True)
class Workload:
    """A resolved ``[workload]`` table: the callable and the options it receives."""

    target: str
    train: TrainFn
    options: Mapping[str, Any]


def load_workload(spec: StudySpec, spec_dir: str | Path | None = None) -> Workload:
    """Import the spec's target and validate its options, or check its command (``tuner.command``:
    the script runs in ``spec_dir`` unless ``cwd`` says otherwise); raises InputError on any problem.

    The spec file's folder and the working directory are importable, so a ``train.py`` beside
    the study file is found as ``target = "train:main"``.
    """
    from tuner.workloads import BUILTIN

    for folder in (Path.cwd(), Path(spec_dir) if spec_dir else None):
        if folder is not None and str(folder.resolve()) not in sys.path:
            sys.path.insert(0, str(folder.resolve()))
    if spec.workload.command is not None:
        from tuner.command import Command

        return Workload(target=" ".join(spec.workload.command), train=Command(spec.workload, spec_dir),
                        options=MappingProxyType(spec.workload.options))
    target, options = spec.workload.target, spec.workload.options
    module, train = _import_target(target, BUILTIN.get(target, target))
    if target in BUILTIN:  # built-ins declare their options, so a misspelt option is caught here
        options = _validate_options(target, module.Options, options)
        _check_direction(options, spec.study.direction)
        if hasattr(module, "check_batch_sizes"):  # options that only make sense with the batch sizes
            try:
                module.check_batch_sizes(options, spec.search.batch_sizes)
            except ValueError as e:
                raise InputError(f"[workload] {e}") from None
    return Workload(target=target, train=train, options=MappingProxyType(options))


def _import_target(target: str, reference: str) -> tuple[ModuleType, TrainFn]:
    from tuner.workloads import BUILTIN

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise InputError(f"[workload] target: unknown workload {target!r}; use a built-in name "
                         f"({', '.join(BUILTIN)}) or 'module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise InputError(f"[workload] target {target!r}: no module named {e.name!r} (looked in the "
                             "study file's folder, the working directory and sys.path)") from None
        raise InputError(f"[workload] target {target!r}: importing {module_name} failed: {e}") from None
    except Exception as e:  # noqa: BLE001 - any import-time failure of user code is bad input here
        raise InputError(f"[workload] target {target!r}: importing {module_name} failed: "
                         f"{type(e).__name__}: {e}") from None
    train = getattr(module, attribute, None)
    if train is None:
        raise InputError(f"[workload] target {target!r}: module {module_name} has no attribute {attribute!r}")
    if not callable(train):
        raise InputError(f"[workload] target {target!r}: {attribute} is not callable")
    return module, train


def _check_direction(options: dict[str, Any], direction: str) -> None:
    """A built-in trainer's metric is minimized (a loss) or maximized (accuracy): the study must agree."""
    from tuner.workloads.trainer import metric_direction

    metric = options.get("metric")
    if metric is not None and metric_direction(metric) != direction:
        raise InputError(f"[workload] metric = {metric!r} is to {metric_direction(metric)}, but [study] direction "
                         f"is {direction!r}; set direction = {metric_direction(metric)!r}")


def _validate_options(target: str, model: type[BaseModel], options: dict[str, Any]) -> dict[str, Any]:
    try:
        return model.model_validate(options).model_dump()
    except ValidationError as e:
        raise InputError(describe_error(e, "workload", model)) from None


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A well-mixed seed per trial: reproducible, and different for every trial of the study."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0] & 0x7FFFFFFF)


def run_trial(workload: Workload, trial: optuna.Trial, batch_size: int, lr: float, seed: int,
              goal: Goal | None = None) -> float:
    """Train once and record what happened on the trial (see ``tuner.trials``); the final metric, or
    with a ``goal`` the steps the run took to reach it (the run stops there).

    Diverged runs end as PRUNED with outcome ``diverged``, and so do runs that never reach the goal
    with outcome ``pruned`` (they took longer than their budget); other exceptions propagate after
    the error is stored, so Optuna fails the trial and the study goes on.
    """
    maximize = goal.maximize if goal is not None else trial.study.direction == optuna.study.StudyDirection.MAXIMIZE
    run = Run(lr=lr, batch_size=batch_size, seed=seed, options=workload.options, trial=trial,
              direction="maximize" if maximize else "minimize", goal=goal)
    try:
        value = workload.train(run)
        value = _as_metric(value)
    except GoalReached:
        _record(trial, run, Outcome.COMPLETE)
        return goal.steps(run.reports, batch_size)
    except (TrialDiverged, FloatingPointError) as e:
        _record(trial, run, Outcome.DIVERGED)
        raise optuna.TrialPruned(f"diverged: {e}") from e
    except optuna.TrialPruned:
        _record(trial, run, Outcome.PRUNED)
        raise
    except optuna.exceptions.StorageInternalError:  # a report's write failed: the storage's fault, not
        raise                                        # the workload's (and recording it would fail too)
    except Exception as e:
        _record(trial, run, Outcome.FAILED, error=describe_exception(e))
        if is_out_of_memory(e):
            trial.set_user_attr(trials.OUT_OF_MEMORY, True)
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # sys.exit() or the like: it would end the run and leave the trial RUNNING
        exited = WorkloadExited(f"{describe_exception(e)}: train(run) must return the metric (or raise an "
                                "Exception), not exit")
        _record(trial, run, Outcome.FAILED, error=str(exited))
        raise exited from None
    if goal is not None:
        return _final_steps(trial, run, goal, value)
    _record(trial, run, Outcome.COMPLETE)
    return value


def _final_steps(trial: optuna.Trial, run: Run, goal: Goal, final: float) -> float:
    """The steps to the goal of a run that trained to its end (a loop that caught ``GoalReached``,
    or one that reaches the goal only in its final metric: then it took the whole run). A run that
    never reached it is stopped like a pruned one: it needed more than its budget."""
    steps = goal.steps(run.reports, run.batch_size)
    if math.isinf(steps) and not goal.reached(final):
        _record(trial, run, Outcome.PRUNED)
        raise optuna.TrialPruned(f"did not reach {goal.value:g} in {run.samples_seen} samples")
    if math.isinf(steps) and not run.samples_seen:
        error = "train(run) must report the samples seen (run.report) for the steps to the goal to be counted"
        _record(trial, run, Outcome.FAILED, error=error)
        raise ValueError(error)
    _record(trial, run, Outcome.COMPLETE)
    return steps if math.isfinite(steps) else run.samples_seen / run.batch_size


class WorkloadExited(Exception):
    """The workload called sys.exit() (or raised another BaseException): the trial fails like any error."""


def is_out_of_memory(error: BaseException) -> bool:
    """Host or device memory ran out (torch.cuda.OutOfMemoryError, checked without importing torch)."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


def _as_metric(value: Any) -> float:
    metric = _number(value, f"train(run) returned {value!r}")
    if not math.isfinite(metric):
        raise TrialDiverged(f"final metric was {metric}")
    return metric


def _number(value: Any, what: str) -> float:
    """A metric as a float: a number, a NumPy scalar or a one-element tensor; never a string (\"0.5\"
    is a bug in the workload, not a loss) nor a bool."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise TypeError(f"{what}; it must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what}; it must be a number") from None


def _record(trial: optuna.Trial, run: Run, outcome: Outcome, error: str | None = None) -> None:
    trial.set_user_attr(trials.OUTCOME, outcome.value)
    trial.set_user_attr(trials.SEED, run.seed)
    trial.set_user_attr(trials.SAMPLES, run.samples_seen)
    if run.noise_scale is not None:
        trial.set_user_attr(trials.NOISE_SCALE, run.noise_scale)
    if error is not None:
        trial.set_user_attr(trials.ERROR, error)


def describe_exception(error: BaseException) -> str:
    """'ValueError: bad shape (model.py:42)': the message (cut to ERROR_LIMIT characters: a trial's
    attributes are read on every load of the study) and the innermost frame that raised it."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    message = str(error)
    if len(message) > ERROR_LIMIT:
        message = f"{message[:ERROR_LIMIT]}… ({len(message) - ERROR_LIMIT} characters cut)"
    return f"{type(error).__name__}: {message}{where}"


ERROR_LIMIT = 1000
