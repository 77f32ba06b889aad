"""Which rule to use over which batch range, with numbers a person can act on.

The recommendation is the rule with the lowest BIC; rules within ``BIC_TIE`` of it count as just as
good, and of those the ones that lose about the least metric at their worst batch size measured
(within 2% of the metric, or twice it) are kept; of those the one with the lowest BIC wins, unless
a rule it holds as a special case (the power law at α = ½ is the square-root rule) is kept too: then
that one, which people know and the data cannot tell apart from it. A simpler rule of another family
does not overrule a better fit: preferred for its single parameter over every rule within ``BIC_TIE``,
the square-root rule was recommended where a saturating rule fitted better (the momentum MLP, 3 of 40
replayed seeds: 30% of the loss lost at B=8).
"""
from __future__ import annotations

import math

import numpy as np

from tuner.fit._optimum import (
    EDGE_HIGH,
    EDGE_LOW,
    FEW_TRIALS,
    INFEASIBLE,
    LUCKY_EDGE,
    NO_COMPLETE,
    NO_SIGNAL,
    NO_VALLEY,
    TOLERATED,
    BatchOptimum,
)
from tuner.fit._rules import FIXED_ALPHA, LINEAR, POWER, SATURATING, SPECIAL_CASES, SQRT, SURGE, Rule

BIC_TIE = 2.0      # "positive evidence" on the usual BIC scale (Kass & Raftery 1995)
TOLERANCE = 1.25   # a simpler rule "holds" where it is within this factor of the fitted one
COSTLY = 0.10      # following the recommended rule may lose this share of the metric before the verdict warns
RULE_LABELS = {LINEAR: "linear rule", SQRT: "square-root rule", POWER: "power law", SATURATING: "saturating rule",
               SURGE: "surge rule"}


def recommend(rules: dict[str, Rule], optima: list[BatchOptimum] | None = None) -> str:
    """Among the rules the data cannot tell apart (within BIC_TIE of the best), those that lose about
    the least metric at their worst batch size measured (within TOLERATED of it, or twice it); of
    those the one with the lowest BIC, or the best of its special cases among them (``SPECIAL_CASES``)
    where the data cannot tell the two apart: its 95% interval reaches the special case
    (``Rule.holds``). Otherwise the verdict would call α "neither linear nor square-root" and recommend
    the square-root rule as the power law's special case all the same. Without ``optima``, no costs."""
    best = min(rule.bic for rule in rules.values())
    close = [name for name, rule in rules.items() if rule.bic <= best + BIC_TIE]
    worst = {name: _worst_cost(rules[name], optima) for name in close}
    least = min(worst.values())
    cheap = [name for name in close if worst[name] <= max(least + TOLERATED, 2 * least)]
    chosen = min(cheap, key=lambda name: rules[name].bic)
    simpler = [name for name in cheap if name in SPECIAL_CASES.get(chosen, ()) and rules[chosen].holds(name)]
    return min(simpler, key=lambda name: rules[name].bic) if simpler else chosen


def _worst_cost(rule: Rule, optima: list[BatchOptimum] | None) -> float:
    """What following the rule costs at its worst batch size measured, as a share of the metric there
    (inf where it diverges; 0 without costs). The point cost, not a bound less its noise: near a
    cliff a cost is uncertain because it is large, and discounting it chose a rule that diverged."""
    if optima is None:
        return 0.0
    if any(rule.diverges):
        return math.inf
    return max((cost / abs(o.best_value) for cost, o in zip(rule.metric_cost, optima)
                if cost is not None and o.best_value), default=0.0)


