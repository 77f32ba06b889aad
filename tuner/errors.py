"""Errors the user can fix: the CLI shows them as one line and exits with code 2."""


class InputError(ValueError):
    """Bad input (study file, workload target, storage URL, study name): nothing was written."""


class WorkloadFailing(RuntimeError):
    """Every recent trial failed: the workload itself is broken, so the run stops and says why."""


class Interrupted(Exception):
    """The user stopped a run (Ctrl+C, or SIGTERM): the CLI exits with 128 + the signal's number
    (130, 143) and says how to resume."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (see ``tuner.workers.stopped_by_signals``): raised where the run is,
    as Ctrl+C is, so that Optuna fails the trial under way instead of leaving it RUNNING."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StorageFailing(RuntimeError):
    """The storage cannot take a write (a full disk, a lost server): the run stops, losing nothing."""


class TunerWarning(UserWarning):
    """Something the user should know that stops nothing; the CLI shows it as one line."""
