"""What the tuner adds around the user's training: wall time over the workload's own time, where
the rest goes, and the built-in trainer's speed against a bare PyTorch loop.

The workload (``benchmarks.workloads.Sleeper``) sleeps a fixed time per trial in 5 reports (0.1 s in
the full run), so its own time is known exactly; ``run_study`` (what `tuner run` does in one process)
runs it with the tuner's defaults (valley sampler, per-batch median pruner) over 8 batch sizes on
each storage. A pruned trial sleeps less, so the workload's time per trial is below the full wait.
"""
from __future__ import annotations

import cProfile
import functools
import pstats
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, InMemoryStorage

from benchmarks import trainer_throughput
from benchmarks.report import REPO, Goal, Section, log, ratio, thousands
from benchmarks.workloads import Sleeper
from tuner.runner import open_study, run_study
from tuner.spec import parse_spec
from tuner.storage import DEFAULT_STORAGE, open_storage
from tuner.workload import Workload

BATCH_SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
STORAGES = ["journal file (default)", "SQLite", "in-memory"]
CATEGORIES = ["workload", "sampler", "pruner", "storage", "rest"]


def spec(n_trials: int, seconds: float, name: str = "overhead"):
    return parse_spec({"study": {"name": name, "n_trials": n_trials, "seed": 0},
                       "search": {"lr": [1e-4, 4.0], "batch_sizes": BATCH_SIZES},
                       "workload": {"target": "sleeper", "seconds": seconds}})  # handed to run_study as is


def make_storage(kind: str, folder: Path) -> BaseStorage:
    """A fresh storage, opened as `tuner run` opens it (the default: a journal file)."""
    if kind.startswith("journal"):
        return open_storage(str(folder / DEFAULT_STORAGE), create=True)
    if kind == "SQLite":
        return open_storage(f"sqlite:///{folder / 'tuner.db'}", create=True)
    return InMemoryStorage()


def timed_study(kind: str, n_trials: int, seconds: float, instrument=None) -> tuple[float, Sleeper]:
    """Wall seconds of run_study on a fresh storage, and the workload (its ``slept`` seconds)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="tuner-overhead-") as folder:
        the_spec = spec(n_trials, seconds)
        study = open_study(the_spec, make_storage(kind, Path(folder)))
        sleeper = Sleeper(seconds)
        if instrument is not None:
            instrument(study)
        start = time.perf_counter()
        run_study(study, the_spec, Workload(target="sleeper", train=sleeper, options={}))
        return time.perf_counter() - start, sleeper


class Breakdown:
    """Exclusive time per category and per call: a storage call made inside the sampler counts as
    storage, not sampler (and is listed as called from the sampler). Only the main thread is timed
    (RDB heartbeats run in a thread of their own)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[tuple[str, str]] = Counter()     # (category.method, caller category)
        self.call_seconds: Counter[tuple[str, str]] = Counter()
        self._stack: list[list] = []  # [category, key, started or resumed at]

    def instrument(self, study: optuna.Study) -> None:
        self.wrap(study.sampler, ["infer_relative_search_space", "sample_relative", "sample_independent",
                                  "before_trial", "after_trial"], "sampler")
        self.wrap(study.pruner, ["prune"], "pruner")
        storage_methods = [n for n in dir(BaseStorage) if not n.startswith("_") and callable(getattr(BaseStorage, n))]
        self.wrap(study._storage, storage_methods, "storage")

    def wrap(self, target, names: list[str], category: str) -> None:
        for name in names:
            setattr(target, name, self._timed(getattr(target, name), category, name))

    def _timed(self, method, category: str, name: str):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                return method(*args, **kwargs)
            now = time.perf_counter()
            key = (f"{category}.{name}", self._stack[-1][0] if self._stack else "trial loop")
            if self._stack:  # pause the caller
                self._add(self._stack[-1], now)
            self._stack.append([category, key, now])
            self.calls[key] += 1
            try:
                return method(*args, **kwargs)
            finally:
                end = time.perf_counter()
                self._add(self._stack.pop(), end)
                if self._stack:
                    self._stack[-1][2] = end
        return timed

    def _add(self, frame: list, now: float) -> None:
        category, key, since = frame
        self.seconds[category] += now - since
        self.call_seconds[key] += now - since