def following(rule: Rule, optima: list[BatchOptimum]) -> dict:
    """Per batch size, what following ``rule`` gives: its learning rate, how much worse the metric ends
    than at the optimum (metric units, with a standard error; None where not measured), whether its
    LR is one that diverged; and the largest factor between it and a measured optimum."""
    lrs = [float(lr) for lr in np.atleast_1d(rule.predict([o.batch_size for o in optima]))]
    costs = [o.valley.worse_by(lr) if o.valley is not None else None for o, lr in zip(optima, lrs)]
    measured = [None if c is None or c[0] == math.inf else c for c in costs]
    return {"lr": lrs, "metric_cost": [c and c[0] for c in measured], "metric_cost_se": [c and c[1] for c in measured],
            "diverges": [c is not None and c[0] == math.inf for c in costs],
            "max_factor": max(_factor(lr, o.lr) for o, lr in zip(optima, lrs) if o.usable)}


def anchored(rule_name: str, reference: BatchOptimum, batch_sizes: list[int]) -> list[float]:
    """The linear or square-root rule as people use it: scaled from the optimum at one batch size."""
    alpha = FIXED_ALPHA[rule_name]
    return [reference.lr * (b / reference.batch_size) ** alpha for b in batch_sizes]


def regimes(rule: Rule) -> tuple[float, float]:
    """Batch sizes below which the saturating rule is within TOLERANCE of linear scaling, and above
    which it is within TOLERANCE of its plateau lr_max."""
    b_noise = rule.b_noise
    return b_noise * (TOLERANCE - 1.0), b_noise / (TOLERANCE - 1.0)


def write_verdict(rules: dict[str, Rule], recommended: str, optima: list[BatchOptimum],
                  reference: BatchOptimum) -> str:
    rule = rules[recommended]
    batch_sizes = [o.batch_size for o in optima]
    rivals = [name for name, rival in rules.items() if name != recommended and rival.bic <= rule.bic + BIC_TIE]
    parts = [f"Use the {RULE_LABELS[recommended]}: {rule.formula(digits=3)}."]
    if recommended == SATURATING:
        parts.append(_saturation(rule, rules[POWER], batch_sizes, power_is_rival=POWER in rivals))
    elif recommended == SURGE:
        parts.append(_surge(rule, batch_sizes))
    else:
        parts.append(_exponent(rules[POWER], rules[SATURATING], recommended))
    parts += [_rival(rules[name], rule) for name in rivals]
    parts.append(_cost(rule, optima))
    parts.append(_anchored_misses(rule, reference, optima, recommended))
    silent = [str(o.batch_size) for o in optima if NO_SIGNAL in o.flags]
    if silent:
        parts.append(f"No signal at B={', '.join(silent)}: no learning rate there did better than the others "
                     "beyond noise; train longer there or widen the LR range (left out of the rules).")
    return " ".join(p for p in parts if p)


def _saturation(rule: Rule, power: Rule, batch_sizes: list[int], power_is_rival: bool) -> str:
    linear_to, flat_from = regimes(rule)
    beyond = " (beyond the batch sizes measured)"
    text = (f"Linear scaling holds (within ×{TOLERANCE:g}) up to B≈{format_batch_size(linear_to)}"
            f"{beyond if linear_to < batch_sizes[0] else ''}; from B≈{format_batch_size(flat_from)}"
            f"{beyond if flat_from > batch_sizes[-1] else ''} the optimum is flat at lr≈{rule.lr_max:.3g}; "
            f"the bend, B_noise, is at B≈{format_batch_size(rule.b_noise)} ({b_noise_interval(rule)}).")
    alpha = power.alpha
    if 0.0 < alpha < 1.0 and not power_is_rival:
        text += (f" A single power law would give α={alpha:.2f} across B={batch_sizes[0]}…{batch_sizes[-1]}: "
                 "the in-between slope of a curve that bends, not evidence for the square-root rule.")
    return text


