"""Errors the user can fix: the CLI shows them as one line and exits with code 2."""


class InputError(ValueError):
    """Bad input (study file, workload target, storage URL, study name): nothing was written."""


class WorkloadFailing(RuntimeError):
    """Every recent trial failed: the workload itself is broken, so the run stops and says why."""


class Interrupted(Exception):
    """The user stopped a run (Ctrl+C): the CLI exits with 130 and says how to resume."""


class StorageFailing(RuntimeError):
    """The storage cannot take a write (a full disk, a lost server): the run stops, losing nothing."""


class TunerWarning(UserWarning):
    """Something the user should know that stops nothing; the CLI shows it as one line."""
