"""The noisy quadratic model (Zhang et al. 2019): SGD on a diagonal quadratic with gradient noise.

Per dimension i, with curvature h_i and per-sample gradient-noise variance c_i, one SGD step at
learning rate a and batch size B is x <- (1 - a h_i) x - a sqrt(c_i / B) z with z ~ N(0, 1), and the
loss is 1/2 sum_i h_i x_i^2. Each x_i stays Gaussian with a mean and variance known in closed form,
so a whole run is sampled exactly at its report points in O(dims) work, whatever the step count,
and the expected final loss, hence the optimal learning rate at every batch size, is known exactly
(``optimal_lr``): the ground truth for tests and benchmarks.

With the default options the optimum is nearly linear in B up to B = 64-128, then saturates below
the stability limit a < 2 / max(h), as McCandlish et al. (2018) predict; the loss valley is
asymmetric, with a divergence cliff just above the optimum at large batch sizes.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy.optimize import minimize_scalar

from tuner.spec import PositiveFloat
from tuner.workload import DIVERGENCE_FACTOR


class Options(BaseModel):
    """``[workload]`` options of the built-in ``quadratic`` workload."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    # upper limits: beyond them a run overflows or takes hours, which is a typo, not a study
    samples: int = Field(16384, gt=0, le=2**40, description="training budget in samples, equal at every batch size")
    dims: int = Field(1024, gt=0, le=10**6, description="dimensions, curvatures log-spaced over `curvatures`")
    curvatures: tuple[PositiveFloat, PositiveFloat] = Field(
        (1e-3, 1.0), description="lowest and highest curvature (the spectrum is log-spaced between them)")
    spectrum: Literal["geometric", "harmonic"] = Field(
        "geometric", description="geometric: log-spaced over `curvatures`; harmonic: h_i = highest / i for "
                                 "i = 1…dims (Zhang et al. 2019's h_i = 1/i; the lowest curvature is ignored)")
    noise: float = Field(1.0, ge=0, description="gradient-noise variance per sample, relative to curvature")
    reports: int = Field(8, gt=0, le=10**4, description="reports per run")
    spacing: Literal["even", "log"] = Field(
        "even", description="even: reports every run/reports steps; log: at steps spaced evenly on a log scale "
                            "(a study with a [study] goal reads when a run reaches it to within a few percent)")
    noisy: bool = Field(True, description="false: report the expected loss (no sampling noise)")

    @field_validator("curvatures", mode="before")
    @classmethod
    def _pair(cls, value):  # TOML has arrays, not tuples; a tuple keeps the options hashable (cached)
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _ordered(self) -> Options:
        if not self.curvatures[0] <= self.curvatures[1]:
            raise ValueError(f"curvatures: needs low <= high, got {list(self.curvatures)}")
        return self


def check_batch_sizes(options: dict, batch_sizes: list[int]) -> None:
    """Every batch size takes at least one step within the budget (ValueError otherwise)."""
    samples = Options(**options).samples
    if max(batch_sizes) > samples:
        raise ValueError(f"samples = {samples} is less than batch size {max(batch_sizes)}: its runs would take "
                         "no step; raise samples or drop the batch size")


