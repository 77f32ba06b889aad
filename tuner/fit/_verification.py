"""What `tuner verify` measured, stored under the fit's ``verify`` key: at each held-out batch size
(one the study never searched), the final metric over seeds at each rule's learning rate and at a
few learning rates around the recommended one, and how much following each rule loses against the
best learning rate measured there.

Every learning rate at one batch size runs with the same seeds, so a rule's regret is the mean of
per-seed differences (paired): its standard error leaves out the seed-to-seed scatter that all
learning rates share.

    from tuner.fit._verification import plan, summarize

    points = plan(fit, [24, 96, 384], ["recommended", "linear", "sqrt"])
    verification = summarize(fit, points, seeds, trials)   # trials: the study's verification trials
    print(verification.summary)
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from pydantic import Field

from tuner.fit._model import Frozen
from tuner.fit._rules import LINEAR, RULE_NAMES, SQRT
from tuner.fit._verdict import RULE_LABELS, anchored
from tuner.trials import BATCH_SIZE, LR, SEED, Outcome, outcome_of

RECOMMENDED = "recommended"
RULE_CHOICES = (RECOMMENDED, *RULE_NAMES)
DEFAULT_RULES = (RECOMMENDED, LINEAR, SQRT)
# learning rates around the recommended one, so that the best at a held-out batch size is measured too
AROUND = {"×0.5": 0.5, "×0.71": 2 ** -0.5, "×1.41": 2 ** 0.5, "×2": 2.0}
MAX_REACH = 8.0  # where the best lies at an end of those, steps go on ×2 at a time up to this far
SAME_LR = math.log(1.01)  # learning rates this close are one training
HELD_OUT = 3  # default held-out batch sizes
WITHIN = 0.01  # a rule within this share of the best measured "is within" it


@dataclass(frozen=True)
class Point:
    """One learning rate to train at one held-out batch size, and the rules (or steps around the
    recommended rule) that give it."""

    batch_size: int
    lr: float
    labels: tuple[str, ...]

    def matches(self, batch_size: int, lr: float) -> bool:
        return batch_size == self.batch_size and abs(math.log(lr / self.lr)) < 1e-9


class VerifiedRate(Frozen):
    """One learning rate at a held-out batch size: its runs, their mean, and its regret."""

    lr: float
    labels: tuple[str, ...]
    seeds: tuple[int, ...] = ()      # the seeds that completed...
    values: tuple[float, ...] = ()   # ...and their final metric
    diverged: int = 0                # runs that diverged
    mean: float | None = None
    se: float | None = None
    regret: float | None = None      # how much worse than the best measured, in the metric's units (inf: diverged)
    regret_se: float | None = None
    regret_share: float | None = None  # ...as a share of the best measured (0.031 is 3.1%)


class VerifiedBatch(Frozen):
    batch_size: int
    extrapolated: bool = False  # outside the batch sizes the study searched
    best_lr: float | None = None  # the learning rate with the best mean (every seed finished, none diverged)
    rates: tuple[VerifiedRate, ...] = ()


class Verification(Frozen):
    """The measured comparison of the rules at held-out batch sizes (``FitResult.verify``)."""

    seeds: int
    rules: tuple[str, ...]
    recommended: str                  # the rule "recommended" stood for
    batches: tuple[VerifiedBatch, ...] = ()
    trainings: int = 0                # planned: learning rates × batch sizes × seeds
    finished: int = 0                 # of them, finished (complete or diverged)
    summary: str = ""                 # the sentence added to the verdict
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def default_batch_sizes(studied: Sequence[int], n: int = HELD_OUT) -> list[int]:
    """About ``n`` batch sizes spread over the studied range, each the geometric midpoint of two
    neighbouring studied ones (rounded), so none was searched."""
    sizes = sorted(set(studied))
    middles = sorted({round(math.sqrt(a * b)) for a, b in zip(sizes, sizes[1:])} - set(sizes))
    if len(middles) <= n:
        return middles
    picks = np.linspace(0, len(middles) - 1, n).round().astype(int)
    return [middles[i] for i in sorted(set(picks))]


def rule_lr(fit, name: str, batch_size: int) -> float:
    """The learning rate rule ``name`` gives at ``batch_size``: linear and square-root scaled from the
    reference batch size's optimum, as the verdict scales them; the others as fitted."""
    if name == RECOMMENDED:
        return fit.predict(batch_size)
    if name in (LINEAR, SQRT):
        reference = next(o for o in fit.optima if o.batch_size == fit.reference_batch_size)
        return anchored(name, reference, [batch_size])[0]
    return fit.predict(batch_size, name)


