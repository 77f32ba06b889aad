"""Trials whose worker died (killed, machine lost): failed and retried with the same parameters.

Database storages do this with Optuna's heartbeats (``tuner.storage``): a running trial that has
not beaten for the grace period is failed and retried by the next trial any worker starts. A
journal file has no heartbeat, so each trial records the process running it, and a run or worker
starting on the same machine fails and retries the trials of processes that no longer exist.
Finished trials are never touched.
"""
from __future__ import annotations

import os
import socket
import warnings
from datetime import datetime, timedelta

import optuna
from optuna.storages import fail_stale_trials
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from tuner.storage import heartbeat_grace
from tuner.trials import WORKER_ATTR, queue_retry


def _this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def uses_heartbeats(study: optuna.Study) -> bool:
    return is_heartbeat_enabled(study._storage)


def mark_worker(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record which process runs ``trial`` (where heartbeats do not cover it)."""
    if not uses_heartbeats(study):
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, _this_worker())


def watched_here(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Whether a run here would notice ``trial``'s worker dying and retry it: always on a database
    (heartbeats); on a journal file, when the worker is a process of this machine."""
    return uses_heartbeats(study) or _worker(trial)[0] == socket.gethostname()


def _worker(trial: FrozenTrial) -> tuple[str, str]:
    """(host, pid) of the process that runs a journal trial (empty where none is recorded)."""
    host, _, pid = str(trial.system_attrs.get(WORKER_ATTR, "")).rpartition(":")
    return host, pid


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of dead workers and queue their retries (WAITING, same parameters).

    Database storages: trials whose heartbeat is older than the grace period (Optuna also checks
    at the start of every trial, but a run that has nothing left to do starts none). Journal
    files: trials of processes on this machine that no longer exist. Returns the numbers failed.
    """
    if uses_heartbeats(study):
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)
        _fail_killed_before_first_heartbeat(study)
        still = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        return sorted(running - still)
    host = socket.gethostname()
    failed = _fail_killed_before_first_heartbeat(study, unmarked=True)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, pid = _worker(trial)
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        queue_retry(study, trial)
        failed.append(trial.number)
    return failed


def _fail_killed_before_first_heartbeat(study: optuna.Study, unmarked: bool = False) -> list[int]:
    """Optuna counts a trial as stale only once it has beaten: a worker killed while creating its
    trial leaves it RUNNING forever, with no heartbeat and no parameters (the objective sets them
    first thing). On a journal file (``unmarked``), likewise a trial whose worker was stopped before
    it recorded its process (the first thing the objective does). Nothing to retry; the balanced
    allocation fills its place."""
    cutoff = datetime.now() - timedelta(seconds=heartbeat_grace())
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        dead = not trial.params and (not unmarked or WORKER_ATTR not in trial.system_attrs)
        if dead and trial.datetime_start is not None and trial.datetime_start < cutoff:
            try:
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                failed.append(trial.number)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished (or another worker failed it) meanwhile
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