def _surge(rule: Rule, batch_sizes: list[int]) -> str:
    """Where the optimum peaks and how far it falls past the peak within the batch sizes measured."""
    b_peak, interval = rule.b_peak, b_peak_interval(rule)
    if b_peak >= batch_sizes[-1]:
        return (f"The optimum still rises at B={batch_sizes[-1]}: its peak, lr≈{rule.lr_peak:.3g} at "
                f"B≈{format_batch_size(b_peak)} ({interval}), lies beyond the batch sizes measured.")
    fall = _factor(rule.lr_peak, rule.predict(batch_sizes[-1]))
    peak = f"B≈{format_batch_size(b_peak)} ({interval})"
    rises = (f"rises with the batch size up to {peak}, where lr≈{rule.lr_peak:.3g}, " if b_peak > batch_sizes[0]
             else f"peaks at or below B={batch_sizes[0]} ({peak}) ")
    unbounded = (" The interval does not bound the peak: more batch sizes on either side of it would."
                 if None in rule.b_peak_ci else "")
    return (f"The optimum {rises}and falls past it: at B={batch_sizes[-1]} it is ×{fall:.2g} below the peak, "
            f"so a larger batch needs a smaller learning rate there.{unbounded}")


def _rival(rival: Rule, chosen: Rule) -> str:
    """A rule the data cannot tell from the recommended one."""
    extra = (f" (α {alpha_interval(rival)})" if rival.alpha_ci
             else f" (B_peak {b_peak_interval(rival)})" if rival.b_peak_ci else "")
    return (f"The {RULE_LABELS[rival.name]} fits about as well (BIC {rival.bic:.1f} against "
            f"{chosen.bic:.1f}): {rival.formula(digits=3)}{extra}; more batch sizes or trials "
            "would tell them apart.")


def _exponent(power: Rule, saturating: Rule, recommended: str) -> str:
    alpha, (low, high) = power.alpha, power.alpha_ci
    agree = [label for label, a in (("the linear rule", 1.0), ("the square-root rule", 0.5),
                                    ("a learning rate that does not depend on the batch size", 0.0))
             if low <= a <= high]
    text = (f"The fitted exponent is α={alpha:.2f} ({alpha_interval(power)}): "
            + (f"consistent with {' and with '.join(agree)}." if agree
               else "neither linear (α=1) nor square-root (α=0.5) scaling."))
    if recommended in FIXED_ALPHA and not power.holds(recommended):
        # recommend() keeps only the rules that cost about the least to follow, and of those the lowest
        # BIC, which can be a fixed exponent outside the power law's interval: say so, or the verdict
        # reads as recommending a rule its own interval rules out
        text += (f" The {RULE_LABELS[recommended]} is recommended all the same: the data cannot tell it from "
                 "the rules that fit better, or those cost more to follow.")
    floor = saturating.b_noise_ci[0]
    if recommended == LINEAR and floor is not None:
        text += f" No saturation is seen: B_noise is above B≈{format_batch_size(floor)} (95%)."
    return text


def _cost(rule: Rule, optima: list[BatchOptimum]) -> str:
    """What following the rule costs at its worst batch size measured. "Nothing measurable" only where
    that cost is within twice its standard error and within TOLERATED of the metric there: a cost of
    half the loss is not nothing because one run's noise is as large (the momentum MLP, B=8: the
    square-root rule's 0.015 ± 0.008 was 52% of the loss, and the verdict called it free)."""
    errors = rule.metric_cost_se or [None] * len(rule.metric_cost)  # fits stored by earlier versions have none
    costs = [(c, se or 0.0, o) for c, se, o in zip(rule.metric_cost, errors, optima) if c is not None]
    if any(rule.diverges):
        where = [str(o.batch_size) for o, d in zip(optima, rule.diverges) if d]
        return f"Careful: at B={', '.join(where)} its learning rate is one that diverged."
    if not costs:
        return ""
    worst, se, at = max(costs, key=lambda cost: cost[0])
    share = worst / abs(at.best_value) if at.best_value else math.inf
    if worst < 1e-12 or (worst <= 2 * se and share <= TOLERATED):
        return "Following it costs nothing measurable against each batch size's optimum (within noise)."
    relative = f", {share:.0%} of the metric there" if math.isfinite(share) else ""
    noisy = "; within twice its standard error, so the runs cannot tell it from nothing" if worst <= 2 * se else ""
    return (f"Following it costs at most {worst:.2g} ± {se:.1g} in the metric (at B={at.batch_size}{relative}"
            f"{noisy}) against each batch size's optimum.")


