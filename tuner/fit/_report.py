"""A fit result for people: terminal text, the study note (markdown) and the exported report, all
composed of the same parts (the per-batch, rule and cost tables, the warnings)."""
from __future__ import annotations

import math
import shlex
from urllib.parse import quote

import numpy as np

from tuner.fit._frameworks import fitted_range, framework_lines
from tuner.fit._optimum import BEST_TRIAL, BEST_TRIALS
from tuner.fit._result import FitResult
from tuner.fit._rules import Rule
from tuner.fit._verdict import RULE_LABELS, alpha_interval, b_noise_interval, b_peak_interval

METHOD_NOTES = {BEST_TRIALS: "the best trials' neighbourhood (no valley fits them)",
                BEST_TRIAL: "the best trial (too few for a valley)"}


def format_fit(result: FitResult) -> str:
    """The verdict, the per-batch optima and the rule comparison, as plain text for a terminal."""
    lines = [f"study '{result.study}' ({optimized(result)}): optimal learning rate by batch size", "",
             result.verdict, "", "Per batch size (" + ("optimal lr: its trials' optimum averaged with the "
                                                      "recommended rule's; " if _pooled(result) else "")
             + "95% interval; noise: one run's standard deviation):"]
    lines += _aligned(_optima_rows(result))
    lines += ["", "Rules (fitted to each batch size's own optimum; * recommended):"]
    lines += _aligned(_rule_rows(result))
    lines += ["", ("How much worse the metric ends following each rule than at each batch size's optimum, "
                   "in the metric's units ('-': not measured there; 'diverges': a learning rate that diverged):")]
    lines += _aligned(_cost_rows(result))
    if result.critical is not None:
        lines += ["", _critical_title(result) + ":"] + _aligned(_critical_rows(result))
    if result.verify is not None:
        lines += ["", VERIFY_TITLE + ":"] + _aligned(_verify_rows(result))
    if result.warnings:
        lines += [""] + [f"! {w}" for w in result.warnings]
    return "\n".join(lines)


def format_verification(result: FitResult) -> str:
    """What `tuner verify` measured, for a terminal: its sentence and table."""
    verification = result.verify
    lines = [verification.summary or "Nothing measured yet.", "", VERIFY_TITLE + ":"]
    if verification.finished < verification.trainings:
        lines[1:1] = ["", f"{verification.finished} of {verification.trainings} trainings finished; the others "
                      "failed or still run on other machines: run `tuner verify` again to include them."]
    return "\n".join(lines + _aligned(_verify_rows(result)))


def to_markdown(result: FitResult) -> str:
    """The study note: verdict, per-batch table, rule comparison, costs, warnings."""
    return "\n\n".join([f"## Learning rate × batch size\n\n**{result.verdict}**", *_sections(result, "###"),
                        f"_tuner {result.version}, fitted {result.created}; `tuner fit` replaces this note._"])


def to_report(result: FitResult, figure_name: str | None = None, critical_figure_name: str | None = None) -> str:
    """The markdown report ``tuner export`` writes: the note's sections with what a reader outside
    the dashboard needs (scope, the figures, the rule in framework terms); ``figure_name`` and
    ``critical_figure_name``: the PNGs beside it to link (the second in its section), None for none."""
    low, high = fitted_range(result)
    n_trials = sum(o.n_trials for o in result.optima)
    study = shlex.quote(result.study)
    name = result.recommended
    verdict = result.verdict or f"Use the {RULE_LABELS[name]}: {result.rules[name].formula()}."
    done = optimized(result)
    scope = (f"{done[:1].upper()}{done[1:]}; optimal learning rate measured at {len(result.batch_sizes)} "
             f"batch sizes ({result.batch_sizes[0]}…{result.batch_sizes[-1]}, {n_trials} trials), rules fitted on "
             f"B={low}…{high}; reference batch size {result.reference_batch_size}.")
    parts = [f"# Learning rate × batch size: study `{result.study}`", scope, f"**{verdict}**"]
    if figure_name is not None:
        parts.append(f"![Optimal learning rate vs batch size, with the fitted rules]({quote(figure_name)})")
    else:
        parts.append(f"> The figure is drawn only when the report goes to a file: `tuner export {study} --format "
                     "markdown -o report.md` (with the same `--storage`) writes `report.png` beside it and "
                     "links it here.")
    parts.append("## In your training code\n" + "\n".join(f"- {line}" for line in framework_lines(result)))
    parts += _sections(result, "##", critical_figure_name)
    parts.append(f"<sub>Fitted {result.created or '(date unknown)'} by tuner {result.version or '(version unknown)'}; "
                 "after more trials, `tuner fit` and export again.</sub>")
    return "\n\n".join(parts) + "\n"


