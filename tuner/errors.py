"""Errors the user can fix: the CLI shows them as one line and exits with code 2."""


class InputError(ValueError):
    """Bad input (study file, workload target, storage URL, study name): nothing was written."""
