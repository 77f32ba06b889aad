"""Shared helpers: study specs as dicts, real storages in temporary folders, the `tuner` command."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from postgres_server import PostgresUnavailable, create_database, start_postgres

optuna.logging.set_verbosity(optuna.logging.ERROR)

BASE_SPEC = {
    "study": {"name": "test", "n_trials": 24, "seed": 0},
    "search": {"lr": [1e-4, 4.0], "batch_sizes": [8, 32, 128, 512]},
    "workload": {"target": "quadratic", "samples": 4096, "dims": 256},
}


def spec_dict(**tables) -> dict:
    """BASE_SPEC with tables updated key by key: spec_dict(search={"pruner": "none"}).

    A workload with another target replaces the quadratic's options instead of adding to them.
    """
    spec = copy.deepcopy(BASE_SPEC)
    for table, values in tables.items():
        if table == "workload" and values.get("target", "quadratic") != "quadratic":
            spec[table] = {}
        spec.setdefault(table, {}).update(values)
    return spec


def toml_text(spec: dict) -> str:
    lines = []
    for table, values in spec.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


@pytest.fixture
def write_spec(tmp_path):
    def write(spec: dict, name: str = "study.toml") -> Path:
        path = tmp_path / name
        path.write_text(toml_text(spec))
        return path
    return write


def tuner(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed `tuner` command, as a user runs it."""
    command = [str(Path(sys.executable).parent / "tuner"), *args]
    return subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# --- a real PostgreSQL server on loopback, for the distributed tests -------------------------------

@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway server (tests/postgres_server.py) for the session: yields its base URL."""
    try:
        server = start_postgres()
    except PostgresUnavailable as e:
        pytest.fail(str(e))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh database on the session's server, for one test."""
    import re

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:50]
    return create_database(postgres_server, name)
