"""Which batch size to use: the steps and samples each batch size needs to reach a target metric, and
the critical batch size past which a larger batch mostly burns samples (McCandlish et al. 2018;
Shallue et al. 2019 measured the same bend on 35 workloads).

Per batch size, the learning curves of its trials (complete, and pruned up to where they stopped) are
read where they first reach the target, interpolated between reports (the metric linear in log
samples; reports every few percent of the run make this exact to a few percent). The batch size
needs the fewest steps any of them took: the learning rate tuned for this target among those the
search tried, as Shallue et al. count (the learning rate best for the final metric reaches an
earlier target later: ×1.4 the steps on the noisy quadratic). A bootstrap over the curves gives its
interval. The default target is the best value that at least REACHING runs of every batch size
reach, so that each reading rests on several curves.

Across batch sizes the steps follow S(B) = S_min (1 + B_crit / B) and the samples E(B) = S(B) B =
E_min (1 + B / B_crit), with B_crit = E_min / S_min: well below B_crit, doubling the batch halves the
steps; at B_crit it saves a quarter of them, and less beyond. 1 / S(B) has the saturating rule's shape,
so it is fitted, with its interval, by the same profile (``tuner.fit._rules``).

Where the runs measured the gradient noise scale B_simple (``train_torch``'s ``noise_scale``), it is
read where each run nearest its batch size's optimum reaches the target (the windows between half
and twice those samples: B_simple grows as the loss falls, so it is compared with B_crit at the
target), and the median over those runs is reported beside B_crit and B_noise.
"""
from __future__ import annotations

import math

import numpy as np

from tuner.fit._data import BatchTrials, Curve
from tuner.fit._model import Frozen
from tuner.fit._optimum import Z95, BatchOptimum
from tuner.fit._rules import SATURATING, Rule, bend_interval, fit_bend
from tuner.fit._verdict import b_noise_interval, format_batch_size, interval_text
from tuner.trials import noise_scale, samples_to_reach

REACHING = 3         # the default target: every batch size has at least this many runs that reach it
NEAREST = 3          # the gradient noise scale: at least the runs this near each optimum
MIN_READINGS = 3     # batch sizes that reach the target, for a curve with two parameters and a check
STEPS_FLOOR = 0.05   # no batch size's log steps is known better than this (reports are discrete)
N_BOOTSTRAP = 200


class BatchSteps(Frozen):
    """What one batch size needs to reach the target: training samples and optimizer steps (the
    fewest any of its runs took; None where none reached it), with a 95% interval."""

    batch_size: int
    reached: bool
    samples: float | None = None
    steps: float | None = None
    steps_ci: tuple[float, float] | None = None
    n_curves: int = 0       # learning curves read
    early: bool = False     # a run reached it by its first report: when exactly, the reports do not say


class CriticalBatch(Frozen):
    """Steps and samples to a target across batch sizes, and the critical batch size they imply."""

    target: float
    default_target: bool    # the target every batch size reaches (else the user's)
    batches: tuple[BatchSteps, ...]
    s_min: float | None = None       # fewest steps, at an infinite batch
    e_min: float | None = None       # fewest samples, at a batch of one
    b_crit: float | None = None      # E_min / S_min
    b_crit_ci: tuple[float | None, float | None] | None = None  # 95%; None: unbounded
    b_simple: float | None = None    # the gradient noise scale the runs near the optima measured (median)
    b_simple_ci: tuple[float, float] | None = None  # 95%, a bootstrap over those runs
    n_noise_scales: int = 0

    @property
    def timed(self) -> list[BatchSteps]:
        """The batch sizes whose runs reached the target between two reports: those that reached it by
        their first report (or the untrained model already meets it) say only that it took no longer."""
        return [r for r in self.batches if r.reached and not r.early]

    def steps_at(self, batch_size: float) -> float:
        """Steps the fitted curve S(B) = S_min (1 + B_crit / B) needs at ``batch_size``."""
        return self.s_min * (1.0 + self.b_crit / batch_size)


