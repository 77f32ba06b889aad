"""`tuner verify`: train each rule's learning rate at batch sizes the study never searched, with
several seeds and no pruning, and store what following each rule costs there in the study's fit.

The trainings are queued in the study (Optuna's ``enqueue_trial``; user attribute ``purpose`` is
``verify``), so `tuner worker` processes on other machines run them too, and a killed worker's
training is retried as in `tuner run`. Rerun on an interrupted verification, it queues only what is
missing. Verification trials are held out of the search and the fit (``tuner.trials``): the rules
are never fitted to the batch sizes they are checked at, and a refit keeps the verification.

    from tuner.verify import prepare, run

    plan = prepare("digits-mlp-sgd", "sqlite:///studies.db", batch_sizes=[24, 96], seeds=3)
    print(plan.describe())
    fit = run(plan)
    print(fit.verify.summary)
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from tuner.errors import InputError
from tuner.fit import FitResult, load_fit, save_fit
from tuner.fit._verification import (
    DEFAULT_RULES,
    RECOMMENDED,
    RULE_CHOICES,
    Point,
    beyond_the_best,
    default_batch_sizes,
    plan,
    summarize,
)
from tuner.progress import report_failure
from tuner.recovery import watched_here
from tuner.runner import interruptible, open_study, run_study, stored_spec
from tuner.spec import StudySpec
from tuner.storage import load_study, open_storage, storage_url
from tuner.trials import BATCH_SIZE, FINISHED, LR, PURPOSE, SEED, VERIFY, is_verification
from tuner.workload import Workload, load_workload

_STREAM = 0x76657269  # "veri": verification seeds are drawn apart from the search's trial seeds
_POLL = 2.0  # seconds between looks at trainings other workers run
_PRESENT = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class VerifyPlan:
    """What a verification will train: ``points`` × ``seeds``, of which ``missing`` are not yet in
    the study (finished, running or queued)."""

    study: optuna.Study
    spec: StudySpec
    fit: FitResult
    url: str
    points: list[Point]
    seeds: list[int]
    missing: list[tuple[Point, int]]

    def describe(self) -> str:
        """'45 trainings at B=23, 91, 362 (15 learning rates × 3 seeds, no pruning); 12 done or under way'"""
        sizes = ", ".join(str(b) for b in dict.fromkeys(p.batch_size for p in self.points))
        total = len(self.points) * len(self.seeds)
        under_way = total - len(self.missing)
        return (f"verify '{self.study.study_name}': {total} trainings at B={sizes} ({len(self.points)} learning "
                f"rates × {len(self.seeds)} seeds, no pruning)"
                + (f"; {under_way} finished or under way already" if under_way else ""))


def prepare(study_name: str, storage: str | None = None, *, batch_sizes: Sequence[int] | None = None,
            seeds: int = 3, rules: Sequence[str] = DEFAULT_RULES) -> VerifyPlan:
    """Check the request against the study and plan it; nothing is written.

    Raises:
        InputError: an unknown study or rule, a study with no fit or not made by `tuner run`,
            batch sizes that are not positive integers, fewer than one seed.
    """
    _check(batch_sizes, seeds, rules)
    url = storage_url(storage)
    study = load_study(study_name, url)
    spec = stored_spec(study)
    if spec is None:
        raise InputError(f"study '{study_name}' was not made by `tuner run`: it stores no workload to train")
    fit = load_fit(study)
    if fit is None:
        raise InputError(f"study '{study_name}' has no fit to verify: run `tuner fit {study_name}` first")
    missing_rules = [r for r in rules if r != RECOMMENDED and r not in fit.rules]
    if missing_rules:
        raise InputError(f"the fit stored in study '{study_name}' has no {', '.join(missing_rules)} rule (an earlier "
                         f"version fitted it): run `tuner fit {study_name}` again first")
    sizes = list(dict.fromkeys(batch_sizes)) if batch_sizes else default_batch_sizes(fit.batch_sizes)
    if not sizes:
        raise InputError(f"study '{study_name}' searched one batch size; name the ones to verify at with --batch-sizes")
    points = plan(fit, sizes, list(dict.fromkeys(rules)))
    seed_list = verify_seeds(spec.study.seed, seeds)
    present = [t for t in study.get_trials(deepcopy=False, states=_PRESENT) if is_verification(t)]
    finished = [t for t in present if t.state in FINISHED]
    while extra := beyond_the_best(fit, points, seed_list, finished):  # steps an earlier run took
        points += extra
    missing = [(p, s) for p in points for s in seed_list if not any(_is(t, p, s) for t in present)]
    return VerifyPlan(study, spec, fit, url, points, seed_list, missing)


def run(plan: VerifyPlan, *, quiet: bool = False, workload: Workload | None = None) -> FitResult:
    """Queue the plan's missing trainings, train them (and wait for those other workers run), and
    store the verification in the study's fit; the fit with it. ``workload``: the study file's,
    loaded from the working directory, unless given."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported by the progress callback
    study = open_study(plan.spec, open_storage(plan.url, create=False))
    workload = workload or load_workload(plan.spec)
    points, missing = list(plan.points), list(plan.missing)
    progress = _Progress(study, points, plan.seeds, enabled=not quiet)
    try:
        with interruptible(plan.url):
            while missing:
                for point, seed in missing:
                    study.enqueue_trial({BATCH_SIZE: point.batch_size, LR: point.lr},
                                        user_attrs={PURPOSE: VERIFY, SEED: seed}, skip_if_exists=False)
                progress.refresh(study)
                _train(study, plan.spec, workload, progress)
                extra = beyond_the_best(plan.fit, points, plan.seeds, _verifications(study, *FINISHED))
                points += extra
                missing = [(p, s) for p in extra for s in plan.seeds]
    finally:
        progress.close()
    fit = load_fit(study) or plan.fit  # a `tuner fit` meanwhile: keep its rules
    verification = summarize(fit, points, plan.seeds, _verifications(study, *FINISHED))
    result = fit.with_verification(verification)
    save_fit(study, result)
    return result