def _sections(result: FitResult, heading: str, critical_figure_name: str | None = None) -> list[str]:
    """The tables and warnings the note and the report share, under ``heading`` ("###", "##"); the
    report links the steps-against-samples PNG in its section (the note has the dashboard's figure)."""
    pooling = ("The optimum its own trials give, averaged (geometric mean) with the recommended rule's where "
               "that rule fits the batch size, and kept where its trials allow; the interval is its own "
               "trials', and the rules are fitted to their own optima.\n\n" if _pooled(result) else "")
    parts = [f"{heading} Optimal learning rate per batch size\n{pooling}" + _table(_optima_rows(result)),
             f"{heading} Rules\nFitted to the per-batch optima, weighted by their intervals; "
             "**BIC** pays for parameters (lower is better), **leave-one-out** is the typical factor by "
             "which the rule, fitted without a batch size, misses its optimum.\n\n" + _table(_rule_rows(result)),
             f"{heading} Cost of following each rule\nHow much worse the metric ends at each batch size than at "
             "its optimum, in the metric's units.\n\n" + _table(_cost_rows(result))]
    if result.critical is not None:
        figure = (f"\n\n![Steps against samples to the target, with the fitted trade-off]"
                  f"({quote(critical_figure_name)})" if critical_figure_name else "")
        parts.append(f"{heading} {_critical_title(result)}\n{CRITICAL_NOTE}\n\n" + _table(_critical_rows(result))
                     + figure)
    if result.verify is not None:
        parts.append(f"{heading} Verified at held-out batch sizes\n{VERIFY_NOTE}\n\n" + _table(_verify_rows(result)))
    if result.warnings:
        parts.append(f"{heading} Warnings\n" + "\n".join(f"- {w}" for w in result.warnings))
    return parts


VERIFY_TITLE = "Verified at held-out batch sizes (mean over seeds ± standard error; regret against the best measured)"
VERIFY_NOTE = ("Measured by `tuner verify` at batch sizes the study never searched, every learning rate with the "
               "same seeds and no pruning; the regret is how much worse the metric ends than at the best learning "
               "rate measured there (paired over seeds).")


CRITICAL_NOTE = ("Read off the learning curves: the fewest steps any run of each batch size took to reach the "
                 "target (95% interval: a bootstrap over its runs), and the fit S(B) = S_min (1 + B_crit / B). "
                 "Well below the critical batch size, doubling the batch halves the steps; past it, a larger "
                 "batch mostly costs more samples.")


def _critical_title(result: FitResult) -> str:
    critical = result.critical
    which = "the best value at least three runs of every batch size reach" if critical.default_target else "given"
    return f"Steps to reach {critical.target:.4g} ({which})"


def _critical_rows(result: FitResult) -> list[list[str]]:
    critical = result.critical
    rows = [["batch", "steps", "interval", "samples", "fitted steps", "runs read"]]
    for r in critical.batches:
        fitted = f"{critical.steps_at(r.batch_size):,.0f}" if critical.b_crit is not None else "-"
        if not r.reached:
            rows.append([str(r.batch_size), "not reached", "-", "-", fitted, str(r.n_curves)])
            continue
        steps = f"{'≤ ' * r.early}{r.steps:,.0f}"  # by the first report: no later, but when is not known
        rows.append([str(r.batch_size), steps, f"{r.steps_ci[0]:,.0f} – {r.steps_ci[1]:,.0f}",
                     f"{r.samples:,.0f}", fitted, str(r.n_curves)])
    return rows


def _verify_rows(result: FitResult) -> list[list[str]]:
    rows = [["batch", "lr", "gives", "metric", "regret", "diverged"]]
    decimals = _decimals([r.mean for b in result.verify.batches for r in b.rates if r.mean is not None])
    for batch in result.verify.batches:
        where = f"{batch.batch_size}" + (" (extrapolated)" if batch.extrapolated else "")
        for rate in batch.rates:
            n = len(rate.values) + rate.diverged
            rows.append([where, f"{rate.lr:.3g}", ", ".join(_gives(rate.labels, result.verify.recommended)),
                         _mean(rate.mean, rate.se, decimals), _regret(rate, batch.best_lr, decimals),
                         f"{rate.diverged}/{n}" if rate.diverged else ("-" if not n else "0")])
    return rows


def _gives(labels: tuple[str, ...], recommended: str) -> list[str]:
    return [f"recommended ({recommended})" if label == "recommended" else label for label in labels]


