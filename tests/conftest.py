"""Shared helpers: study specs as dicts, real storages in temporary folders, the `tuner` command."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

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

def _postgres_bin(name: str) -> str | None:
    import glob
    import shutil

    return shutil.which(name) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), default=None)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """initdb into a temporary folder (as the postgres user when root: initdb refuses root), start
    the server on a free loopback port with a password, yield its base URL, stop it at the end."""
    import pwd
    import shutil
    import tempfile

    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: run .ci/system-packages")
    folder = Path(tempfile.mkdtemp(prefix="tuner-pg-", dir="/tmp"))
    as_user = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password = "s3cret-pw"
    (folder / "pw").write_text(password + "\n")
    if as_user:
        os.chown(folder / "pw", pwd.getpwnam("postgres").pw_uid, -1)
    port = _free_port()
    data = folder / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "tuner", f"--pwfile={folder / 'pw'}",
                    "-A", "scram-sha-256", "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    started = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"),
                              "-w", "start"], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{(folder / 'log').read_text()}")
    try:
        yield f"postgresql+psycopg://tuner:{password}@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh database on the session's server, for one test."""
    import re

    import sqlalchemy

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:50]
    engine = sqlalchemy.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{postgres_server}/{name}"
