"""Local worker processes for `tuner run --workers K`: K `tuner worker` processes on one study.

Each worker is a process of its own (Python threads would share one interpreter lock) and reads
its share of trials from the storage, like workers on other machines would. With several CUDA
devices each worker gets one; CPU threads are split between workers so they do not oversubscribe
the cores. The storage URL travels in the environment, not on the command line, so a password
does not show in the process list.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tuner.errors import Stopped
from tuner.storage import STORAGE_ENV

WORKER_INDEX_ENV = "TUNER_WORKER_INDEX"  # 1…K: gives each local worker its own random stream
STUDY_DIR_ENV = "TUNER_STUDY_DIR"  # the study file's folder: where a local worker runs a command workload

POLL_SECONDS = 0.5
STOP_SECONDS = 30  # how long stopped workers may take to record their trial as failed before a SIGKILL


def cuda_devices() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_env(index: int, workers: int, storage: str, import_dirs: list[Path]) -> dict[str, str]:
    env = dict(os.environ)
    env[STORAGE_ENV] = storage
    env[WORKER_INDEX_ENV] = str(index + 1)
    if import_dirs:
        env[STUDY_DIR_ENV] = str(import_dirs[0].resolve())
    env["PYTHONPATH"] = os.pathsep.join([*(str(d.resolve()) for d in import_dirs),
                                         *filter(None, [env.get("PYTHONPATH")])])
    devices = cuda_devices()
    if len(devices) > 1:
        env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
    env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(workers)))
    return env


def threads_per_worker(workers: int) -> int:
    """The CPU threads each of ``workers`` processes on this machine may use: with torch's default
    (every core) in each of two processes on two cores, a small MLP's steps ran ×40 slower (the
    threads spin-wait on one another: 3,000 steps in 23 s against 0.6 s)."""
    return max(1, (os.cpu_count() or 1) // workers)


def start_workers(study_name: str, storage: str, workers: int, import_dirs: list[Path]) -> list[subprocess.Popen]:
    command = [sys.executable, "-m", "tuner", "worker", study_name, "--quiet"]
    return [subprocess.Popen(command, env=worker_env(i, workers, storage, import_dirs),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            for i in range(workers)]


def wait(processes: list[subprocess.Popen], on_poll) -> list[int]:
    """Call ``on_poll()`` every POLL_SECONDS until every process has exited; their exit codes.
    Stopped (Ctrl+C, SIGTERM), it stops the workers too and waits for them to record their trials."""
    try:
        while any(p.poll() is None for p in processes):
            on_poll()
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        # a terminal's Ctrl+C reached the workers already (they ignore this second signal); a
        # SIGTERM or a SIGINT sent to this process alone did not
        for p in processes:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for p in processes:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        raise
    on_poll()
    return [p.returncode for p in processes]


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop the run alike: the first raises ``Stopped`` where the run is (a
    KeyboardInterrupt, which Optuna turns into a FAIL for the trial under way, then re-raises);
    later ones are ignored, so that a second Ctrl+C, or the SIGTERM a parent forwards after the
    terminal's SIGINT, cannot interrupt that bookkeeping and leave the trial RUNNING. Outside the
    main thread (where Python allows no handlers) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def stop(signum, frame) -> None:
        if not received:
            received.append(signum)
            raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
