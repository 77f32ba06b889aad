"""Rules for the optimal learning rate as a function of batch size, fitted to the per-batch optima.

Four rules, fitted in log space by weighted least squares (weights 1/sigma^2 from each batch size's
interval):

* ``linear``: lr proportional to B (Goyal et al. 2017);
* ``sqrt``: lr proportional to sqrt(B) (Krizhevsky 2014; Malladi et al. 2022 for Adam);
* ``power``: lr proportional to B^alpha, alpha free, with a 95% interval;
* ``saturating``: lr = lr_max / (1 + B_noise / B) (McCandlish et al. 2018): linear well below the
  critical batch size B_noise, flat at lr_max well above it.

Each rule is compared three ways: an information criterion that pays for parameters (AIC, BIC),
leave-one-batch-size-out prediction error, and (in ``tuner.fit._verdict``) what following it costs
in the metric's own units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

# F and Student's t quantiles from scipy.special: scipy.stats takes half a second to import
from scipy.special import fdtri, stdtrit

LINEAR, SQRT, POWER, SATURATING = "linear", "sqrt", "power", "saturating"
RULE_NAMES = (LINEAR, SQRT, POWER, SATURATING)
FIXED_ALPHA = {LINEAR: 1.0, SQRT: 0.5}
N_PARAMS = {LINEAR: 1, SQRT: 1, POWER: 2, SATURATING: 2}
# B_noise is searched this far beyond the batch sizes measured: further out the rule is linear
# (B_noise >> B) or flat (B_noise << B) over the whole range and the data cannot tell more
B_NOISE_REACH = 100.0
PRIOR_DOF = 1  # see _variance_scale


@dataclass(frozen=True)
class Rule:
    """A fitted rule: its parameters, what it predicts, and how it compares (``stats``)."""

    name: str
    params: dict[str, float]
    stats: dict = field(default_factory=dict)  # chi2, aic, bic, lobo, intervals, metric costs

    def predict(self, batch_size) -> np.ndarray | float:
        b = np.asarray(batch_size, dtype=float)
        p = self.params
        if self.name == SATURATING:
            lr = p["lr_max"] / (1.0 + p["b_noise"] / b)
        else:
            lr = p["lr_ref"] * (b / p["batch_size_ref"]) ** p["alpha"]
        return float(lr) if np.ndim(lr) == 0 else lr

    def formula(self, digits: int = 4) -> str:
        """The rule as code: ``lr = 0.31 * (B / 64) ** 0.74``, ``lr = 1.9 / (1 + 150 / B)``."""
        p = self.params
        if self.name == SATURATING:
            return f"lr = {p['lr_max']:.{digits}g} / (1 + {p['b_noise']:.{digits}g} / B)"
        exponent = "" if p["alpha"] == 1.0 else f" ** {p['alpha']:.3g}"
        return f"lr = {p['lr_ref']:.{digits}g} * (B / {p['batch_size_ref']:g}){exponent}"


def log_model(name: str, theta: np.ndarray, log_b: np.ndarray, log_ref: float) -> np.ndarray:
    """log lr predicted by a rule with parameters theta, in the log-space form the fits use."""
    if name == SATURATING:  # theta = (log lr_max, log B_noise)
        return theta[0] - np.logaddexp(0.0, theta[1] - log_b)
    alpha = FIXED_ALPHA.get(name, theta[-1])  # theta = (log lr_ref[, alpha])
    return theta[0] + alpha * (log_b - log_ref)


def fit_theta(name: str, log_b: np.ndarray, y: np.ndarray, sigma: np.ndarray, log_ref: float) -> np.ndarray:
    """Weighted least-squares parameters of one rule."""
    w = 1.0 / sigma**2
    if name in FIXED_ALPHA:
        return np.array([np.sum(w * (y - FIXED_ALPHA[name] * (log_b - log_ref))) / np.sum(w)])
    if name == POWER:
        design = np.stack([np.ones_like(log_b), log_b - log_ref], axis=1) / sigma[:, None]
        return np.linalg.lstsq(design, y / sigma, rcond=None)[0]
    return _fit_saturating(log_b, y, sigma)


def _fit_saturating(log_b, y, sigma) -> np.ndarray:
    grid, chi2 = saturating_profile(log_b, y, sigma)
    start = grid[np.argmin(chi2)]
    bounds = ([-np.inf, grid[0]], [np.inf, grid[-1]])
    best = least_squares(lambda th: (y - log_model(SATURATING, th, log_b, 0.0)) / sigma,
                         x0=[_best_level(start, log_b, y, sigma), start], bounds=bounds)
    return best.x


def saturating_profile(log_b, y, sigma, points: int = 161) -> tuple[np.ndarray, np.ndarray]:
    """chi^2 of the saturating rule as a function of log B_noise, lr_max at its best for each."""
    grid = np.linspace(log_b.min() - math.log(B_NOISE_REACH), log_b.max() + math.log(B_NOISE_REACH), points)
    shape = -np.logaddexp(0.0, grid[:, None] - log_b[None, :])   # log of 1 / (1 + B_noise / B)
    w = 1.0 / sigma**2
    level = np.sum(w * (y - shape), axis=1) / np.sum(w)
    return grid, np.sum(w * (y - level[:, None] - shape) ** 2, axis=1)


def _best_level(log_b_noise, log_b, y, sigma) -> float:
    shape = -np.logaddexp(0.0, log_b_noise - log_b)
    w = 1.0 / sigma**2
    return float(np.sum(w * (y - shape)) / np.sum(w))


def to_rule(name: str, theta: np.ndarray, reference: int) -> Rule:
    if name == SATURATING:
        return Rule(name, {"lr_max": float(math.exp(theta[0])), "b_noise": float(math.exp(theta[1]))})
    alpha = FIXED_ALPHA.get(name, float(theta[-1]))
    return Rule(name, {"alpha": float(alpha), "lr_ref": float(math.exp(theta[0])), "batch_size_ref": reference})


def fit_rules(batch_sizes: list[int], log_lr: np.ndarray, sigma: np.ndarray, reference: int) -> dict[str, Rule]:
    """Every rule fitted to the per-batch optima, with its comparison statistics."""
    log_b = np.log(np.asarray(batch_sizes, dtype=float))
    log_ref = math.log(reference)
    rules = {}
    for name in RULE_NAMES:
        theta = fit_theta(name, log_b, log_lr, sigma, log_ref)
        residual = (log_lr - log_model(name, theta, log_b, log_ref)) / sigma
        chi2, k, n = float(np.sum(residual**2)), N_PARAMS[name], len(log_b)
        stats = {"n_params": k, "chi2": chi2, "aic": chi2 + 2 * k, "bic": chi2 + k * math.log(n),
                 "lobo_error": _leave_one_out(name, log_b, log_lr, sigma, log_ref)}
        rules[name] = to_rule(name, theta, reference)
        rules[name].stats.update(stats)
    rules[POWER].stats["alpha_ci"] = _alpha_interval(log_b, log_lr, sigma, rules[POWER].params["alpha"])
    rules[SATURATING].stats["b_noise_ci"] = _b_noise_interval(log_b, log_lr, sigma)
    return rules


def _leave_one_out(name, log_b, y, sigma, log_ref) -> float | None:
    """Typical factor by which the rule, fitted without a batch size, misses that batch size's optimum
    (exp of the root-mean-square log error); None when too few batch sizes remain to fit it."""
    n = len(log_b)
    if n - 1 < N_PARAMS[name] + 1:
        return None
    errors = []
    for i in range(n):
        keep = np.arange(n) != i
        theta = fit_theta(name, log_b[keep], y[keep], sigma[keep], log_ref)
        errors.append(y[i] - log_model(name, theta, log_b[i:i + 1], log_ref)[0])
    return float(math.exp(math.sqrt(np.mean(np.square(errors)))))


def _variance_scale(chi2: float, dof: int) -> tuple[float, int]:
    """How much to scale the per-batch variances, and the degrees of freedom that scale rests on.

    Two things say how uncertain the optima are: their bootstrap intervals (82-93%
    coverage at 95% nominal on the benchmarks, and wide) and their scatter about the fitted rule
    (chi^2 / dof, noisy with a handful of batch sizes). Pooled, the intervals count as
    ``PRIOR_DOF`` degrees of freedom beside the scatter's.
    """
    return (PRIOR_DOF + chi2) / (PRIOR_DOF + dof), PRIOR_DOF + dof


def _alpha_interval(log_b, y, sigma, alpha) -> list[float]:
    """95% interval of the power law's exponent (weighted least squares, Student's t)."""
    w = 1.0 / sigma**2
    centred = log_b - np.sum(w * log_b) / np.sum(w)
    intercept = np.sum(w * (y - alpha * log_b)) / np.sum(w)
    scale, dof = _variance_scale(float(np.sum(w * (y - intercept - alpha * log_b) ** 2)), len(log_b) - 2)
    half = stdtrit(dof, 0.975) * math.sqrt(scale / np.sum(w * centred**2))
    return [float(alpha - half), float(alpha + half)]


def _b_noise_interval(log_b, y, sigma) -> list[float | None]:
    """95% profile interval of B_noise; an end is None where the data cannot bound it (the interval
    reaches B_NOISE_REACH beyond the batch sizes measured)."""
    grid, chi2 = saturating_profile(log_b, y, sigma)
    scale, dof = _variance_scale(float(chi2.min()), len(log_b) - 2)
    inside = np.flatnonzero(chi2 - chi2.min() <= fdtri(1, dof, 0.95) * scale)
    low, high = inside.min(), inside.max()
    return [None if low == 0 else float(math.exp(grid[low])),
            None if high == len(grid) - 1 else float(math.exp(grid[high]))]
