"""Scaling: trials per second with 1, 2 and 4 local workers on each storage, and `tuner fit` time
as a study grows to 10⁴ trials. Everything runs through the `tuner` command, as a user runs it.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from benchmarks.fit_accuracy import big_study
from benchmarks.report import REPO, Section, log
from tuner.storage import open_storage
from tuner.trials import FINISHED

TUNER = str(Path(sys.executable).parent / "tuner")
STORAGES = ["journal file", "SQLite", "PostgreSQL"]


def study_file(folder: Path, n_trials: int, sleep: float) -> Path:
    path = folder / "scaling.toml"
    path.write_text(f"""[study]
name = "scaling"
n_trials = {n_trials}
[search]
lr = [1e-4, 4.0]
batch_sizes = [8, 16, 32, 64, 128, 256, 512, 1024]
[workload]
target = "benchmarks.workloads:sleepy_quadratic"
sleep = {sleep}
dims = 256
""")
    return path


def tuner(*args: str, timeout: float = 600) -> float:
    """Run the `tuner` command from the repository (so `benchmarks.workloads` imports); its wall seconds."""
    start = time.perf_counter()
    done = subprocess.run([TUNER, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"tuner {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return time.perf_counter() - start


def throughput(url: str, spec: Path, workers: int) -> dict:
    """One `tuner run --workers K --no-fit`: trials/s over the command's wall time, and from the first
    trial's start to the last one's end (process start-up left out)."""
    wall = tuner("run", str(spec), "--storage", url, "--workers", str(workers), "--no-fit")
    study = optuna.load_study(study_name="scaling", storage=open_storage(url, create=False))
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return {"trials": len(trials), "wall": wall, "per_second": len(trials) / span,
            "per_second_wall": len(trials) / wall}


def storage_url(label: str, folder: Path, postgres, workers: int) -> str:
    """A fresh storage of this kind."""
    if label == "journal file":
        return str(folder / "scaling.journal")
    if label == "SQLite":
        return f"sqlite:///{folder / 'scaling.db'}"
    return postgres.create_database(f"scaling_{workers}")


def workers_table(section: Section, n_trials: int, sleep: float, workers: list[int], storages: list[str],
                  postgres) -> None:
    rows = []
    for label in storages:
        if label == "PostgreSQL" and postgres is None:
            continue
        base = None
        for k in workers:
            with tempfile.TemporaryDirectory(prefix="tuner-scaling-") as folder:
                url = storage_url(label, Path(folder), postgres, k)
                log(f"  scaling: {label}, {k} worker{'s' * (k > 1)}, {n_trials} trials")
                result = throughput(url, study_file(Path(folder), n_trials, sleep), k)
            base = base or result["per_second"]
            rows.append([label, k, result["trials"], f"{result['per_second']:.1f}",
                         f"×{result['per_second'] / base:.2f}", f"{result['wall']:.1f}",
                         f"{result['per_second_wall']:.1f}"])
    section.table(f"`tuner run --workers K --no-fit`, {n_trials} trials of the quadratic waiting {sleep} s each "
                  "(`benchmarks.workloads:sleepy_quadratic`)",
                  ["storage", "workers", "finished trials", "trials/s", "speed-up", "command s",
                   "trials/s over command"], rows)


def fit_table(section: Section, sizes: list[int], repeats: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    floor = statistics.median(tuner("--version") for _ in range(repeats))
    with tempfile.TemporaryDirectory(prefix="tuner-fit-") as folder:
        for n in sizes:
            cells = [f"{n:,}"]
            for url in (str(Path(folder) / f"fit-{n}.journal"), f"sqlite:///{Path(folder) / f'fit-{n}.db'}"):
                log(f"  scaling: tuner fit, {n:,} trials, {url.split(':')[0] if '://' in url else 'journal'}")
                big_study(n, open_storage(url, create=True) if "://" not in url else url)
                cells.append(f"{statistics.median(tuner('fit', 'big', '--storage', url) for _ in range(repeats)):.2f}")
            rows.append(cells)
    section.table(f"`tuner fit` on a study of N trials over 8 batch sizes: seconds for the whole command (loading, "
                  f"fitting, storing the fit, note and figure), median of {repeats}; starting `tuner` "
                  f"(`tuner --version`) alone takes {floor:.2f} s",
                  ["trials", "journal file s", "SQLite s"], rows)


def run(n_trials: int = 160, sleep: float = 0.03, workers=(1, 2, 4), storages=STORAGES,
        fit_sizes=(100, 1_000, 10_000), fit_repeats: int = 3, postgres: bool = True) -> Section:
    section = Section("3. Scaling: workers and study size", " ".join(__doc__.split()))
    section.notes.append(f"This machine has {os.cpu_count()} cores: beyond that, workers share them, so the "
                         "speed-up from more workers is bounded by the trials' waiting, not by the cores. "
                         "\"trials/s\" counts from the first trial's start to the last one's end; the command's "
                         "wall time adds starting Python and the workers (about a second).")
    postgres = postgres and "PostgreSQL" in storages
    server = _start_postgres() if postgres else None
    if postgres and server is None:
        section.notes.append("PostgreSQL: no server could be started here (see the log); its rows are missing.")
    try:
        if server is not None:
            section.notes.append(f"PostgreSQL: a throwaway local server ({server.version()}, fsync off), "
                                 "the tests' `tests/postgres_server.py`.")
        workers_table(section, n_trials, sleep, list(workers), list(storages), server)
    finally:
        if server is not None:
            server.stop()
    fit_table(section, list(fit_sizes), fit_repeats)
    return section


def _start_postgres():
    sys.path.insert(0, str(REPO / "tests"))  # the tests' helper: one way to start a server, not two
    from postgres_server import PostgresUnavailable, start_postgres

    try:
        return start_postgres()
    except (PostgresUnavailable, subprocess.CalledProcessError, OSError) as e:
        log(f"  scaling: PostgreSQL unavailable: {e}")
        return None


if __name__ == "__main__":
    print(run(n_trials=48, fit_sizes=(100, 1000), fit_repeats=1).markdown())
