"""The learning rate to use at each batch size: its own optimum averaged with the recommended rule's.

A batch size's own trials place its optimum with some error, and so does the recommended rule, which
reads every batch size's trials. On every workload of the benchmark panel the two errors are about
equally large (the rule's root-mean-square error in log-lr 0.8 to 1.1 times the batch size's own, 40
to 120 seeds each) and only partly shared (correlation 0.3 to 0.6). Two estimates that err equally
are best weighed equally, and their mean errs less than either (its variance (1 + ρ) / 2 of theirs),
so the learning rate to use is the geometric mean of the two. It stays where the batch size's trials
allow it: inside its interval and its ``floor`` and ``ceiling`` (never where a run did clearly worse,
nor close to a blow-up). Where the trials say the rule clearly loses (``clearly_costly``: no form of
the rule fits this batch size), the rule has nothing to lend, and the batch size keeps its own.
Where a batch size's own trials cannot place its optimum (a flag: no signal, no valley, the edge of
the range), the rule alone says where it is, and the learning rate to use is the rule's, as far as
that batch size's runs allow: short of where a run did clearly worse and of a blow-up, but not held
inside its own interval, which reaches only as far as its runs (an accuracy at chance everywhere
between ×0.0001 and ×0.1 of the optimum, held-out shape 44: kept inside, the learning rate to use
stayed ×10 below the rule's).

Why not weigh each by its interval (a random-effects meta-analysis)? The bootstrap intervals are
wider than the estimates' errors by a factor that differs between workloads (1.3 to 2), so such
weights followed the rule too far where it misses: on the momentum MLP the estimates over 15% of
regret rose from 0.8% to 2.0% (benchmarks/RESULTS.md, section 4).
"""
from __future__ import annotations

import math

from tuner.fit._optimum import BatchOptimum
from tuner.fit._rules import Rule
from tuner.fit._verdict import clearly_costly


def pooled(optima: list[BatchOptimum], rule: Rule, limits: dict[int, tuple[float, float]]) -> list[BatchOptimum]:
    """``optima`` with the ``lr`` of each batch size in ``limits`` (its floor and ceiling, log-lr)
    averaged with ``rule``'s, or the rule's where its own trials cannot place it (a flag), unless
    following the rule clearly costs there; its own is kept in ``own_lr``."""
    out = []
    for i, optimum in enumerate(optima):
        if optimum.batch_size not in limits or clearly_costly(rule, i, optimum):
            out.append(optimum)
            continue
        log_rule, (floor, ceiling) = math.log(rule.lr[i]), limits[optimum.batch_size]
        if optimum.usable:  # averaged, inside its own interval
            target = (math.log(optimum.lr) + log_rule) / 2
            floor, ceiling = max(floor, math.log(optimum.ci[0])), min(ceiling, math.log(optimum.ci[1]))
        else:  # the rule's: its own interval reaches only as far as its runs
            target = log_rule
        out.append(_kept(optimum, target, floor, ceiling))
    return out


def _kept(optimum: BatchOptimum, target: float, floor: float, ceiling: float) -> BatchOptimum:
    """``optimum`` with its learning rate moved to ``target`` (log), or as near as ``floor`` and
    ``ceiling`` allow."""
    if floor > ceiling:  # nowhere between them (its interval lies beyond its limits): it keeps its own
        return optimum
    return optimum.model_copy(update={"lr": math.exp(min(max(target, floor), ceiling)), "own_lr": optimum.lr})