def plan(fit, batch_sizes: Sequence[int], rules: Sequence[str]) -> list[Point]:
    """The learning rates to train at each held-out batch size: each rule's, and AROUND the
    recommended one; rates within ×1.01 of each other are one training with both labels."""
    points = []
    for b in batch_sizes:
        wanted = [(name, rule_lr(fit, name, b)) for name in rules]
        wanted += [(step, fit.predict(b) * factor) for step, factor in AROUND.items()]
        merged: list[Point] = []
        for label, lr in sorted(wanted, key=lambda item: item[1]):
            if merged and abs(math.log(lr / merged[-1].lr)) < SAME_LR:
                merged[-1] = Point(b, merged[-1].lr, (*merged[-1].labels, label))
            else:
                merged.append(Point(b, lr, (label,)))
        points += merged
    return points


def beyond_the_best(fit, points: Sequence[Point], seeds: Sequence[int], trials: Iterable) -> list[Point]:
    """One more learning rate ×2 past the end of a held-out batch size's rates where the best
    measured is that end (at most MAX_REACH from the recommended one): until the best is bracketed,
    the best at that batch size may lie further out, and every rule's regret would be measured
    against too poor a best."""
    extra = []
    for batch in summarize(fit, points, seeds, trials).batches:
        lrs = sorted(p.lr for p in points if p.batch_size == batch.batch_size)
        center = fit.predict(batch.batch_size)
        for end, step in ((lrs[0], 0.5), (lrs[-1], 2.0)):
            factor = end * step / center
            if batch.best_lr == end and 1 / MAX_REACH <= factor <= MAX_REACH:
                extra.append(Point(batch.batch_size, end * step, (f"×{factor:.2g}",)))
    return extra


def summarize(fit, points: Sequence[Point], seeds: Sequence[int], trials: Iterable) -> Verification:
    """The verification from the finished verification trials (those not in ``points`` ignored)."""
    trials = [t for t in trials if outcome_of(t) in (Outcome.COMPLETE, Outcome.DIVERGED)]
    sign = -1.0 if fit.direction == "maximize" else 1.0
    studied = (min(fit.batch_sizes), max(fit.batch_sizes))
    batches = []
    for b in dict.fromkeys(p.batch_size for p in points):
        rates = [_rate(p, [t for t in trials if p.matches(t.params.get(BATCH_SIZE), t.params.get(LR, 1.0))], seeds)
                 for p in points if p.batch_size == b]
        batches.append(_with_regrets(b, rates, sign, not studied[0] <= b <= studied[1], len(seeds)))
    labels = {label for p in points for label in p.labels}
    rules = tuple(name for name in RULE_CHOICES if name in labels)
    finished = sum(len(r.values) + r.diverged for batch in batches for r in batch.rates)
    verification = Verification(seeds=len(seeds), rules=rules, recommended=fit.recommended, batches=tuple(batches),
                                trainings=len(points) * len(seeds), finished=finished)
    return verification.model_copy(update={"summary": sentence(verification)})