def estimate_critical(batches: list[BatchTrials], optima: list[BatchOptimum], maximize: bool,
                      target: float | None, rng: np.random.Generator,
                      goal: float | None = None) -> CriticalBatch | None:
    """Steps to ``target`` (None: the best value every batch size reaches) at each batch size whose
    optimum the rules use, and the critical batch size; None where no learning curves were reported.
    In a study scored by the steps to ``goal`` (the trials' values are those steps, the optima theirs),
    the steps to it are read off each batch size's fitted valley at its optimum."""
    sign = -1.0 if maximize else 1.0  # lower is better after multiplying by sign
    curves = {o.batch_size: b.curves for b, o in zip(batches, optima) if o.usable and b.curves}
    if not curves:
        return None
    default = target is None
    if default:
        target = sign * max(_reached_by_several(c, sign) for c in curves.values())
    if goal is not None and target == goal:
        steps = [_steps_at_optimum(o, len(curves[o.batch_size])) for o in optima if o.batch_size in curves]
    else:
        steps = [_steps(b, c, sign * target, sign, rng) for b, c in sorted(curves.items())]
    readings = CriticalBatch(target=target, default_target=default, batches=steps)
    return readings.model_copy(update={**_fit(readings.timed),
                                       **_noise_scale(batches, optima, sign * target, sign, rng)})


