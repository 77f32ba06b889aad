"""``fit_study``: from a study's trials to a ``FitResult`` (per-batch optima, rules, verdict)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import optuna

from tuner.errors import InputError
from tuner.fit._data import read_study
from tuner.fit._optimum import (
    EDGE_HIGH,
    EDGE_LOW,
    MARGIN,
    NO_COMPLETE,
    OUT_OF_MEMORY,
    TOLERATED,
    Z95,
    BatchOptimum,
    estimate_optima,
)
from tuner.fit._rules import LINEAR, SATURATING, SQRT, Optima, Rule, fit_rules
from tuner.fit._verdict import (
    add_costs,
    anchored,
    plateau_warnings,
    recommend,
    regimes,
    warnings_for,
    write_verdict,
)

MIN_BATCH_SIZES = 3   # the two-parameter rules need a degree of freedom left to be compared
DIVERGES = 1e6       # a learning rate that diverged costs this many times the tolerated cost
SIGMA_FLOOR = 0.03    # no optimum is known better than ×1.03: keeps one lucky interval from ruling the fit


@dataclass
class FitResult:
    """The learning rate as a function of batch size, learned from a study.

    ``to_dict()`` is what ``save_fit`` stores as ``study.user_attrs["lr_batch_fit"]`` (plain JSON);
    ``FitResult.from_dict`` reads it back. ``predict(batch_size)`` gives the recommended rule's LR
    at any batch size, measured or not::

        result = fit_study(study)
        print(result.verdict)
        lr = result.predict(768)             # the recommended rule
        lr_sqrt = result.predict(768, "sqrt")
    """

    study: str
    direction: str
    batch_sizes: list[int]
    optima: list[BatchOptimum]
    rules: dict[str, Rule]
    recommended: str
    reference_batch_size: int
    verdict: str
    warnings: list[str]
    lr_range: tuple[float, float]
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: str = ""

    def predict(self, batch_size: float, rule: str | None = None) -> float:
        """The learning rate ``rule`` (default: the recommended one) gives at ``batch_size``."""
        name = rule or self.recommended
        if name not in self.rules:
            raise ValueError(f"rule must be one of {', '.join(self.rules)}; got {name!r}")
        if not batch_size > 0:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        return float(self.rules[name].predict(batch_size))

    @property
    def critical_batch_size(self) -> float:
        """B_noise of the saturating rule: where linear scaling stops holding."""
        return self.rules[SATURATING].params["b_noise"]

    def to_dict(self) -> dict:
        linear_to, flat_from = regimes(self.rules[SATURATING])
        return _plain({
            "study": self.study, "direction": self.direction, "batch_sizes": self.batch_sizes,
            "optimal_lr": [o.to_dict() for o in self.optima],
            "rules": {name: _rule_dict(rule, self.batch_sizes) for name, rule in self.rules.items()},
            "recommended": self.recommended,
            "verdict": self.verdict, "warnings": self.warnings,
            "critical_batch_size": self.critical_batch_size,
            "linear_up_to": linear_to, "flat_from": flat_from,
            "reference_batch_size": self.reference_batch_size,
            "lr_range": list(self.lr_range), "created": self.created, "tuner_version": self.version,
        })

    @classmethod
    def from_dict(cls, data: dict) -> FitResult:
        """A stored result read back (per-batch valleys are not stored, so metric costs are what was saved)."""
        rules = {name: _rule_from_dict(name, d) for name, d in data["rules"].items()}
        optima = [BatchOptimum(
            batch_size=r["batch_size"], lr=r["lr"], ci=tuple(r["ci"]) if r.get("ci") else None,
            n_trials=r["n_trials"], n_complete=r.get("n_complete", r["n_trials"]),
            n_pruned=r.get("n_pruned", 0), n_diverged=r.get("n_diverged", 0), best_lr=r.get("best_lr"),
            best_value=r.get("best_value"), flags=tuple(r.get("flags", ())), method=r.get("method", ""),
            noise=r.get("noise"), vertex=r.get("vertex"), bracket=tuple(r["bracket"]) if r.get("bracket") else None,
        ) for r in data["optimal_lr"]]
        return cls(study=data["study"], direction=data["direction"], batch_sizes=list(data["batch_sizes"]),
                   optima=optima, rules=rules, recommended=data["recommended"],
                   reference_batch_size=data.get("reference_batch_size", data["batch_sizes"][0]),
                   verdict=data.get("verdict", ""), warnings=list(data.get("warnings", [])),
                   lr_range=tuple(data.get("lr_range", (math.nan, math.nan))),
                   created=data.get("created", ""), version=data.get("tuner_version", ""))


def fit_study(study: optuna.Study, *, reference_batch_size: int | None = None, seed: int = 0) -> FitResult:
    """Learn the optimal LR at every batch size of ``study`` and the rule that connects them.

    Args:
        study: trials with params ``batch_size`` and ``lr`` (as ``tuner run`` writes them, or any
            single-objective Optuna study with those params).
        reference_batch_size: the batch size the linear and square-root rules are scaled from in the
            verdict and figure; default: the measured batch size nearest the geometric middle.
        seed: seeds the bootstrap, so that fitting the same trials twice gives the same result.

    Raises:
        InputError: the study cannot be fitted (one objective needed, and an optimum inside the
            searched range at ``MIN_BATCH_SIZES`` or more batch sizes); the message says what is missing.
    """
    from tuner import __version__

    if len(study.directions) != 1:
        raise InputError(f"study '{study.study_name}' has {len(study.directions)} objectives; "
                         "a fit needs exactly one metric")
    data = read_study(study)
    rng = np.random.default_rng(seed)
    optima = estimate_optima(data.batches, data.maximize, data.lr_range, rng)
    optima = [replace(o, flags=(OUT_OF_MEMORY, *o.flags)) if o.batch_size in data.infeasible else o for o in optima]
    usable = [o for o in optima if o.usable]
    if len(usable) < MIN_BATCH_SIZES:
        raise InputError(_not_enough(study.study_name, optima))
    reference = _reference(usable, reference_batch_size)
    batch_sizes = [o.batch_size for o in optima]
    rules = fit_rules([o.batch_size for o in usable], _optima(usable), reference.batch_size)
    add_costs(rules, optima)
    for name in (LINEAR, SQRT):
        rules[name].stats["anchored_lr"] = anchored(name, reference, batch_sizes)
    recommended = recommend(rules, optima)
    return FitResult(
        study=data.study_name, direction="maximize" if data.maximize else "minimize", batch_sizes=batch_sizes,
        optima=optima, rules=rules, recommended=recommended, reference_batch_size=reference.batch_size,
        verdict=write_verdict(rules, recommended, optima, reference),
        warnings=warnings_for(optima, data.lr_range) + plateau_warnings(rules[recommended], optima),
        lr_range=data.lr_range, version=__version__)


def _optima(usable: list[BatchOptimum]) -> Optima:
    low, high = (np.maximum([o.spread[side] for o in usable], SIGMA_FLOOR) for side in (0, 1))
    floor = [math.log(o.bracket[0]) if o.bracket and o.bracket[0] else -math.inf for o in usable]
    ceiling = [math.log(o.bracket[1]) if o.bracket and o.bracket[1] else math.inf for o in usable]
    cost_x, cost = (np.array(column) for column in zip(*(_cost_curve(o) for o in usable)))
    y = np.log([o.vertex for o in usable])
    reach = [_reach(y, cost_x, cost, side) for side in (0, 1)]
    reach = [np.where(np.isfinite(r), r, Z95 * spread) for r, spread in zip(reach, (low, high))]
    return Optima(np.log([o.batch_size for o in usable]), y, low, high, np.asarray(floor), np.asarray(ceiling),
                  cost_x, cost, *reach)


def _reach(y: np.ndarray, cost_x: np.ndarray, cost: np.ndarray, side: int) -> np.ndarray:
    """Per batch size, how far below (side 0) or above (1) its optimum following a rule first costs
    the tolerated cost; inf where it never does within the trials."""
    reach = np.full(len(y), np.inf)
    for i, (x, c) in enumerate(zip(cost_x, cost)):
        beyond = (x > y[i]) if side else (x < y[i])
        hit = beyond & (np.nan_to_num(c) >= 1.0)
        if hit.any():
            reach[i] = float(np.min(np.abs(x[hit] - y[i])))
    return reach


def _cost_curve(optimum: BatchOptimum, points: int = 161) -> tuple[np.ndarray, np.ndarray]:
    """What following a learning rate costs at this batch size, across ×4 either side of its
    optimum, in units of the tolerated cost (DIVERGES where it diverged; nan without a valley).
    Where the trials do not say: beyond the last learning rate measured on either side, as bad as it
    (a valley does not come down again past its wall: a hole there let a rule sit just past a run
    far worse); between two measured points (a wall, then a divergence), in line from one to the
    other, and past a divergence rising further, so that a fit finds its way back."""
    x = math.log(optimum.lr) + np.linspace(-math.log(4.0), math.log(4.0), points)
    if optimum.valley is None or optimum.best_value is None:
        return x, np.full(points, np.nan)
    allowed = max(TOLERATED * abs(optimum.best_value), optimum.valley.noise, 1e-300)
    costs = np.array([np.nan if c is None else min(c[0] / allowed, DIVERGES)
                      for c in map(optimum.valley.worse_by, np.exp(x))])
    measured = np.isfinite(costs)
    if not measured.any():
        return x, costs
    costs = np.interp(x, x[measured], costs[measured])
    beyond = x >= optimum.valley.cliff_x  # past a divergence: ever worse, so a fit that starts there leaves
    costs[beyond] = DIVERGES * (1.0 + (x[beyond] - optimum.valley.cliff_x) / MARGIN)
    return x, costs


def _reference(usable: list[BatchOptimum], wanted: int | None) -> BatchOptimum:
    if wanted is None:
        middle = math.exp(np.mean(np.log([o.batch_size for o in usable])))
        return min(usable, key=lambda o: abs(math.log(o.batch_size / middle)))
    for o in usable:
        if o.batch_size == wanted:
            return o
    raise InputError(f"reference batch size {wanted}: no measured optimum there; "
                     f"choose one of {', '.join(str(o.batch_size) for o in usable)}")


def _not_enough(name: str, optima: list[BatchOptimum]) -> str:
    if not any(o.n_trials for o in optima):
        return (f"study '{name}' has no finished trials with params 'batch_size' and 'lr'; "
                "run `tuner run` first")
    usable = [str(o.batch_size) for o in optima if o.usable]
    reasons = []
    for o in optima:
        if NO_COMPLETE in o.flags:
            reasons.append(f"B={o.batch_size} has no complete trial")
        elif EDGE_LOW in o.flags or EDGE_HIGH in o.flags:
            side = "lowest" if EDGE_LOW in o.flags else "highest"
            reasons.append(f"B={o.batch_size}'s best trial is the {side} LR tried (widen the LR range)")
    have = f"only at B={', '.join(usable)}" if usable else "at none"
    return (f"study '{name}': fitting a rule needs the optimal LR at {MIN_BATCH_SIZES} or more batch sizes, "
            f"found it {have}" + (f"; {'; '.join(reasons)}" if reasons else ""))


def _rule_dict(rule: Rule, batch_sizes: list[int]) -> dict:
    stats = dict(rule.stats)
    stats.pop("n_params", None)
    return {**rule.params, **stats, "formula": rule.formula(),
            "lr": [float(v) for v in np.atleast_1d(rule.predict(batch_sizes))], "n_params": rule.stats["n_params"]}


def _rule_from_dict(name: str, data: dict) -> Rule:
    keys = ("lr_max", "b_noise") if name == SATURATING else ("alpha", "lr_ref", "batch_size_ref")
    params = {k: data[k] for k in keys}
    return Rule(name, params, {k: v for k, v in data.items() if k not in keys and k not in ("lr", "formula")})


def _plain(value):
    """JSON-ready: numpy scalars to Python numbers, tuples to lists, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