def _train(study: optuna.Study, spec: StudySpec, workload: Workload, progress: _Progress) -> None:
    """Run the queued verifications, then wait for those other workers run (or their retries)."""
    while True:
        run_study(study, spec, workload, callbacks=[progress], until=_nothing_queued)
        if not any(watched_here(study, t) for t in _verifications(study, TrialState.RUNNING)):
            return  # a journal trial on another machine may never end: not waited for
        time.sleep(_POLL)
        progress.refresh(study)


def verify_seeds(study_seed: int, n: int) -> list[int]:
    """The seeds every learning rate of a verification runs with: the same at every learning rate,
    so that the regrets are paired differences."""
    return [int(np.random.SeedSequence([study_seed, _STREAM, k]).generate_state(1)[0] & 0x7FFFFFFF)
            for k in range(n)]


def _check(batch_sizes: Sequence[int] | None, seeds: int, rules: Sequence[str]) -> None:
    if batch_sizes is not None and any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise InputError(f"batch sizes must be positive integers, got {', '.join(map(str, batch_sizes))}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"seeds must be 1 or more, got {seeds}")
    unknown = [r for r in rules if r not in RULE_CHOICES]
    if unknown or not rules:
        raise InputError(f"unknown rule {', '.join(unknown) or '(none given)'}; choose from {', '.join(RULE_CHOICES)}")


def _is(trial: FrozenTrial, point: Point, seed: int) -> bool:
    # a queued trial has no params yet: Optuna keeps what enqueue_trial fixed in a system attribute
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    return trial.user_attrs.get(SEED) == seed and point.matches(params.get(BATCH_SIZE), params.get(LR, 1.0))


def _verifications(study: optuna.Study, *states: TrialState) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states) if is_verification(t)]


def _nothing_queued(study: optuna.Study) -> bool:
    return not _verifications(study, TrialState.WAITING)


class _Progress:
    """A bar over the planned trainings (``points`` may grow), finished by any worker."""

    def __init__(self, study: optuna.Study, points: list[Point], seeds: list[int], enabled: bool) -> None:
        self._points, self._seeds = points, seeds
        self._bar = tqdm(total=len(points) * len(seeds), unit="training", desc="verify",
                         file=sys.stderr, dynamic_ncols=True, disable=None if enabled else True)
        self.refresh(study)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        report_failure(trial, "training")
        self.refresh(study)

    def refresh(self, study: optuna.Study) -> None:
        finished = _verifications(study, *FINISHED)
        self._bar.total = len(self._points) * len(self._seeds)
        self._bar.n = sum(any(_is(t, p, s) for t in finished) for p in self._points for s in self._seeds)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