def _noise_scale(batches: list[BatchTrials], optima: list[BatchOptimum], goal: float, sign: float, rng) -> dict:
    """B_simple where the runs nearest each batch size's optimum (within its 95% interval, at least the
    NEAREST nearest) reach the target: their median, and a bootstrap interval of the median."""
    values = []
    for batch, optimum in zip(batches, optima):
        measured = [c for c in batch.curves if c.noise is not None]
        if not optimum.usable or not measured:
            continue
        centre = math.log(optimum.lr)
        low, high = (math.log(v) for v in optimum.ci)
        ranked = sorted(measured, key=lambda c: abs(c.x - centre))
        for curve in (c for i, c in enumerate(ranked) if i < NEAREST or low <= c.x <= high):
            reach = _first_reach(curve, goal, sign)
            value = noise_scale(curve.noise, reach / 2, reach * 2) if math.isfinite(reach) else None
            if value is not None:
                values.append(value)
    if not values:
        return {}
    values = np.array(values)
    medians = np.median(values[rng.integers(0, len(values), size=(N_BOOTSTRAP, len(values)))], axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return {"b_simple": float(np.median(values)), "b_simple_ci": (float(low), float(high)),
            "n_noise_scales": len(values)}


def _reached_by_several(curves: tuple[Curve, ...], sign: float) -> float:
    """The best value (sign-flipped: lower is better) that REACHING of the curves reach (all of
    them, where there are fewer)."""
    lowest = sorted(float(np.min(sign * c.value)) for c in curves)
    return lowest[min(REACHING, len(lowest)) - 1]


def _steps(batch_size: int, curves: tuple[Curve, ...], goal: float, sign: float, rng) -> BatchSteps:
    """The fewest samples any of ``curves`` took to reach ``goal`` (in sign-flipped units), and a
    bootstrap interval of that fewest over the curves."""
    samples = np.array([_first_reach(c, goal, sign) for c in curves])
    if not np.isfinite(samples).any():
        return BatchSteps(batch_size=batch_size, reached=False, n_curves=len(curves))
    early = any(sign * c.value[0] <= goal for c in curves)  # by its first report: when, not known
    draws = samples[rng.integers(0, len(samples), size=(N_BOOTSTRAP, len(samples)))].min(axis=1)
    draws = draws[np.isfinite(draws)]  # a draw of only curves that never reach it says nothing of the fewest
    fewest = float(samples.min())
    low, high = np.percentile(draws, [2.5, 97.5]) if len(draws) else (fewest, fewest)
    return BatchSteps(batch_size=batch_size, reached=True, samples=fewest, steps=fewest / batch_size,
                      steps_ci=(float(low) / batch_size, float(high) / batch_size), n_curves=len(curves),
                      early=early)


def _steps_at_optimum(optimum: BatchOptimum, n_curves: int) -> BatchSteps:
    """The steps to the goal at a batch size's optimum, where the trials' values are those steps: the
    fitted valley's mean there, with its 95% interval. The fewest any run took read up to 25% low on
    Zhang's noisy quadratic (a noisy loss crosses a level early, and the fewest of many runs near
    the optimum is the luckiest); the best runs' mean where no valley was fitted."""
    batch_size = optimum.batch_size
    priced = optimum.valley.loss_at(math.log(optimum.lr)) if optimum.valley is not None else None
    if priced is None or not math.isfinite(priced[0]):
        priced = (optimum.best_value, optimum.noise or 0.0)
    mean, se = priced
    return BatchSteps(batch_size=batch_size, reached=True, samples=mean * batch_size, steps=mean,
                      steps_ci=(max(mean - Z95 * se, 0.0), mean + Z95 * se), n_curves=n_curves)


def _first_reach(curve: Curve, goal: float, sign: float) -> float:
    """Samples seen when the curve first reaches ``goal`` (sign-flipped units); inf where it never does."""
    return samples_to_reach(curve.samples, sign * curve.value, goal, maximize=False)


def _fit(reached: list[BatchSteps]) -> dict:
    """S_min, E_min and B_crit (with its 95% interval) from the batch sizes that reached the target."""
    if len(reached) < MIN_READINGS:
        return {}
    log_b = np.log([r.batch_size for r in reached])
    y = -np.log([r.steps for r in reached])  # -log S = -log S_min - log(1 + B_crit / B): the saturating shape
    sigma = np.maximum([math.log(r.steps_ci[1] / r.steps_ci[0]) / (2 * 1.96) for r in reached], STEPS_FLOOR)
    level, log_b_crit = fit_bend(SATURATING, log_b, y, sigma)
    s_min, b_crit = math.exp(-level), math.exp(log_b_crit)
    return {"s_min": s_min, "e_min": s_min * b_crit, "b_crit": b_crit,
            "b_crit_ci": tuple(bend_interval(SATURATING, log_b, y, sigma))}


def describe(critical: CriticalBatch | None, saturating: Rule) -> str:
    """The verdict's sentences on which batch size to use: steps and samples to the target at the
    smallest and largest batch size that reach it, the critical batch size and whether the learning
    rates' B_noise agrees, and the batch sizes that never reach the target."""
    if critical is None:
        return ""
    reached = critical.timed
    missed = [str(r.batch_size) for r in critical.batches if not r.reached]
    parts = []
    early = [str(r.batch_size) for r in critical.batches if r.early]
    if len(reached) >= 2:
        small, large = reached[0], reached[-1]
        parts.append(f"To reach {critical.target:.3g} in the metric: B={small.batch_size} needs {small.steps:,.0f} "
                     f"steps, B={large.batch_size} needs {large.steps:,.0f} ({small.steps / large.steps:.1f}× fewer "
                     f"steps for {large.samples / small.samples:.1f}× the samples).")
    if critical.b_crit is not None:
        b_crit = format_batch_size(critical.b_crit)
        parts.append(f"Critical batch size ≈ {b_crit} ({interval_text(critical.b_crit_ci)}): well below it "
                     "doubling the batch nearly halves the steps; past it, doubling saves less than a quarter "
                     f"of them. {_agreement(critical, saturating)}")
    elif reached:
        parts.append(f"Only {len(reached)} batch size{'s' * (len(reached) != 1)} reach it, too few for a critical "
                     "batch size: train longer (a larger budget) or choose an easier target (`tuner fit --target`).")
    if missed:
        parts.append(f"B={', '.join(missed)} never reach{'es' * (len(missed) == 1)} it within the budget.")
    if early:
        parts.append(f"At B={', '.join(early)} a run reaches it by its first report, so when is not known "
                     "(left out of the curve): report earlier, or choose a target training has to work for "
                     "(`tuner fit --target`).")
    if critical.b_simple is not None:
        low, high = critical.b_simple_ci
        parts.append(f"The gradient noise scale where the runs nearest the optima reach it is B_simple ≈ "
                     f"{format_batch_size(critical.b_simple)} (95% CI {low:.3g} to {high:.3g}, "
                     f"{critical.n_noise_scales} runs).")
    return " ".join(parts)


def _agreement(critical: CriticalBatch, saturating: Rule) -> str:
    """Whether the learning rates' B_noise (the saturating rule) says the same as the steps."""
    b_noise, (low, high) = saturating.b_noise, saturating.b_noise_ci
    factor = max(b_noise / critical.b_crit, critical.b_crit / b_noise)
    c_low, c_high = critical.b_crit_ci
    overlap = (high is None or c_low is None or c_low <= high) and (low is None or c_high is None or low <= c_high)
    verb = "agrees" if factor <= 2.0 or overlap else f"differs by ×{factor:.1f}"
    return (f"The learning rates' saturating rule puts B_noise at {format_batch_size(b_noise)} "
            f"({b_noise_interval(saturating)}): it {verb}.")
