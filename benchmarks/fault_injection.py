"""Fault injection: `tuner run` stopped at random moments, then the same command again.

On each storage (a journal file, SQLite, PostgreSQL), ``--runs`` times: `tuner run` on one study
with n_trials raised by a few each time is stopped at a random moment by SIGKILL, SIGTERM or (journal
and SQLite, as root: on a small tmpfs) a disk that fills up, then the disk is freed and the same
command runs again. Counted over all runs: finished trials lost (any trial finished before the fault
that is missing or changed after the rerun), storages unreadable after the fault, trials left
RUNNING after the rerun, and reruns that did not exit 0. Prints a table. Not a timed test.

    sudo python -m benchmarks.fault_injection [--runs 50] [--storages journal,sqlite,postgresql]

PostgreSQL needs the server binaries (``initdb``; the test suite's throwaway server is used) and
runs with a 1 s heartbeat and a 2 s grace, so that a killed trial is recovered by the rerun.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuner.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)
TESTS = Path(__file__).resolve().parent.parent / "tests"
TUNER = str(Path(sys.executable).parent / "tuner")
HEARTBEAT = {"TUNER_HEARTBEAT_INTERVAL": "1", "TUNER_HEARTBEAT_GRACE": "2"}
WORKLOAD = '''
import math, time

def train(run):
    loss = 1 + math.log(run.lr / (1e-3 * run.batch_size)) ** 2
    for k in range(1, 5):
        time.sleep(0.03)
        run.report(k * 100 * run.batch_size, loss + (4 - k) * 0.1)
    return loss
'''
STUDY = '''[study]
name = "faults"
n_trials = 1000
seed = 0

[search]
lr = [1e-4, 4.0]
batch_sizes = [8, 32, 128, 512]

[workload]
target = "slow:train"
'''
STEP = 6  # each run raises n_trials by this many


def snapshot(url: str) -> dict | None:
    """Finished trials by number (state, value, params); empty before the study exists (a fault in
    the first run's start-up); None when the storage cannot be read."""
    try:
        study = optuna.load_study(study_name="faults", storage=open_storage(url, create=False))
        trials = study.get_trials(deepcopy=False)
    except KeyError:
        return {}
    except Exception as e:  # noqa: BLE001 - any failure to read is what is counted
        print(f"  unreadable: {type(e).__name__}: {e}"[:300], file=sys.stderr)
        return None
    return {t.number: (t.state, t.value, t.params) for t in trials if t.state in (TrialState.COMPLETE,
                                                                                  TrialState.PRUNED)}


def running(url: str) -> int:
    study = optuna.load_study(study_name="faults", storage=open_storage(url, create=False))
    left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in left:
        print(f"  left RUNNING: trial {t.number} {t.params} {t.system_attrs}", file=sys.stderr)
    return len(left)


def one_run(url: str, folder: Path, n_trials: int, fault: str, disk: Path | None, rng: random.Random) -> dict:
    args = [TUNER, "run", "study.toml", "--storage", url, "--n-trials", str(n_trials), "--no-fit"]
    env = {**os.environ, **HEARTBEAT}
    process = subprocess.Popen(args, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(rng.uniform(0.5, 2.0))  # start-up takes about a second: some faults land before any trial
    ballast = None
    if fault == "disk-full":
        ballast = fill(disk / "ballast")
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    process.send_signal(signal.SIGKILL if fault == "SIGKILL" else signal.SIGTERM)
    process.wait()
    if ballast is not None:
        ballast.unlink()
    before = snapshot(url)
    time.sleep(2.5)  # past the heartbeat grace (PostgreSQL), so the rerun recovers the killed trial
    rerun = subprocess.run(args, cwd=folder, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    after = snapshot(url) or {}
    lost = 0 if before is None else sum(after.get(number) != trial for number, trial in before.items())
    return {"fault": fault, "unreadable": before is None, "lost": lost, "rerun_failed": rerun.returncode != 0,
            "running": running(url) if rerun.returncode == 0 else 0, "error": rerun.stderr.strip()[-200:]}


def fill(path: Path) -> Path:
    """Write ``path`` until the filesystem is full."""
    chunk = b"\0" * (1 << 20)
    with contextlib.suppress(OSError), path.open("wb") as ballast:
        while True:
            ballast.write(chunk)
            ballast.flush()
    return path


@contextlib.contextmanager
def storage(kind: str, folder: Path) -> Iterator[tuple[str, Path | None]]:
    """The storage URL, and the small filesystem it lives on where a full disk can be injected."""
    if kind == "postgresql":
        sys.path.insert(0, str(TESTS))  # the test suite's throwaway server
        from postgres_server import create_database, start_postgres

        server = start_postgres()
        try:
            yield create_database(server.url, "faults"), None
        finally:
            server.stop()
        return
    disk = folder / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], check=False).returncode == 0
    try:
        path = disk / ("faults.journal" if kind == "journal" else "faults.db")
        yield (str(path) if kind == "journal" else f"sqlite:///{path}"), (disk if mounted else None)
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(disk)], check=False)  # this process may still hold the file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="faults per storage")
    parser.add_argument("--storages", default="journal,sqlite,postgresql")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = {}
    for kind in args.storages.split(","):
        with tempfile.TemporaryDirectory() as tmp, storage(kind, Path(tmp)) as (url, disk):
            folder = Path(tmp)
            (folder / "slow.py").write_text(WORKLOAD)
            (folder / "study.toml").write_text(STUDY)
            faults = ["SIGKILL", "SIGTERM"] + (["disk-full"] if disk is not None else [])
            rows = []
            for i in range(args.runs):
                rows.append(one_run(url, folder, STEP * (i + 1), rng.choice(faults), disk, rng))
                print(f"  {kind} {i + 1}/{args.runs}: {rows[-1]['fault']}", file=sys.stderr)
            results[kind] = (rows, len(snapshot(url) or {}))
    print("\n| storage | runs | faults (SIGKILL / SIGTERM / disk full) | finished trials at the end | finished "
          "trials lost | storages unreadable | RUNNING after the rerun | reruns that failed |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for kind, (rows, total) in results.items():
        counts = " / ".join(str(sum(r["fault"] == f for r in rows)) for f in ("SIGKILL", "SIGTERM", "disk-full"))
        print(f"| {kind} | {len(rows)} | {counts} | {total} | {sum(r['lost'] for r in rows)} | "
              f"{sum(r['unreadable'] for r in rows)} | {sum(r['running'] for r in rows)} | "
              f"{sum(r['rerun_failed'] for r in rows)} |")
    failed = [r["error"] for rows, _ in results.values() for r in rows if r["rerun_failed"]]
    for error in failed[:5]:
        print(f"- a rerun failed: {error}")
    print(f"\n- Produced by `python -m benchmarks.fault_injection --runs {args.runs} --storages {args.storages}`.")


if __name__ == "__main__":
    main()