@dataclass
class Overhead:
    """One storage: wall / workload over repeated runs, and one instrumented run's breakdown."""

    storage: str
    ratios: list[float]
    per_trial_ms: dict[str, float]         # by category
    calls: list[tuple[str, str, float, float]]  # call, called from, calls per trial, ms per trial

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def tuner_ms(self) -> float:
        return sum(ms for c, ms in self.per_trial_ms.items() if c != "workload")


def measure(kind: str, n_trials: int, seconds: float, repeats: int) -> Overhead:
    log(f"  overhead: {kind}, {repeats + 1} × {n_trials} trials of {seconds} s")
    runs = [timed_study(kind, n_trials, seconds) for _ in range(repeats)]
    breakdown = Breakdown()
    wall, sleeper = timed_study(kind, n_trials, seconds, breakdown.instrument)
    breakdown.seconds["workload"] = sleeper.slept
    breakdown.seconds["rest"] = wall - sum(breakdown.seconds.values())
    return Overhead(kind, [wall / sleeper.slept for wall, sleeper in runs],
                    {c: 1000 * breakdown.seconds[c] / n_trials for c in CATEGORIES},
                    [(name, caller, breakdown.calls[name, caller] / n_trials, 1000 * spent / n_trials)
                     for (name, caller), spent in breakdown.call_seconds.most_common(5)])


def profile_rows(kind: str, n_trials: int, seconds: float, top: int = 12) -> list[list]:
    """Functions by own time in one run (the workload's sleep left out), per trial."""
    profile = cProfile.Profile()
    timed_study(kind, n_trials, seconds, instrument=lambda study: profile.enable())
    profile.disable()
    stats = pstats.Stats(profile).stats
    rows = sorted(((tottime, calls, cumtime, func) for func, (_, calls, tottime, cumtime, _) in stats.items()
                   if func[2] != "<built-in method time.sleep>"), reverse=True)[:top]
    return [[_where(func), f"{calls / n_trials:.1f}", f"{1000 * tottime / n_trials:.2f}",
             f"{1000 * cumtime / n_trials:.2f}"] for tottime, calls, cumtime, func in rows]


def _where(func: tuple[str, int, str]) -> str:
    path, line, name = func
    if path == "~":
        return f"`{name}`"
    path = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", path).replace(f"{REPO}/", "")
    return f"`{path}:{line} {name}`"


