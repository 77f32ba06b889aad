"""Rules for the optimal learning rate as a function of batch size, fitted to the per-batch optima.

Five rules, fitted in log space by least squares, each batch size's error scaled by its own interval
on the side the rule passes it (``Spread``: a batch size whose optimum sits just below a cliff has a
tight interval above it, and a rule that overshoots there pays for it):

* ``linear``: lr proportional to B (Goyal et al. 2017);
* ``sqrt``: lr proportional to sqrt(B) (Krizhevsky 2014; Malladi et al. 2022 for Adam);
* ``power``: lr proportional to B^alpha, alpha free, with a 95% interval;
* ``saturating``: lr = lr_max / (1 + B_noise / B) (McCandlish et al. 2018): linear well below the
  critical batch size B_noise, flat at lr_max well above it;
* ``surge``: lr = lr_peak / (½(√(B_peak/B) + √(B/B_peak))) (Li et al. 2024, for Adam): rises as √B
  well below B_peak, peaks at lr_peak there, and falls as 1/√B well above it.

The last two are a level times a shape with one parameter (B_noise, B_peak): ``SHAPES``.

Each rule is compared three ways: an information criterion that pays for parameters (AIC, BIC),
leave-one-batch-size-out prediction error, and (in ``tuner.fit._verdict``) what following it costs
in the metric's own units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np
from pydantic import Field, model_serializer
from scipy.optimize import least_squares

# F and Student's t quantiles from scipy.special: scipy.stats takes half a second to import
from scipy.special import fdtri, stdtrit

from tuner.fit._model import Frozen, Real

LINEAR, SQRT, POWER, SATURATING, SURGE = "linear", "sqrt", "power", "saturating", "surge"
RULE_NAMES = (LINEAR, SQRT, POWER, SATURATING, SURGE)
FIXED_ALPHA = {LINEAR: 1.0, SQRT: 0.5}
N_PARAMS = {LINEAR: 1, SQRT: 1, POWER: 2, SATURATING: 2, SURGE: 2}
# the rules each one holds as a special case or a limit: the power law at α = 1 and ½; the saturating
# rule with its bend far above every batch size (linear); the surge with its peak there (square root)
SPECIAL_CASES = {POWER: (LINEAR, SQRT), SATURATING: (LINEAR,), SURGE: (SQRT,)}
# log of the shape (level 1) of the rules with a bend, as a function of log(bend) and log(B):
# 1 / (1 + B_noise / B) and 1 / cosh(ln(B / B_peak) / 2)
SHAPES = {SATURATING: lambda log_bend, log_b: -np.logaddexp(0.0, log_bend - log_b),
          SURGE: lambda log_bend, log_b: math.log(2.0) - np.logaddexp((log_b - log_bend) / 2, (log_bend - log_b) / 2)}
# their names: (level, bend)
SHAPE_PARAMS = {SATURATING: ("lr_max", "b_noise"), SURGE: ("lr_peak", "b_peak")}
# a bend is searched this far beyond the batch sizes measured: further out the rule is linear or flat
# (saturating), or the square-root rule or falling as 1/sqrt(B) (surge), over the whole range, and
# the data cannot tell more
BEND_REACH = 100.0
PRIOR_DOF = 1  # see _variance_scale
OUTSIDE = 0.01  # a rule ×1.01 beyond where a batch size's trials allow its optimum misses by a spread
LEVEL_STEPS = tuple(math.log(f) for f in (0.5, 0.7, 1.4, 2.0))  # where else a rule's cost fit starts


class Rule(Frozen):
    """A fitted rule: its parameters, how it compares with the others, and what following it gives and
    costs at each batch size measured (the study's ``batch_sizes``, in order).

    The power-law family (linear, square-root, power) has ``alpha``, ``lr_ref`` and ``batch_size_ref``;
    the saturating rule ``lr_max`` and ``b_noise``; the surge rule ``lr_peak`` and ``b_peak``. Stored, a
    rule is these fields (those that are set) and its ``formula``; the study's fit keys it by name.
    """

    name: str = Field(exclude=True)
    alpha: float | None = None
    lr_ref: float | None = None
    batch_size_ref: int | None = None
    lr_max: float | None = None
    b_noise: float | None = None
    lr_peak: float | None = None
    b_peak: float | None = None
    n_params: int
    chi2: Real = math.nan
    aic: Real = math.nan
    bic: Real = math.nan
    lobo_error: float | None = None  # leave-one-batch-size-out: typical factor it misses by
    alpha_ci: tuple[float, float] | None = None           # power law: 95% interval of the exponent
    b_noise_ci: tuple[float | None, float | None] | None = None  # saturating: 95%; None: unbounded
    b_peak_ci: tuple[float | None, float | None] | None = None   # surge: 95%; None: unbounded
    lr: tuple[float, ...] = ()                    # the learning rate it gives
    metric_cost: tuple[float | None, ...] = ()    # how much worse the metric ends (None: not measured)
    metric_cost_se: tuple[float | None, ...] = ()
    diverges: tuple[bool, ...] = ()               # its learning rate is one that diverged
    max_factor: Real = math.nan                   # the largest factor between it and a measured optimum
    anchored_lr: tuple[float, ...] | None = None  # linear, sqrt: scaled from the reference batch size

    @property
    def params(self) -> dict[str, float]:
        """The rule's parameters by name."""
        names = SHAPE_PARAMS.get(self.name, ("alpha", "lr_ref", "batch_size_ref"))
        return {name: getattr(self, name) for name in names}

    def predict(self, batch_size) -> np.ndarray | float:
        b = np.asarray(batch_size, dtype=float)
        if self.name == SATURATING:
            lr = self.lr_max / (1.0 + self.b_noise / b)
        elif self.name == SURGE:
            ratio = b / self.b_peak  # 1 / cosh(ln(ratio) / 2), as the exported module computes it
            lr = 2.0 * self.lr_peak * np.sqrt(ratio) / (1.0 + ratio)
        else:
            lr = self.lr_ref * (b / self.batch_size_ref) ** self.alpha
        return float(lr) if np.ndim(lr) == 0 else lr

    def holds(self, special: str) -> bool:
        """Whether this rule's 95% interval reaches ``special``, one of its ``SPECIAL_CASES``: the power
        law's exponent interval holds its α, the saturating rule's B_noise (the surge's B_peak)
        interval is unbounded above, where the rule is linear (square-root) over every batch size.
        Without an interval, nothing rules it out."""
        if self.name == POWER:
            return self.alpha_ci is None or self.alpha_ci[0] <= FIXED_ALPHA[special] <= self.alpha_ci[1]
        bend = self.b_noise_ci if self.name == SATURATING else self.b_peak_ci
        return bend is None or bend[1] is None

    def formula(self, digits: int = 4) -> str:
        """The rule as code: ``lr = 0.31 * (B / 64) ** 0.74``, ``lr = 1.9 / (1 + 150 / B)``,
        ``lr = 2 * 0.05 / ((B / 256) ** 0.5 + (256 / B) ** 0.5)``."""
        if self.name == SATURATING:
            return f"lr = {self.lr_max:.{digits}g} / (1 + {self.b_noise:.{digits}g} / B)"
        if self.name == SURGE:
            peak = f"{self.b_peak:.{digits}g}"
            return f"lr = 2 * {self.lr_peak:.{digits}g} / ((B / {peak}) ** 0.5 + ({peak} / B) ** 0.5)"
        exponent = "" if self.alpha == 1.0 else f" ** {self.alpha:.3g}"
        return f"lr = {self.lr_ref:.{digits}g} * (B / {self.batch_size_ref:g}){exponent}"

    @model_serializer(mode="wrap")
    def _stored(self, handler) -> dict:
        return {key: value for key, value in handler(self).items() if value is not None} | {"formula": self.formula()}


def log_model(name: str, theta: np.ndarray, log_b: np.ndarray, log_ref: float) -> np.ndarray:
    """log lr predicted by a rule with parameters theta, in the log-space form the fits use."""
    if name in SHAPES:  # theta = (log level, log bend): (log lr_max, log B_noise), (log lr_peak, log B_peak)
        return theta[0] + SHAPES[name](theta[1], log_b)
    alpha = FIXED_ALPHA.get(name, theta[-1])  # theta = (log lr_ref[, alpha])
    return theta[0] + alpha * (log_b - log_ref)


@dataclass(frozen=True)
class Optima:
    """The per-batch optima a rule is fitted to, in log space."""

    log_b: np.ndarray
    y: np.ndarray        # log lr*
    low: np.ndarray      # standard error of y below it...
    high: np.ndarray     # ...and above it (from each batch size's interval)
    floor: np.ndarray    # where each batch size's trials allow the optimum (-inf, inf: anywhere)...
    ceiling: np.ndarray
    room_low: np.ndarray   # ...widened to its interval: where a rule's cost fit may take it
    room_high: np.ndarray
    cost_x: np.ndarray   # (batch sizes, points): log-lr...
    cost: np.ndarray     # ...and what following it costs there, in units of the tolerated cost (nan: unmeasured)
    reach_low: np.ndarray   # how far below y following a rule costs the tolerated cost...
    reach_high: np.ndarray  # ...and above it (where the trials do not say: the 95% interval)
    # the batch sizes left out (their trials cannot place an optimum) where runs blew up, and how high a
    # rule may go there (log): a rule fitted without them passed a blow-up their trials had measured
    # (held-out shape 898, B=128: the power law at ×3.5 of the optimum, above runs that diverged at ×3.1)
    unplaced_log_b: np.ndarray = field(default_factory=lambda: np.zeros(0))
    unplaced_ceiling: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def take(self, keep: np.ndarray) -> Optima:
        """The same with only the batch sizes ``keep`` selects (the left-out ones' ceilings stay)."""
        return replace(self, **{f.name: getattr(self, f.name)[keep] for f in fields(self)
                                if not f.name.startswith("unplaced")})

    @property
    def sigma(self) -> np.ndarray:
        return np.sqrt(self.low * self.high)


def fit_theta(name: str, data: Optima, log_ref: float, restarts: bool = True) -> np.ndarray:
    """Parameters of one rule that lose the least metric over the batch sizes measured (``cost``),
    starting from the least-squares fit to the optima in log-lr (and, with ``restarts``, from that
    fit moved up and down). Fitted in log-lr alone, the exact optima of a valley that ends in a
    cliff put a rule past the cliff, and most of a rule's misses in a flat valley cost nothing."""
    theta = _fit_symmetric(name, data.log_b, data.y, data.sigma, log_ref)
    bounds = _theta_bounds(name, data)
    # the cost is flat between runs and steep at walls: started only from the optima's least squares,
    # the power law stopped in a hollow six times costlier than one ×1.35 lower (a stiff quadratic)
    fits = [least_squares(lambda th: cost(name, th, data, log_ref), x0=start, bounds=bounds)
            for start in (_starts(theta, bounds) if restarts else [theta])]
    return min(fits, key=lambda fit: fit.cost).x


def _theta_bounds(name: str, data: Optima):
    """Where a rule's parameters may go: a bend at most BEND_REACH beyond the batch sizes measured."""
    if name not in SHAPES:
        return -np.inf, np.inf
    return ([-np.inf, data.log_b.min() - math.log(BEND_REACH)], [np.inf, data.log_b.max() + math.log(BEND_REACH)])


def _starts(theta: np.ndarray, bounds) -> list[np.ndarray]:
    """The least-squares fit, and the same with its level moved by each of LEVEL_STEPS (kept inside ``bounds``)."""
    starts = [theta]
    for step in LEVEL_STEPS:
        start = theta.copy()
        start[0] += step
        starts.append(np.clip(start, *bounds))
    return starts


def _fit_misfit(name: str, data: Optima, log_ref: float) -> np.ndarray:
    """The parameters that minimize ``misfit``."""
    theta = _fit_symmetric(name, data.log_b, data.y, data.sigma, log_ref)
    bounds = _theta_bounds(name, data)
    return least_squares(lambda th: misfit(name, th, data, log_ref), x0=theta, bounds=bounds).x


def cost(name: str, theta: np.ndarray, data: Optima, log_ref: float) -> np.ndarray:
    """Per batch size, the root of what following the rule costs there in units of the tolerated cost
    (where the trials say) plus its miss squared in units of ``reach``, and its stretch beyond where
    the trials allow the optimum (or its interval reaches: ``room``) in units of OUTSIDE."""
    predicted = log_model(name, theta, data.log_b, log_ref)
    miss = data.y - predicted
    stray = miss / np.where(miss < 0, data.reach_high, data.reach_low)
    measured = np.array([np.interp(p, x, c)  # past either end: as bad as the end
                         for p, x, c in zip(predicted, data.cost_x, data.cost)])
    scaled = np.sqrt(np.nan_to_num(measured) + stray**2)
    return np.r_[scaled, _outside(predicted, data.room_low, data.room_high), _past_unplaced(name, theta, data, log_ref)]


def misfit(name: str, theta: np.ndarray, data: Optima, log_ref: float) -> np.ndarray:
    """Per batch size, the miss in units of its interval on the side the rule passes it, and its
    stretch beyond where the trials allow the optimum: what the comparison of rules rests on."""
    predicted = log_model(name, theta, data.log_b, log_ref)
    miss = data.y - predicted
    return np.r_[miss / np.where(miss < 0, data.high, data.low), _outside(predicted, data.floor, data.ceiling),
                 _past_unplaced(name, theta, data, log_ref)]


def _past_unplaced(name: str, theta: np.ndarray, data: Optima, log_ref: float) -> np.ndarray:
    """How far the rule goes past the ceilings at the batch sizes left out, in units of OUTSIDE."""
    return _outside(log_model(name, theta, data.unplaced_log_b, log_ref), -np.inf, data.unplaced_ceiling)


def _outside(predicted: np.ndarray, floor: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    return (np.maximum(predicted - ceiling, 0.0) + np.maximum(floor - predicted, 0.0)) / OUTSIDE


def _fit_symmetric(name: str, log_b: np.ndarray, y: np.ndarray, sigma: np.ndarray, log_ref: float) -> np.ndarray:
    w = 1.0 / sigma**2
    if name in FIXED_ALPHA:
        return np.array([np.sum(w * (y - FIXED_ALPHA[name] * (log_b - log_ref))) / np.sum(w)])
    if name == POWER:
        design = np.stack([np.ones_like(log_b), log_b - log_ref], axis=1) / sigma[:, None]
        return np.linalg.lstsq(design, y / sigma, rcond=None)[0]
    return fit_bend(name, log_b, y, sigma)


def fit_bend(name: str, log_b, y, sigma) -> np.ndarray:
    """A rule with a bend, by least squares started from the best point of its profile."""
    grid, chi2 = bend_profile(name, log_b, y, sigma)
    start = grid[np.argmin(chi2)]
    bounds = ([-np.inf, grid[0]], [np.inf, grid[-1]])
    best = least_squares(lambda th: (y - log_model(name, th, log_b, 0.0)) / sigma,
                         x0=[_best_level(name, start, log_b, y, sigma), start], bounds=bounds)
    return best.x


def bend_profile(name: str, log_b, y, sigma, points: int = 161) -> tuple[np.ndarray, np.ndarray]:
    """chi^2 of a rule with a bend as a function of log bend (B_noise, B_peak), its level at its
    best for each."""
    grid = np.linspace(log_b.min() - math.log(BEND_REACH), log_b.max() + math.log(BEND_REACH), points)
    shape = SHAPES[name](grid[:, None], log_b[None, :])
    w = 1.0 / sigma**2
    level = np.sum(w * (y - shape), axis=1) / np.sum(w)
    return grid, np.sum(w * (y - level[:, None] - shape) ** 2, axis=1)


def _best_level(name: str, log_bend, log_b, y, sigma) -> float:
    w = 1.0 / sigma**2
    return float(np.sum(w * (y - SHAPES[name](log_bend, log_b))) / np.sum(w))


def parameters(name: str, theta: np.ndarray, reference: int) -> dict[str, float]:
    """A rule's parameters by name, from the log-space ``theta`` the fits use."""
    if name in SHAPE_PARAMS:
        return dict(zip(SHAPE_PARAMS[name], (float(math.exp(t)) for t in theta)))
    alpha = FIXED_ALPHA.get(name, float(theta[-1]))
    return {"alpha": float(alpha), "lr_ref": float(math.exp(theta[0])), "batch_size_ref": reference}


def fit_rules(data: Optima, reference: int) -> dict[str, dict]:
    """Every rule fitted to the per-batch optima: its parameters and comparison statistics (the
    fields of ``Rule`` that do not depend on the batch sizes left out of the fit)."""
    log_ref = math.log(reference)
    intervals = {POWER: {"alpha_ci": _alpha_interval(data.log_b, data.y, data.sigma)},
                 SATURATING: {"b_noise_ci": bend_interval(SATURATING, data.log_b, data.y, data.sigma)},
                 SURGE: {"b_peak_ci": bend_interval(SURGE, data.log_b, data.y, data.sigma)}}
    rules = {}
    for name in RULE_NAMES:
        # compared where each rule fits the optima best (its likelihood's maximum), not at the
        # parameters that lose the least metric: those would favour the rule with most freedom
        chi2 = float(np.sum(misfit(name, _fit_misfit(name, data, log_ref), data, log_ref) ** 2))
        k, n = N_PARAMS[name], len(data.y)
        rules[name] = {**parameters(name, fit_theta(name, data, log_ref), reference),
                       "name": name, "n_params": k, "chi2": chi2, "aic": chi2 + 2 * k, "bic": chi2 + k * math.log(n),
                       "lobo_error": _leave_one_out(name, data, log_ref), **intervals.get(name, {})}
    return rules


def _leave_one_out(name, data: Optima, log_ref) -> float | None:
    """Typical factor by which the rule, fitted without a batch size, misses that batch size's optimum
    (exp of the root-mean-square log error); None when too few batch sizes remain to fit it."""
    n = len(data.y)
    if n - 1 < N_PARAMS[name] + 1:
        return None
    errors = []
    for i in range(n):
        theta = fit_theta(name, data.take(np.arange(n) != i), log_ref, restarts=False)  # n fits: one start each
        errors.append(data.y[i] - log_model(name, theta, data.log_b[i:i + 1], log_ref)[0])
    return float(math.exp(math.sqrt(np.mean(np.square(errors)))))


def _variance_scale(chi2: float, dof: int) -> tuple[float, int]:
    """How much to scale the per-batch variances, and the degrees of freedom that scale rests on.

    Two things say how uncertain the optima are: their bootstrap intervals (82-93%
    coverage at 95% nominal on the benchmarks, and wide) and their scatter about the fitted rule
    (chi^2 / dof, noisy with a handful of batch sizes). Pooled, the intervals count as
    ``PRIOR_DOF`` degrees of freedom beside the scatter's.
    """
    return (PRIOR_DOF + chi2) / (PRIOR_DOF + dof), PRIOR_DOF + dof


def _alpha_interval(log_b, y, sigma) -> list[float]:
    """95% interval of the power law's exponent, from the optima alone (weighted least squares,
    Student's t): what the data say of the exponent, whatever the rule's cost-fitted one is."""
    w = 1.0 / sigma**2
    centred = log_b - np.sum(w * log_b) / np.sum(w)
    alpha = float(np.sum(w * centred * y) / np.sum(w * centred**2))
    intercept = np.sum(w * (y - alpha * log_b)) / np.sum(w)
    scale, dof = _variance_scale(float(np.sum(w * (y - intercept - alpha * log_b) ** 2)), len(log_b) - 2)
    half = stdtrit(dof, 0.975) * math.sqrt(scale / np.sum(w * centred**2))
    return [float(alpha - half), float(alpha + half)]


def bend_interval(name: str, log_b, y, sigma) -> list[float | None]:
    """95% profile interval of a rule's bend (B_noise, B_peak); an end is None where the data cannot
    bound it (the interval reaches BEND_REACH beyond the batch sizes measured)."""
    grid, chi2 = bend_profile(name, log_b, y, sigma)
    scale, dof = _variance_scale(float(chi2.min()), len(log_b) - 2)
    excess = chi2 - chi2.min() - fdtri(1, dof, 0.95) * scale  # <= 0: inside
    inside = np.flatnonzero(excess <= 0)
    low, high = inside.min(), inside.max()
    return [None if low == 0 else float(math.exp(_crossing(grid, excess, low, low - 1))),
            None if high == len(grid) - 1 else float(math.exp(_crossing(grid, excess, high, high + 1)))]


def _crossing(grid: np.ndarray, excess: np.ndarray, inside: int, outside: int) -> float:
    """Where ``excess`` crosses zero between a grid point inside the interval and its neighbour
    outside, linearly: the grid's own steps (×1.09) were as wide as a well-measured interval."""
    share = excess[inside] / (excess[inside] - excess[outside])
    return float(grid[inside] + share * (grid[outside] - grid[inside]))
