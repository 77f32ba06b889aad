"""A throwaway PostgreSQL server on loopback: for the distributed tests (conftest's ``postgres_server``
fixture) and the scaling benchmark (benchmarks/scaling.py).

initdb into a temporary folder (as the postgres user when root: initdb refuses root), start the
server on a free loopback port with a password; ``stop()`` stops it and removes the folder::

    with running_postgres() as server:
        url = server.create_database("study")   # postgresql+psycopg://tuner:...@127.0.0.1:PORT/study
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PASSWORD = "s3cret-pw"


class PostgresUnavailable(RuntimeError):
    """The server binaries are missing, or the server did not start (the message says why)."""


class PostgresServer:
    def __init__(self, folder: Path, port: int, as_user: list[str], pg_ctl: str) -> None:
        self.folder, self.port, self._as_user, self._pg_ctl = folder, port, as_user, pg_ctl
        self.url = f"postgresql+psycopg://tuner:{PASSWORD}@127.0.0.1:{port}"  # the server, no database

    def create_database(self, name: str) -> str:
        return create_database(self.url, name)

    def version(self) -> str:
        return subprocess.run([self._pg_ctl, "--version"], capture_output=True, text=True).stdout.strip()

    def halt(self) -> None:
        """Stop the server as an administrator would (fast shutdown), leaving its files."""
        subprocess.run([*self._as_user, self._pg_ctl, "-D", str(self.folder / "data"), "-m", "fast", "stop"],
                       capture_output=True)

    def stop(self) -> None:
        subprocess.run([*self._as_user, self._pg_ctl, "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start a server; raises PostgresUnavailable when it cannot."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found: run .ci/system-packages")
    folder = Path(tempfile.mkdtemp(prefix="tuner-pg-", dir="/tmp"))
    as_user = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    (folder / "pw").write_text(PASSWORD + "\n")
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
        raise PostgresUnavailable(f"PostgreSQL did not start: {started.stderr}\n{(folder / 'log').read_text()}")
    return PostgresServer(folder, port, as_user, pg_ctl)


def create_database(server_url: str, name: str) -> str:
    """A fresh, empty database on the server (dropped first if it exists); its URL."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{server_url}/{name}"


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


def _postgres_bin(name: str) -> str | None:
    return shutil.which(name) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), default=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