def _anchored_misses(rule: Rule, reference: BatchOptimum, optima: list[BatchOptimum], recommended: str) -> str:
    """How far the textbook rules, scaled from the reference batch size, land from the recommendation."""
    batch_sizes = [o.batch_size for o in optima]
    target = np.atleast_1d(rule.predict(batch_sizes))
    misses = []
    for name in (LINEAR, SQRT):
        if name == recommended:
            continue
        lrs = anchored(name, reference, batch_sizes)
        worst = int(np.argmax(np.abs(np.log(np.asarray(lrs) / target))))
        factor = _factor(lrs[worst], target[worst])
        if factor >= TOLERANCE:
            valley = optima[worst].valley
            diverges = valley is not None and valley.worse_by(lrs[worst]) == (math.inf, 0.0)
            misses.append(f"the {RULE_LABELS[name]} would {'over' if lrs[worst] > target[worst] else 'under'}"
                          f"-shoot ×{factor:.1f} at B={batch_sizes[worst]}{' and diverge' if diverges else ''}")
    if not misses:
        return ""
    return f"Scaled from B={reference.batch_size} (lr={reference.lr:.3g}), " + "; ".join(misses) + "."


def warnings_for(optima: list[BatchOptimum], lr_range: tuple[float, float]) -> list[str]:
    """What to do about batch sizes whose optimum is uncertain or missing."""
    notes = []
    for o in optima:
        if INFEASIBLE in o.flags:
            notes.append(f"B={o.batch_size}: ran out of memory, so it was not searched further "
                         "(left out of the rules; they are not measured there).")
        elif NO_COMPLETE in o.flags:
            notes.append(f"B={o.batch_size}: no complete trial; run more trials (left out of the rules).")
        if EDGE_LOW in o.flags:
            notes.append(f"B={o.batch_size}: the best trial (lr={o.best_lr:.3g}) is the lowest LR tried, so the "
                         f"optimum may lie lower: widen the LR range below {lr_range[0]:.3g} (left out of the rules).")
        if EDGE_HIGH in o.flags:
            notes.append(f"B={o.batch_size}: the best trial (lr={o.best_lr:.3g}) is the highest LR tried, so the "
                         f"optimum may lie higher: widen the LR range above {lr_range[1]:.3g} (left out of the rules).")
        if NO_SIGNAL in o.flags:
            notes.append(f"B={o.batch_size}: no signal: no learning rate did better than the others beyond noise, "
                         "or the best run was no better than the untrained model, so its optimum cannot be read "
                         "off (left out of the rules). Train longer at this batch size (a larger budget), or widen "
                         "the LR range.")
        if NO_VALLEY in o.flags:
            notes.append(f"B={o.batch_size}: no valley: the learning rates tried either side of the best one "
                         f"(lr={o.best_lr:.3g}) all did far worse and the runs rise and fall again beyond them, "
                         "so its optimum rests on that one learning rate's runs, which may be a lucky seed "
                         "(left out of the rules). Run more trials: raise n_trials and run the study again.")
        if LUCKY_EDGE in o.flags:
            notes.append(f"B={o.batch_size}: lucky edge: its best run was the last that trained below a divergence "
                         "and did better than the runs below it by more than noise explains: a lucky survivor where "
                         "some runs blow up. It is counted as a run that blew up, and the optimum is read from the "
                         "runs below it; do not use a learning rate that high at this batch size.")
        if not o.usable and o.own_lr is not None:
            notes.append(f"B={o.batch_size}: its trials cannot place the optimum, so the learning rate to use there, "
                         f"lr={o.lr:.3g}, is moved from its own trials' {o.own_lr:.3g} to the recommended rule's, "
                         "as far as its runs allow.")
        if FEW_TRIALS in o.flags:
            notes.append(f"B={o.batch_size}: only {o.n_complete} complete trial{'s' * (o.n_complete != 1)}, "
                         "so its interval is rough: run more trials.")
    return notes


