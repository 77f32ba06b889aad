"""Workloads for timing the tuner itself: their own time is known, so what remains is the tuner's.

``Sleeper`` waits instead of training (time.sleep) and counts the seconds it waited; the CLI can
name ``benchmarks.workloads:sleepy_quadratic``, the built-in quadratic with a wait before each report,
so that workers overlap as they would on real training.
"""
from __future__ import annotations

import math
import time
from types import MappingProxyType

from tuner.workloads import quadratic


class Sleeper:
    """``train(run)`` that sleeps ``seconds`` in ``reports`` equal waits, reporting a loss after each
    (a parabola in log(lr) around lr = 1e-3 B, higher early on); ``slept`` adds up the waits."""

    def __init__(self, seconds: float = 0.1, reports: int = 5) -> None:
        self.wait, self.reports, self.slept = seconds / reports, reports, 0.0

    def __call__(self, run) -> float:
        loss = 1.0 + math.log(run.lr / (1e-3 * run.batch_size)) ** 2
        for k in range(1, self.reports + 1):
            start = time.perf_counter()
            time.sleep(self.wait)
            self.slept += time.perf_counter() - start
            run.report(k * 64 * run.batch_size, loss + 0.1 * (self.reports - k))
        return loss


class _Waiting:
    """A run whose report waits first: what the quadratic sees in ``sleepy_quadratic``."""

    def __init__(self, run, wait: float) -> None:
        self._run, self._wait = run, wait
        self.lr, self.batch_size, self.seed = run.lr, run.batch_size, run.seed
        self.options = MappingProxyType({k: v for k, v in run.options.items() if k != "sleep"})

    def report(self, step: int, value: float) -> None:
        time.sleep(self._wait)
        self._run.report(step, value)


def sleepy_quadratic(run) -> float:
    """The built-in quadratic, waiting ``sleep`` seconds per run (spread over its reports) as if training."""
    reports = run.options.get("reports", quadratic.Options().reports)
    return quadratic.train(_Waiting(run, run.options.get("sleep", 0.0) / reports))