def _rate(point: Point, trials: list, seeds: Sequence[int]) -> VerifiedRate:
    runs = {}
    for t in trials:  # a seed run twice (a retry that finished after all) counts once
        runs.setdefault(t.user_attrs.get(SEED), t)
    done = [(seed, runs[seed]) for seed in seeds if seed in runs]
    complete = [(seed, t.value) for seed, t in done if outcome_of(t) == Outcome.COMPLETE]
    values = np.array([v for _, v in complete])
    return VerifiedRate(lr=point.lr, labels=point.labels, seeds=tuple(s for s, _ in complete),
                        values=tuple(float(v) for v in values), diverged=len(done) - len(complete),
                        mean=float(values.mean()) if len(values) else None, se=_se(values))


def _se(values: np.ndarray) -> float | None:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def _with_regrets(batch_size: int, rates: list[VerifiedRate], sign: float, extrapolated: bool,
                  n_seeds: int) -> VerifiedBatch:
    """Each rate's regret against the best rate measured whole (every seed, none diverged)."""
    whole = [r for r in rates if len(r.values) == n_seeds and not r.diverged]
    if not whole:
        return VerifiedBatch(batch_size=batch_size, extrapolated=extrapolated, rates=tuple(rates))
    best = min(whole, key=lambda r: sign * r.mean)
    scale = abs(best.mean) or 1.0
    scored = []
    for r in rates:
        if r.diverged:
            update = {"regret": math.inf, "regret_share": math.inf}
        elif r.values:
            paired = dict(zip(r.seeds, r.values))
            diffs = np.array([sign * (paired[s] - v) for s, v in zip(best.seeds, best.values) if s in paired])
            regret = sign * (r.mean - best.mean)
            update = {"regret": regret, "regret_se": _se(diffs), "regret_share": regret / scale}
        else:
            update = {}
        scored.append(r.model_copy(update=update))
    return VerifiedBatch(batch_size=batch_size, extrapolated=extrapolated, best_lr=best.lr, rates=tuple(scored))


def sentence(verification: Verification) -> str:
    """"Verified at B=24, 96, 384 (3 seeds): the recommended saturating rule is within 0.2% of the best
    measured; linear loses 3.1% at 384 and diverges at 768; square-root loses 1.4% at 24.\""""
    measured = [b for b in verification.batches if b.best_lr is not None]
    if not measured:
        return ""
    sizes = ", ".join(f"{b.batch_size}{' (extrapolated)' if b.extrapolated else ''}" for b in measured)
    seeds = f"{verification.seeds} seed{'s' if verification.seeds > 1 else ''}"
    said = [name for name in verification.rules  # the recommended rule once, as "the recommended"
            if not (name == verification.recommended and RECOMMENDED in verification.rules)]
    clauses = [clause for name in said if (clause := _rule_clause(verification, name, measured))]
    return f"Verified at B={sizes} ({seeds}): " + "; ".join(clauses) + "." if clauses else ""


def _rule_clause(verification: Verification, name: str, measured: list[VerifiedBatch]) -> str:
    label = _label(verification, name)
    found = [(b.batch_size, r) for b in measured for r in b.rates if name in r.labels and r.regret is not None]
    if not found:
        return ""
    diverges = [b for b, r in found if r.diverged]
    finite = [(b, r) for b, r in found if not r.diverged]
    parts = []
    if finite:
        worst_b, worst = max(finite, key=lambda item: item[1].regret_share)
        if worst.regret_share <= WITHIN:
            parts.append(f"is within {_percent(max(worst.regret_share, 0.0))} of the best measured")
        else:
            parts.append(f"loses {_percent(worst.regret_share)} at {worst_b}")
    if diverges:
        parts.append(f"diverges at {', '.join(map(str, diverges))}")
    return f"{label} " + " and ".join(parts)


def _label(verification: Verification, name: str) -> str:
    if name == RECOMMENDED:
        return f"the recommended {RULE_LABELS[verification.recommended]}"
    return f"the {RULE_LABELS[name]}"


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"