def _mean(mean: float | None, se: float | None, decimals: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{decimals}f}" + (f" ± {se:.{decimals}f}" if se else "")


def _regret(rate, best_lr: float | None, decimals: int) -> str:
    if rate.regret is None:
        return "-"
    if rate.regret == math.inf:
        return "diverges"
    if rate.lr == best_lr:
        return "best"
    se = f" ± {rate.regret_se:.{decimals}f}" if rate.regret_se else ""
    return f"{rate.regret:+.{decimals}f}{se} ({100 * rate.regret_share:.1f}%)"


def optimized(result: FitResult) -> str:
    """What the study's trials scored, as the report and the exported module say it: "metric
    minimized", or with a goal "steps to reach 0.05 minimized"."""
    done = {"minimize": "minimized", "maximize": "maximized"}.get(result.direction, result.direction)
    return f"steps to reach {result.goal:g} {done}" if result.goal is not None else f"metric {done}"


def _optima_rows(result: FitResult) -> list[list[str]]:
    pooled = _pooled(result)
    rows = [["batch", "optimal lr", *(["its trials alone"] if pooled else []), "interval", "noise", "trials",
             "complete", "pruned", "diverged", "notes"]]
    for o in result.optima:
        interval = f"{o.ci[0]:.3g} – {o.ci[1]:.3g}" if o.ci else "-"
        notes = [*o.flags, *([METHOD_NOTES[o.method]] if o.method in METHOD_NOTES else [])]
        own = o.own_lr or o.lr
        rows.append([str(o.batch_size), f"{o.lr:.3g}" if o.lr else "-",
                     *([f"{own:.3g}" if own else "-"] if pooled else []), interval,
                     f"{o.noise:.2g}" if o.noise is not None else "-", str(o.n_trials),
                     str(o.n_complete), str(o.n_pruned), str(o.n_diverged), ", ".join(notes)])
    return rows


def _pooled(result: FitResult) -> bool:
    """Whether any batch size's learning rate to use averages its own optimum with the rule's (a fit
    stored by an earlier version never does)."""
    return any(o.own_lr is not None for o in result.optima)


def _rule_rows(result: FitResult) -> list[list[str]]:
    rows = [["rule", "formula", "BIC", "AIC", "leave-one-out", "worst miss", "notes"]]
    for name, rule in result.rules.items():  # a fit stored before a rule existed has none
        rows.append([name + ("*" if name == result.recommended else ""), rule.formula(), f"{rule.bic:.1f}",
                     f"{rule.aic:.1f}", f"×{rule.lobo_error:.2f}" if rule.lobo_error else "-",
                     f"×{rule.max_factor:.2f}", _rule_note(rule)])
    return rows


def _rule_note(rule: Rule) -> str:
    if rule.alpha_ci:
        return f"α {alpha_interval(rule)}"
    if rule.b_noise_ci:
        return f"B_noise {b_noise_interval(rule)}"
    if rule.b_peak_ci:
        return f"B_peak {b_peak_interval(rule)}"
    return ""


def _cost_rows(result: FitResult) -> list[list[str]]:
    rows = [["batch", *(n + ("*" if n == result.recommended else "") for n in result.rules)]]
    decimals = _decimals([o.best_value for o in result.optima if o.best_value is not None])
    for i, b in enumerate(result.batch_sizes):
        rows.append([str(b)] + [_cost(rule, i, decimals) for rule in result.rules.values()])
    return rows


def _decimals(values: list[float]) -> int:
    """Decimals that show the metric to about three significant figures of its best values."""
    scale = float(np.median(np.abs(values))) if values else 1.0
    return max(0, 2 - math.floor(math.log10(scale))) if scale > 0 else 3


def _cost(rule: Rule, i: int, decimals: int) -> str:
    if rule.diverges[i]:
        return "diverges"
    cost, se = rule.metric_cost[i], rule.metric_cost_se[i] if rule.metric_cost_se else None
    if cost is None:
        return "-"
    return f"+{cost:.{decimals}f}" + (f" ± {se:.{decimals}f}" if se else "")


def _aligned(rows: list[list[str]]) -> list[str]:
    """Plain-text columns: numbers right-aligned, text left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = [all(_numeric(row[i]) for row in rows[1:]) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.rjust(w) if num else cell.ljust(w)
                             for cell, w, num in zip(row, widths, numeric)).rstrip() for row in rows]


def _numeric(cell: str) -> bool:
    if cell in ("-", "diverges"):
        return True
    try:
        float(cell.lstrip("+×").rstrip("*"))
        return True
    except ValueError:
        return False


def _table(rows: list[list[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell or " " for cell in row) + " |" for row in body])