def plateau_warnings(rule: Rule, optima: list[BatchOptimum]) -> list[str]:
    """The saturating rule's plateau lr_max is an extrapolation: say so where it reaches a learning
    rate that diverged at the largest batch size with a divergence (the closest to the plateau)."""
    cliffs = [(o.batch_size, math.exp(o.valley.cliff_x)) for o in optima
              if o.valley is not None and math.isfinite(o.valley.cliff_x)]
    if rule.name != SATURATING or not cliffs:
        return []
    batch_size, cliff = max(cliffs)
    if rule.lr_max < cliff:
        return []
    return [f"The plateau lr_max={rule.lr_max:.3g} is an extrapolation: lr={cliff:.3g} already "
            f"diverged at B={batch_size}. Above the batch sizes measured, keep the learning rate below "
            f"{cliff:.3g}."]


def costly_warnings(rules: dict[str, Rule], recommended: str, optima: list[BatchOptimum]) -> list[str]:
    """Where following the recommended rule loses more than COSTLY of the metric at a batch size
    measured, beyond twice its standard error (or diverges): no rule form fits the optima there, and
    that batch size's own optimum is the safer learning rate. Says how much the best rule would lose
    there too."""
    notes = []
    for i, o in enumerate(optima):
        lost = {name: _share(rule, i, o) for name, rule in rules.items()}
        if o.lr is None or not clearly_costly(rules[recommended], i, o):
            continue
        least = min((v for v in lost.values() if v is not None), default=lost[recommended])
        others = "every rule diverges there" if least == math.inf else f"the least any rule loses there is {least:.0%}"
        loses = "diverges" if lost[recommended] == math.inf else f"loses {lost[recommended]:.0%} of the metric"
        notes.append(f"B={o.batch_size}: following the {RULE_LABELS[recommended]} {loses} ({others}); use "
                     f"that batch size's own optimum, lr={o.lr:.3g}, and check other batch sizes with `tuner verify`.")
    return notes


def clearly_costly(rule: Rule, i: int, optimum: BatchOptimum) -> bool:
    """Following ``rule`` at the i-th batch size loses more than COSTLY of the metric beyond twice its
    standard error, or diverges: its form does not fit that batch size."""
    share = _share(rule, i, optimum, -2.0)
    return share is not None and share > COSTLY


def _share(rule: Rule, i: int, optimum: BatchOptimum, errors: float = 0.0) -> float | None:
    """What following ``rule`` loses at the i-th batch size (plus ``errors`` standard errors), as a
    share of its best value (inf: diverges)."""
    if rule.diverges[i]:
        return math.inf
    cost, se = rule.metric_cost[i], (rule.metric_cost_se[i] if rule.metric_cost_se else None) or 0.0
    return None if cost is None or not optimum.best_value else (cost + errors * se) / abs(optimum.best_value)


def alpha_interval(rule: Rule) -> str:
    """The power law's 95% interval of its exponent, as the verdict and the rule table say it."""
    return f"95% CI {rule.alpha_ci[0]:.2f} to {rule.alpha_ci[1]:.2f}"


def b_noise_interval(rule: Rule) -> str:
    """The saturating rule's 95% interval of B_noise, as the verdict and the rule table say it."""
    return interval_text(rule.b_noise_ci)


def b_peak_interval(rule: Rule) -> str:
    """The surge rule's 95% interval of B_peak, as the verdict and the rule table say it."""
    return interval_text(rule.b_peak_ci)


def interval_text(ends: tuple[float | None, float | None]) -> str:
    low, high = ends
    return f"95% CI {f'{low:.3g}' if low else '0'} to {f'{high:.3g}' if high else '∞'}"


def _factor(a: float, b: float) -> float:
    return math.exp(abs(math.log(a / b)))


def format_batch_size(value: float) -> str:
    """A batch size as people say it: a whole number from 10 up, two significant figures below."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"