@lru_cache(maxsize=32)
def _problem(o: Options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if o.spectrum == "harmonic":
        curvature = o.curvatures[1] / np.arange(1, o.dims + 1)
    else:
        curvature = np.geomspace(*o.curvatures, o.dims)
    return curvature, o.noise * curvature, np.ones(o.dims)


def _moments(lr: float, batch_size: int, steps: int, curvature, noise_var):
    """Mean factor r^t and added variance after `steps` SGD steps from a known point."""
    r = 1.0 - lr * curvature
    q = r * r
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        q_t = q**steps
        # sum_{k<t} q^k, written to stay exact as q -> 1
        geometric = np.where(np.abs(1.0 - q) < 1e-12, float(steps), (1.0 - q_t) / (1.0 - q))
        variance = lr * lr * noise_var / batch_size * geometric
        return r**steps, variance


def expected_loss(lr: float, batch_size: int, **options) -> float:
    """Expected loss after the sample budget; inf where SGD diverges."""
    o = Options(**options)
    curvature, noise_var, x0 = _problem(o)
    mean_factor, variance = _moments(lr, batch_size, o.samples // batch_size, curvature, noise_var)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = 0.5 * float(np.sum(curvature * ((mean_factor * x0) ** 2 + variance)))
    return loss if math.isfinite(loss) else math.inf


def optimal_lr(batch_size: int, **options) -> float:
    """The exact learning rate minimising the expected final loss at this batch size."""
    return _optimal_lr(batch_size, Options(**options))


@lru_cache(maxsize=256)
def _optimal_lr(batch_size: int, o: Options) -> float:
    def loss(log_lr: float) -> float:
        return expected_loss(math.exp(log_lr), batch_size, **o.model_dump())

    # a dense grid brackets the minimum (the valley ends in a cliff), then Brent polishes it
    stable = 2.0 / o.curvatures[1]
    grid = np.linspace(math.log(1e-7), math.log(stable), 2001)
    best = int(np.argmin([loss(x) for x in grid]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    return math.exp(minimize_scalar(loss, bounds=(low, high), method="bounded",
                                    options={"xatol": 1e-12}).x)


def steps_to_target(target: float, batch_size: int, **options) -> float:
    """The fewest SGD steps after which the expected loss can be at or below ``target`` at this batch
    size (the learning rate tuned for it, as Shallue et al. 2019 count), interpolated between whole
    steps on log steps; inf where even the budget's last step cannot reach it."""
    o = Options(**options)

    def best_loss(steps: int) -> float:
        settings = {**o.model_dump(), "samples": steps * batch_size}
        return expected_loss(optimal_lr(batch_size, **settings), batch_size, **settings)

    low, high = 1, o.samples // batch_size
    if best_loss(high) > target:
        return math.inf
    if best_loss(low) <= target:
        return float(low)
    while high - low > 1:  # best_loss falls with every step: bisect for the first step that reaches it
        middle = (low + high) // 2
        low, high = (low, middle) if best_loss(middle) <= target else (middle, high)
    before, after = best_loss(low), best_loss(high)
    return math.exp(math.log(low) + (before - target) / (before - after) * math.log(high / low))


def train(run) -> float:
    """Run SGD on the noisy quadratic at run.lr and run.batch_size; report the loss as it goes."""
    o = Options(**run.options)
    curvature, noise_var, x = _problem(o)
    initial_loss = 0.5 * float(np.sum(curvature * x * x))
    total_steps = o.samples // run.batch_size
    if total_steps == 0:
        raise ValueError(f"batch size {run.batch_size} exceeds the budget of {o.samples} samples")
    rng = np.random.default_rng(run.seed)
    if o.spacing == "log":
        spaced = np.geomspace(1, total_steps, o.reports)
    else:
        spaced = np.linspace(0, total_steps, o.reports + 1)
    boundaries = np.unique(np.r_[0, spaced.round()].astype(int))
    loss, done = initial_loss, 0
    for steps in boundaries[1:]:
        if o.noisy:
            x = _advance(x, run.lr, run.batch_size, steps - done, curvature, noise_var, rng)
            loss = 0.5 * float(np.sum(curvature * x * x))
        else:
            loss = expected_loss(run.lr, run.batch_size, **{**o.model_dump(), "samples": int(steps) * run.batch_size})
        done = steps
        if not loss < DIVERGENCE_FACTOR * initial_loss:  # also catches inf and NaN
            raise FloatingPointError(f"loss {loss:.3g} after {steps} steps")
        run.report(steps * run.batch_size, loss)
    return loss


def _advance(x, lr, batch_size, steps, curvature, noise_var, rng):
    mean_factor, variance = _moments(lr, batch_size, steps, curvature, noise_var)
    with np.errstate(over="ignore", invalid="ignore"):
        return mean_factor * x + np.sqrt(variance) * rng.standard_normal(x.shape)
