"""A real `tuner dashboard` on a fitted study, for the tests that read it over HTTP or in a browser.

A plugin: a test module that says ``pytest_plugins = ["dashboard_server"]`` gets its fixtures
(``fitted_storage``, once per session; ``dashboard``, once per module). The modules also import its
helpers, before pytest could rewrite its asserts: PYTEST_DONT_REWRITE (its asserts carry messages).
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import tuner

REPO = Path(__file__).resolve().parents[1]
STUDY_FILE = REPO / "studies" / "quadratic.toml"  # the shipped study: 8 batch sizes, fitted in a few seconds
STUDY_NAME = "quadratic"
TUNER = Path(sys.executable).parent / "tuner"
START_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def load_study(storage: Path, name: str = STUDY_NAME) -> optuna.Study:
    from tuner.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(str(storage), create=False))


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence ("lr = 2.41 / ..." keeps its decimal points)."""
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


class Dashboard:
    """A running `tuner dashboard` process; its stderr goes to a file (it logs every request)."""

    def __init__(self, process: subprocess.Popen, url: str, stderr_path: Path):
        self.process, self.url, self.stderr_path = process, url, stderr_path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def get_json(self, path: str, timeout: float = 10.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.load(response)

    def study_id(self, name: str = STUDY_NAME) -> int:
        ids = [s["study_id"] for s in self.get_json("/api/studies")["study_summaries"] if s["study_name"] == name]
        assert ids, f"no study named {name!r} at {self.url}/api/studies"
        return ids[0]

    def study(self, name: str = STUDY_NAME) -> dict:
        return self.get_json(f"/api/studies/{self.study_id(name)}")

    def stop(self) -> None:
        stop_process(self.process)


def launch(storage: Path | str, cwd: Path, *args: str, port: int | None = None,
           host: str = "127.0.0.1") -> tuple[subprocess.Popen, Path, int]:
    """Start `tuner dashboard` without waiting for it; returns the process, its stderr file, its port."""
    port = port or free_port()
    stderr_path = cwd / f"dashboard-{port}.stderr"
    with open(stderr_path, "wb") as err:
        process = subprocess.Popen([str(TUNER), "dashboard", "--storage", str(storage), "--host", host,
                                    "--port", str(port), *args], cwd=cwd, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_interruptible)
    return process, stderr_path, port


def _interruptible() -> None:
    """In the server's process before it starts: Ctrl+C stops it, as at a terminal. A test run started
    in the background (a shell's ``&``) has SIGINT ignored, the server inherited that, and the tests'
    Ctrl+C left it running until it was killed."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_dashboard(storage: Path | str, cwd: Path, timeout: float = START_TIMEOUT) -> Dashboard:
    """Start `tuner dashboard` on loopback and wait until its REST API answers."""
    process, stderr_path, port = launch(storage, cwd)
    server = Dashboard(process, f"http://127.0.0.1:{port}", stderr_path)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"tuner dashboard exited with {process.returncode} before answering:\n{server.stderr()}")
        try:
            server.get_json("/api/studies", timeout=2)
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"tuner dashboard did not answer on {server.url} within {timeout:.0f} s:\n{server.stderr()}")
        time.sleep(0.1)


def wait_for_stderr(process: subprocess.Popen, stderr_path: Path, text: str, timeout: float = START_TIMEOUT) -> str:
    """Wait until the process has written ``text`` on stderr (or exited); returns all it wrote."""
    deadline = time.monotonic() + timeout
    while text not in (written := stderr_path.read_text(errors="replace")):
        if process.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return written


def stop_process(process: subprocess.Popen) -> None:
    """Ctrl+C first (how a user stops it), then SIGKILL if it does not go."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def run_fitted_study(folder: Path) -> Path:
    """`tuner run studies/quadratic.toml` (which fits at the end) into ``folder``, then `tuner verify`
    with 2 seeds; returns the journal."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = folder / "tuner.journal"
    p = tuner("run", str(STUDY_FILE), "--storage", str(storage), cwd=folder, timeout=120)
    assert p.returncode == 0, p.stderr
    assert load_study(storage).user_attrs.get("lr_batch_fit"), "tuner run stored no fit"
    p = tuner("verify", "quadratic", "--storage", str(storage), "--seeds", "2", cwd=folder, timeout=120)
    assert p.returncode == 0, p.stderr
    return storage


@pytest.fixture(scope="session")
def fitted_storage(tmp_path_factory) -> Path:
    """A fitted study, run once per test session; tests only read it (copy it to change it)."""
    return run_fitted_study(tmp_path_factory.mktemp("fitted-quadratic"))


@pytest.fixture(scope="module")
def dashboard(fitted_storage, tmp_path_factory):
    """`tuner dashboard` on the fitted study, on a free loopback port; stopped after the module."""
    server = start_dashboard(fitted_storage, tmp_path_factory.mktemp("dashboard"))
    yield server
    server.stop()
