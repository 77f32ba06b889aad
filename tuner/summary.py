"""Per-batch-size counts and best learning rate of a study: what `tuner run` and `tuner studies` show."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.trials import BATCH_SIZE, FINISHED, LR, WORKER_ATTR, Outcome, by_batch_size, is_verification, outcome_of


@dataclass
class BatchSummary:
    batch_size: int
    complete: int = 0
    pruned: int = 0
    diverged: int = 0
    failed: int = 0
    running: int = 0
    best_lr: float | None = None
    best_value: float | None = None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.diverged

    def add(self, trial: FrozenTrial, maximize: bool) -> None:
        outcome = outcome_of(trial)
        if outcome is None:
            self.running += trial.state == TrialState.RUNNING
            return
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)  # fields are named by outcome
        if outcome == Outcome.COMPLETE and (self.best_value is None or (trial.value > self.best_value) == maximize):
            self.best_lr, self.best_value = trial.params[LR], trial.value


def summarize(study: optuna.Study, batch_sizes: list[int] | None = None) -> list[BatchSummary]:
    """One row per batch size (those given, and any that trials used), ascending."""
    rows = {b: BatchSummary(b) for b in batch_sizes or []}
    maximize = study.direction == StudyDirection.MAXIMIZE
    for batch_size, trials in by_batch_size(study.get_trials(deepcopy=False)).items():
        row = rows.setdefault(batch_size, BatchSummary(batch_size))
        for trial in trials:
            row.add(trial, maximize)
    return [rows[b] for b in sorted(rows)]


def format_table(rows: list[BatchSummary]) -> str:
    lines = [f"{'batch':>7} {'complete':>8} {'pruned':>6} {'diverged':>8} {'failed':>6} {'running':>7}"
             f"  {'best lr':>9}  {'best value':>10}"]
    for r in rows:
        best_lr = f"{r.best_lr:9.3g}" if r.best_lr is not None else f"{'-':>9}"
        best = f"{r.best_value:10.4g}" if r.best_value is not None else f"{'-':>10}"
        lines.append(f"{r.batch_size:>7} {r.complete:>8} {r.pruned:>6} {r.diverged:>8} {r.failed:>6} {r.running:>7}"
                     f"  {best_lr}  {best}")
    return "\n".join(lines)


def describe_running(study: optuna.Study, now: datetime | None = None) -> list[str]:
    """One line per RUNNING trial: how long ago it started and, on a journal file, which process
    runs it (a run on that machine recovers it if the process is gone; see ``tuner.recovery``)."""
    now = now or datetime.now()
    lines = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start
        age = f"started {_ago(now - started)} ago" if started is not None else "not started"
        worker = trial.system_attrs.get(WORKER_ATTR)
        lines.append(f"  trial {trial.number} running (batch {trial.params.get(BATCH_SIZE, '?')}): {age}"
                     + (f", process {worker}" if worker else ""))
    return lines


def describe_verification(study: optuna.Study) -> list[str]:
    """A line on the trainings `tuner verify` queued, where it queued any (they are not in the table)."""
    held_out = [t for t in study.get_trials(deepcopy=False) if is_verification(t)]
    if not held_out:
        return []
    finished = sum(t.state in FINISHED for t in held_out)
    pending = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in held_out)
    return [f"  verification (tuner verify): {finished} trainings finished"
            + (f", {pending} queued or running" if pending else "")]


def _ago(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
