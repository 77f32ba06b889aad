"""Local worker processes for `tuner run --workers K`: K `tuner worker` processes on one study.

Each worker is a process of its own (Python threads would share one interpreter lock) and reads
its share of trials from the storage, like workers on other machines would. With several CUDA
devices each worker gets one; CPU threads are split between workers so they do not oversubscribe
the cores. The storage URL travels in the environment, not on the command line, so a password
does not show in the process list.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tuner.storage import STORAGE_ENV

WORKER_INDEX_ENV = "TUNER_WORKER_INDEX"  # 1…K: gives each local worker its own random stream

POLL_SECONDS = 0.5


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
    env["PYTHONPATH"] = os.pathsep.join([*(str(d.resolve()) for d in import_dirs),
                                         *filter(None, [env.get("PYTHONPATH")])])
    devices = cuda_devices()
    if len(devices) > 1:
        env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    return env


def start_workers(study_name: str, storage: str, workers: int, import_dirs: list[Path]) -> list[subprocess.Popen]:
    command = [sys.executable, "-m", "tuner", "worker", study_name, "--quiet"]
    return [subprocess.Popen(command, env=worker_env(i, workers, storage, import_dirs),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            for i in range(workers)]


def wait(processes: list[subprocess.Popen], on_poll) -> list[int]:
    """Call ``on_poll()`` every POLL_SECONDS until every process has exited; their exit codes."""
    try:
        while any(p.poll() is None for p in processes):
            on_poll()
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:  # the terminal sent SIGINT to the workers too: let them finish up
        for p in processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    on_poll()
    return [p.returncode for p in processes]