def run(n_trials: int = 100, seconds: float = 0.1, repeats: int = 3, trainer_repeats: int = 11,
        trainer_steps: int = 1000, trainer_sizes=trainer_throughput.BATCH_SIZES) -> Section:
    section = Section("2. Overhead: what the tuner adds around training", __doc__.split("\n\n", 1)[1].strip())
    results = [measure(kind, n_trials, seconds, repeats) for kind in STORAGES]
    section.table(
        f"Wall time over the workload's own time, {n_trials} trials of {seconds} s (median of {repeats} runs), "
        "and where the time goes in one more, instrumented run (ms per trial)",
        ["storage", "wall / workload", "runs", *(f"{c} ms" for c in CATEGORIES), "tuner ms"],
        [[r.storage, f"×{r.ratio:.3f}", " ".join(f"×{x:.3f}" for x in r.ratios),
          *(f"{r.per_trial_ms[c]:.1f}" for c in CATEGORIES), f"{r.tuner_ms:.1f}"] for r in results])
    section.notes.append(
        "sampler, pruner and storage are exclusive times of those Optuna calls (the study's sampler and "
        "pruner methods, every storage method); rest is everything else in the trial loop: Optuna's "
        "`optimize` bookkeeping, callbacks and the tuner's own code around the workload; the tuner's "
        "total is all but the workload. The instrumented run's wrappers add a few µs per call.")
    section.table("The costliest calls in the instrumented run, per storage (exclusive ms per trial)",
                  ["storage", "call", "called from", "calls / trial", "ms / trial"],
                  [[r.storage, f"`{name}`", caller, f"{calls:.1f}", f"{ms:.2f}"]
                   for r in results for name, caller, calls, ms in r.calls])
    default, memory = results[0], results[-1]
    log(f"  overhead: profiling {default.storage}")
    section.table(f"Where the time goes on the {default.storage}: functions by own time, per trial (cProfile, "
                  f"one run of {n_trials} trials; the workload's sleep left out)",
                  ["function", "calls / trial", "own ms / trial", "cumulative ms / trial"],
                  profile_rows(default.storage, n_trials, seconds))
    name, caller, calls, ms = default.calls[0]
    section.goals.append(Goal(
        "2a. wall time / workload time on the default storage", "≤ 1.05", f"×{default.ratio:.3f}",
        met=default.ratio <= 1.05,
        why=f"on the {default.storage} the tuner adds {default.tuner_ms:.1f} ms per trial to the workload's "
            f"{default.per_trial_ms['workload']:.1f} ms: storage {default.per_trial_ms['storage']:.1f} ms (the "
            f"costliest call `{name}`, {calls:.1f} calls, {ms:.1f} ms), pruner {default.per_trial_ms['pruner']:.1f}, "
            f"sampler {default.per_trial_ms['sampler']:.1f}, rest {default.per_trial_ms['rest']:.1f}. In memory "
            f"the same search adds {memory.tuner_ms:.1f} ms, so the {default.storage} itself costs "
            f"{default.tuner_ms - memory.tuner_ms:.1f} ms per trial; the goal allows "
            f"{0.05 * default.per_trial_ms['workload']:.1f} ms in all."))

    log(f"  overhead: trainer throughput, {trainer_repeats} repeats at {len(trainer_sizes)} batch sizes")
    throughput = trainer_throughput.measure(trainer_steps, trainer_repeats, sizes=trainer_sizes)
    section.table(
        f"Built-in trainer (`train_torch`) against a bare PyTorch loop: digits-mlp, hidden "
        f"{trainer_throughput.HIDDEN}, {trainer_steps} steps, {trainer_throughput.EVALS} evaluations, 1 thread; "
        f"samples/s of the fastest of {trainer_repeats} runs each, and the median ratio of adjacent runs",
        ["batch size", "trainer samples/s", "bare samples/s", "best / best", "median paired ratio"],
        [[r.batch_size, thousands(r.trainer), thousands(r.bare), ratio(r.trainer / r.bare, 3),
          ratio(r.paired, 3)] for r in throughput])
    extra = trainer_throughput.fixed_cost(repeats=max(3, trainer_repeats * 4))
    section.notes.append(
        f"The trainer also costs {1000 * extra:.1f} ms more per run than the bare loop (runs of "
        f"{trainer_throughput.EVALS} steps, median difference; cProfile: about 0.35 ms switching the model to "
        "eval() and back at each evaluation (nn.Module.train walks every submodule), 0.3 ms in `_evaluate`'s "
        "chunked loop, 0.15 ms evaluating the untrained model once). At 1,000 steps "
        "that is lost in the noise; a run of a few dozen steps (digits-mlp, 20 epochs at batch size 512: "
        "60 steps, ~45 ms) notices it.")
    worst = min(throughput, key=lambda r: r.paired)
    best_of = min(r.trainer / r.bare for r in throughput)
    section.goals.append(Goal(
        "2b. trainer samples/s / bare loop's", "≥ 0.95 at every batch size",
        f"median paired ratio ≥ {worst.paired:.3f} (lowest at batch size {worst.batch_size}); "
        f"best / best ≥ {best_of:.3f}", met=worst.paired >= 0.95,
        why="both loops run the same torch ops per step; on a shared machine single runs of either swing by "
            "±10%, so the ratio of adjacent runs (median over pairs) is the measure; best / best is shown too."))
    return section


if __name__ == "__main__":
    print(run(n_trials=30, repeats=1, trainer_repeats=3).markdown())
