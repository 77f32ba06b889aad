"""A fit result for people: terminal text, a markdown note and a figure for optuna-dashboard."""
from __future__ import annotations

import math

import numpy as np

from tuner.fit._optimum import BEST_TRIAL, BEST_TRIALS
from tuner.fit._result import FitResult
from tuner.fit._rules import LINEAR, RULE_NAMES, SATURATING, SQRT, Rule

METHOD_NOTES = {BEST_TRIALS: "the best trials' neighbourhood (no valley fits them)",
                BEST_TRIAL: "the best trial (too few for a valley)"}
RULE_COLORS = {LINEAR: "#1f77b4", SQRT: "#2ca02c", "power": "#9467bd", SATURATING: "#d62728"}


def format_fit(result: FitResult) -> str:
    """The verdict, the per-batch optima and the rule comparison, as plain text for a terminal."""
    lines = [f"study '{result.study}' ({result.direction}): optimal learning rate by batch size", "",
             result.verdict, "", "Per batch size (95% interval; noise: one run's standard deviation):"]
    lines += _aligned(_optima_rows(result))
    lines += ["", "Rules (fitted to the optima above; * recommended):"]
    lines += _aligned(_rule_rows(result))
    lines += ["", ("How much worse the metric ends following each rule than at each batch size's optimum, "
                   "in the metric's units ('-': not measured there; 'diverges': a learning rate that diverged):")]
    lines += _aligned(_cost_rows(result))
    if result.warnings:
        lines += [""] + [f"! {w}" for w in result.warnings]
    return "\n".join(lines)


def to_markdown(result: FitResult) -> str:
    """The study note: verdict, per-batch table, rule comparison."""
    parts = [f"## Learning rate × batch size\n\n**{result.verdict}**",
             "### Optimal learning rate per batch size\n" + _table(_optima_rows(result)),
             "### Rules\nFitted to the per-batch optima, weighted by their intervals; "
             "**BIC** pays for parameters (lower is better), **leave-one-out** is the typical factor by "
             "which the rule, fitted without a batch size, misses its optimum.\n\n" + _table(_rule_rows(result)),
             "### Cost of following each rule\nHow much worse the metric ends at each batch size than at "
             "its optimum, in the metric's units.\n\n" + _table(_cost_rows(result))]
    if result.warnings:
        parts.append("### Warnings\n" + "\n".join(f"- {w}" for w in result.warnings))
    parts.append(f"_tuner {result.version}, fitted {result.created}; `tuner fit` replaces this note._")
    return "\n\n".join(parts)


def make_figure(result: FitResult):
    """Per-batch optima with intervals on log-log axes, the fitted rules, and the linear and
    square-root rules scaled from the reference batch size."""
    import plotly.graph_objects as go

    figure = go.Figure()
    measured = [o for o in result.optima if o.lr is not None]
    for usable, label, symbol in ((True, "optimum (95% interval)", "circle"),
                                  (False, "optimum at the edge of the LR range", "circle-open")):
        points = [o for o in measured if o.usable == usable]
        if points:
            figure.add_trace(go.Scatter(
                x=[o.batch_size for o in points], y=[o.lr for o in points], mode="markers", name=label,
                marker={"size": 9, "symbol": symbol, "color": "black"},
                error_y={"type": "data", "symmetric": False, "array": [o.ci[1] - o.lr for o in points],
                         "arrayminus": [o.lr - o.ci[0] for o in points]}))
    low, high = min(result.batch_sizes) / 1.5, max(result.batch_sizes) * 1.5
    grid = np.geomspace(low, high, 200)
    for name in RULE_NAMES:  # short legend names: the formula is in the hover text
        rule, best = result.rules[name], name == result.recommended
        figure.add_trace(go.Scatter(
            x=grid, y=rule.predict(grid), mode="lines", name=f"{name}{' (recommended)' if best else ''}",
            hovertemplate=f"{rule.formula(digits=3)}<br>B=%{{x:.0f}}: lr=%{{y:.3g}}<extra></extra>",
            line={"color": RULE_COLORS[name], "width": 3 if best else 1.5, "dash": "solid" if best else "dot"}))
    for name in (LINEAR, SQRT):
        figure.add_trace(go.Scatter(
            x=result.batch_sizes, y=result.rules[name].anchored_lr, mode="lines",
            name=f"{name} from B={result.reference_batch_size}",
            line={"color": RULE_COLORS[name], "dash": "dash"}))
    critical = result.critical_batch_size
    if critical and low <= critical <= high:
        figure.add_vline(x=critical, line={"color": RULE_COLORS[SATURATING], "width": 1, "dash": "dot"})
        # on a log axis an annotation's x is log10 of the data value (add_vline's own label is not)
        figure.add_annotation(x=math.log10(critical), y=1, yref="paper", yanchor="bottom", showarrow=False,
                              text=f"B_noise≈{critical:.3g}")
    figure.update_layout(title=f"Optimal learning rate vs batch size: {result.study}", template="plotly_white",
                         xaxis={"type": "log", "title": "batch size"}, yaxis={"type": "log", "title": "learning rate"},
                         margin={"t": 60, "r": 10}, legend={"font": {"size": 11}})
    return figure


def _optima_rows(result: FitResult) -> list[list[str]]:
    rows = [["batch", "optimal lr", "interval", "noise", "trials", "complete", "pruned", "diverged", "notes"]]
    for o in result.optima:
        interval = f"{o.ci[0]:.3g} – {o.ci[1]:.3g}" if o.ci else "-"
        notes = [*o.flags, *([METHOD_NOTES[o.method]] if o.method in METHOD_NOTES else [])]
        rows.append([str(o.batch_size), f"{o.lr:.3g}" if o.lr else "-", interval,
                     f"{o.noise:.2g}" if o.noise is not None else "-", str(o.n_trials),
                     str(o.n_complete), str(o.n_pruned), str(o.n_diverged), ", ".join(notes)])
    return rows


def _rule_rows(result: FitResult) -> list[list[str]]:
    rows = [["rule", "formula", "BIC", "AIC", "leave-one-out", "worst miss", "notes"]]
    for name in RULE_NAMES:
        rule = result.rules[name]
        rows.append([name + ("*" if name == result.recommended else ""), rule.formula(), f"{rule.bic:.1f}",
                     f"{rule.aic:.1f}", f"×{rule.lobo_error:.2f}" if rule.lobo_error else "-",
                     f"×{rule.max_factor:.2f}", _rule_note(rule)])
    return rows


def _rule_note(rule: Rule) -> str:
    if rule.alpha_ci:
        low, high = rule.alpha_ci
        return f"α 95% CI {low:.2f} to {high:.2f}"
    if rule.b_noise_ci:
        low, high = rule.b_noise_ci
        return f"B_noise 95% CI {f'{low:.3g}' if low else '0'} to {f'{high:.3g}' if high else '∞'}"
    return ""


def _cost_rows(result: FitResult) -> list[list[str]]:
    rows = [["batch", *(n + ("*" if n == result.recommended else "") for n in RULE_NAMES)]]
    decimals = _decimals([o.best_value for o in result.optima if o.best_value is not None])
    for i, b in enumerate(result.batch_sizes):
        rows.append([str(b)] + [_cost(result.rules[n], i, decimals) for n in RULE_NAMES])
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
