"""The fit's figure, defined once (``figure_series``) and drawn two ways: with plotly for
optuna-dashboard (``make_figure``) and with matplotlib as the PNG beside an exported report
(``save_png``: no browser, no display); and the second figure, steps against samples to a target
(``make_critical_figure``, for optuna-dashboard)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuner.errors import InputError
from tuner.fit._result import FitResult
from tuner.fit._rules import LINEAR, POWER, SATURATING, SQRT, SURGE

RULE_COLORS = {LINEAR: "#1f77b4", SQRT: "#2ca02c", POWER: "#9467bd", SATURATING: "#d62728", SURGE: "#8c564b"}
MISSING_COLOR = "#999999"
VERIFIED_COLOR = "#ff7f0e"
VERIFIED_LABEL = "best measured at a held-out batch size (tuner verify)"
OWN_COLOR = "#7f7f7f"
OWN_LABEL = "its trials alone (before the rule's average)"
RANGE = 1.5  # the x axis reaches this factor beyond the batch sizes measured


@dataclass(frozen=True)
class Optima:
    """Per-batch optima with their 95% intervals."""

    label: str
    usable: bool  # fitted by the rules (filled markers) or left out (open ones)
    batch_sizes: list[int]
    lr: list[float]
    low: list[float]
    high: list[float]


@dataclass(frozen=True)
class Curve:
    """A rule's learning rate across batch sizes."""

    name: str
    label: str
    formula: str
    x: np.ndarray
    y: np.ndarray
    color: str
    style: str    # "solid", "dot" or "dash"
    width: float


@dataclass(frozen=True)
class FigureSeries:
    title: str
    x_range: tuple[float, float]
    batch_sizes: list[int]
    optima: list[Optima]
    missing: list[int]         # batch sizes without a complete trial
    curves: list[Curve]
    bends: list[tuple[float, str, str]]  # (batch size, label, color): B_noise, and B_peak where it is measured
    verified: list[tuple[int, float]] = ()  # held-out batch sizes and the best LR `tuner verify` measured
    own: list[tuple[int, float]] = ()  # batch sizes whose optimum averages their own with the rule's: their own


def figure_series(result: FitResult) -> FigureSeries:
    """What the figure shows: per-batch optima with intervals on log-log axes (those left out of the
    rules apart), each one's own where it averages its own with the recommended rule's, the batch
    sizes without a complete trial, the fitted rules (the recommended one bold), the linear and
    square-root rules scaled from the reference batch size, B_noise (and the surge rule's B_peak,
    where the batch sizes measured surround it), and the best learning rates `tuner verify` measured
    at held-out batch sizes."""
    verified = [(b.batch_size, b.best_lr) for b in result.verify.batches if b.best_lr] if result.verify else []
    shown = [*result.batch_sizes, *(b for b, _ in verified)]
    low, high = min(shown) / RANGE, max(shown) * RANGE
    measured = [o for o in result.optima if o.lr is not None]
    optima = []
    for usable, label in ((True, "optimum (95% interval)"), (False, "optimum left out of the rules (see its flags)")):
        points = [o for o in measured if o.usable == usable]
        if points:
            optima.append(Optima(label, usable, [o.batch_size for o in points], [o.lr for o in points],
                                 [o.ci[0] for o in points], [o.ci[1] for o in points]))
    grid = np.geomspace(low, high, 200)
    curves = []
    for name, rule in result.rules.items():  # a fit stored before a rule existed has none
        best = name == result.recommended
        curves.append(Curve(name, f"{name}{' (recommended)' if best else ''}", rule.formula(digits=3), grid,
                            np.asarray(rule.predict(grid)), RULE_COLORS[name], "solid" if best else "dot",
                            2.5 if best else 1.2))
    for name in (LINEAR, SQRT):
        scaled = result.rules[name].anchored_lr
        if scaled:
            curves.append(Curve(f"{name}-scaled", f"{name} rule scaled from B={result.reference_batch_size}",
                                "", np.asarray(result.batch_sizes, float), np.asarray(scaled), RULE_COLORS[name],
                                "dash", 1.0))
    return FigureSeries(
        title=f"Optimal learning rate vs batch size: {result.study}", x_range=(low, high),
        batch_sizes=list(result.batch_sizes), optima=optima,
        missing=[o.batch_size for o in result.optima if o.lr is None], curves=curves,
        bends=_bends(result, (low, high)), verified=verified,
        own=[(o.batch_size, o.own_lr) for o in result.optima if o.own_lr is not None])


def _bends(result: FitResult, x_range: tuple[float, float]) -> list[tuple[float, str, str]]:
    """B_noise where it is inside the axis; B_peak where it lies between batch sizes measured (beyond
    them the surge rule has no peak to show)."""
    bends = []
    b_noise = result.critical_batch_size
    if b_noise and x_range[0] <= b_noise <= x_range[1]:
        bends.append((b_noise, f"B_noise≈{b_noise:.3g}", RULE_COLORS[SATURATING]))
    surge = result.rules.get(SURGE)
    if surge is not None and result.batch_sizes[0] < surge.b_peak < result.batch_sizes[-1]:
        bends.append((surge.b_peak, f"B_peak≈{surge.b_peak:.3g}", RULE_COLORS[SURGE]))
    return bends


def make_figure(result: FitResult):
    """The figure as a plotly Figure (optuna-dashboard shows it beside the study)."""
    import plotly.graph_objects as go

    series = figure_series(result)
    figure = go.Figure()
    for points in series.optima:
        lr = np.asarray(points.lr)
        figure.add_trace(go.Scatter(
            x=points.batch_sizes, y=points.lr, mode="markers", name=points.label,
            marker={"size": 9, "symbol": "circle" if points.usable else "circle-open", "color": "black"},
            error_y={"type": "data", "symmetric": False, "array": np.asarray(points.high) - lr,
                     "arrayminus": lr - np.asarray(points.low)}))
    if series.own:
        sizes, lrs = zip(*series.own)
        figure.add_trace(go.Scatter(x=sizes, y=lrs, mode="markers", name=OWN_LABEL,
                                    hovertemplate="B=%{x}: its trials alone, lr %{y:.3g}<extra></extra>",
                                    marker={"size": 8, "symbol": "x-thin-open", "color": OWN_COLOR}))
    if series.verified:
        sizes, lrs = zip(*series.verified)
        figure.add_trace(go.Scatter(x=sizes, y=lrs, mode="markers", name=VERIFIED_LABEL,
                                    hovertemplate="held out: B=%{x}, best lr %{y:.3g}<extra></extra>",
                                    marker={"size": 11, "symbol": "diamond", "color": VERIFIED_COLOR}))
    for curve in series.curves:  # short legend names: the formula is in the hover text
        hover = f"{curve.formula}<br>" if curve.formula else ""
        figure.add_trace(go.Scatter(
            x=curve.x, y=curve.y, mode="lines", name=curve.label,
            hovertemplate=f"{hover}B=%{{x:.0f}}: lr=%{{y:.3g}}<extra></extra>",
            line={"color": curve.color, "width": 1.2 * curve.width, "dash": curve.style}))  # px, not pt
    for b in series.missing:
        figure.add_vline(x=b, line={"color": MISSING_COLOR, "width": 1, "dash": "dot"})
        figure.add_annotation(x=np.log10(b), y=0, yref="paper", yanchor="bottom", showarrow=False, textangle=-90,
                              text="no complete trial", font={"size": 10, "color": MISSING_COLOR})
    for x, text, color in series.bends:
        figure.add_vline(x=x, line={"color": color, "width": 1, "dash": "dot"})
        # on a log axis an annotation's x is log10 of the data value (add_vline's own label is not)
        figure.add_annotation(x=np.log10(x), y=1, yref="paper", yanchor="bottom", showarrow=False, text=text)
    figure.update_layout(title=series.title, template="plotly_white",
                         xaxis={"type": "log", "title": "batch size"}, yaxis={"type": "log", "title": "learning rate"},
                         margin={"t": 60, "r": 10}, legend={"font": {"size": 11}})
    return figure


MATPLOTLIB_STYLES = {"solid": "-", "dot": ":", "dash": "--"}


def save_png(result: FitResult, path: Path) -> None:
    """The figure drawn with matplotlib into ``path`` (PNG)."""
    png_figure(result).savefig(path, format="png", dpi=110, metadata={"Software": None})


def png_figure(result: FitResult):
    """The figure as a matplotlib Figure (Agg: no display needed)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("the markdown report's figure needs matplotlib: pip install matplotlib") from None

    series = figure_series(result)
    figure = Figure(figsize=(8.5, 7.0), layout="constrained")
    ax = figure.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    for points in series.optima:
        lr = np.asarray(points.lr)
        ax.errorbar(points.batch_sizes, points.lr, yerr=[lr - np.asarray(points.low), np.asarray(points.high) - lr],
                    fmt="o", color="black", markerfacecolor="black" if points.usable else "white", capsize=3,
                    label=points.label, zorder=4)
    if series.own:
        sizes, lrs = zip(*series.own)
        ax.plot(sizes, lrs, "x", color=OWN_COLOR, markersize=6, label=OWN_LABEL, zorder=5)
    if series.verified:
        sizes, lrs = zip(*series.verified)
        ax.plot(sizes, lrs, "D", color=VERIFIED_COLOR, markersize=7, label=VERIFIED_LABEL, zorder=5)
    for i, b in enumerate(series.missing):
        ax.axvline(b, color=MISSING_COLOR, linestyle=":", label="no complete trial (left out)" if i == 0 else None)
    for curve in series.curves:
        ax.plot(curve.x, curve.y, color=curve.color, linewidth=curve.width, linestyle=MATPLOTLIB_STYLES[curve.style],
                label=f"{curve.label}: {curve.formula}" if curve.formula else curve.label)
    for x, text, color in series.bends:
        ax.axvline(x, color=color, linewidth=0.8, linestyle=":")
        ax.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", color=color, fontsize=8)
    ax.set_xlim(*series.x_range)
    ticks = sorted({*series.batch_sizes, *(b for b, _ in series.verified)})
    ax.set_xticks(ticks, [str(b) for b in ticks])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("learning rate")
    ax.set_title(series.title.replace("$", r"\$"))
    ax.grid(True, which="major", color="0.92")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith(("optimum", "its trials", "no complete",
                                                                               "best")))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper center",
              bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    return figure


@dataclass(frozen=True)
class CriticalSeries:
    """The second figure: steps against samples to the target per timed batch size, and the fitted
    trade-off (None where fewer than three batch sizes were timed)."""

    title: str
    labels: list[str]              # "B=64"
    steps: list[float]
    samples: list[float]
    steps_low: list[float]         # 95% interval of the steps
    steps_high: list[float]
    curve: tuple[np.ndarray, np.ndarray] | None  # (steps, samples) of S(B) = S_min (1 + B_crit/B)
    b_crit: tuple[float, float, float] | None    # (B_crit, its steps 2 S_min, its samples 2 E_min)
    limits: tuple[float, float] | None           # S_min and E_min, drawn as dotted lines


CRITICAL_CURVE = "S(B) = S_min (1 + B_crit / B)"
CRITICAL_POINTS = "per batch size (95% interval of steps)"


def critical_series(result: FitResult) -> CriticalSeries | None:
    """Steps against samples to the target, one point per batch size (with the 95% interval of its
    steps), and the fitted trade-off S(B) = S_min (1 + B_crit/B), E(B) = E_min (1 + B/B_crit), with
    its two limits and the critical batch size marked; None without a timed reading."""
    critical = result.critical
    reached = critical.timed if critical is not None else []
    if not reached:
        return None
    curve = b_crit = limits = None
    if critical.b_crit is not None:
        sizes = np.geomspace(reached[0].batch_size / RANGE**2, reached[-1].batch_size * RANGE**2, 200)
        fitted = critical.s_min * (1.0 + critical.b_crit / sizes)
        curve, b_crit = (fitted, fitted * sizes), (critical.b_crit, 2 * critical.s_min, 2 * critical.e_min)
        limits = (critical.s_min, critical.e_min)
    return CriticalSeries(
        title=f"Steps vs samples to reach {critical.target:.4g}: {result.study}",
        labels=[f"B={r.batch_size}" for r in reached], steps=[r.steps for r in reached],
        samples=[r.samples for r in reached], steps_low=[r.steps_ci[0] for r in reached],
        steps_high=[r.steps_ci[1] for r in reached], curve=curve, b_crit=b_crit, limits=limits)


def make_critical_figure(result: FitResult):
    """The second figure as a plotly Figure (optuna-dashboard shows it beside the study); None
    without a timed reading."""
    import plotly.graph_objects as go

    series = critical_series(result)
    if series is None:
        return None
    figure = go.Figure()
    figure.add_trace(go.Scatter(
        x=series.steps, y=series.samples, mode="markers+text", name=CRITICAL_POINTS, text=series.labels,
        textposition="top right", marker={"size": 9, "color": "black"},
        error_x={"type": "data", "symmetric": False, "array": np.subtract(series.steps_high, series.steps).tolist(),
                 "arrayminus": np.subtract(series.steps, series.steps_low).tolist()},
        hovertemplate="%{text}: %{x:,.0f} steps, %{y:,.0f} samples<extra></extra>"))
    if series.curve is not None:
        b_crit, steps, samples = series.b_crit
        figure.add_trace(go.Scatter(x=series.curve[0], y=series.curve[1], mode="lines", name=CRITICAL_CURVE,
                                    line={"color": RULE_COLORS[SATURATING], "width": 2}))
        figure.add_trace(go.Scatter(x=[steps], y=[samples], mode="markers+text",
                                    name=f"critical batch size B≈{b_crit:.3g}", text=[f"B_crit≈{b_crit:.3g}"],
                                    textposition="bottom right",
                                    marker={"size": 11, "symbol": "diamond", "color": RULE_COLORS[SATURATING]}))
        figure.add_vline(x=series.limits[0], line={"color": MISSING_COLOR, "width": 1, "dash": "dot"})
        figure.add_hline(y=series.limits[1], line={"color": MISSING_COLOR, "width": 1, "dash": "dot"})
    figure.update_layout(title=series.title, template="plotly_white",
                         xaxis={"type": "log", "title": "optimizer steps to the target"},
                         yaxis={"type": "log", "title": "training samples to the target"},
                         margin={"t": 60, "r": 10}, legend={"font": {"size": 11}})
    return figure


def save_critical_png(result: FitResult, path: Path) -> None:
    """The second figure drawn with matplotlib into ``path`` (PNG); the caller checks there is one."""
    critical_png_figure(result).savefig(path, format="png", dpi=110, metadata={"Software": None})


def critical_png_figure(result: FitResult):
    """The second figure as a matplotlib Figure (Agg: no display needed)."""
    from matplotlib.figure import Figure

    series = critical_series(result)
    figure = Figure(figsize=(8.5, 6.0), layout="constrained")
    ax = figure.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.errorbar(series.steps, series.samples, xerr=[np.subtract(series.steps, series.steps_low),
                                                    np.subtract(series.steps_high, series.steps)],
                fmt="o", color="black", capsize=3, label=CRITICAL_POINTS, zorder=4)
    for label, x, y in zip(series.labels, series.steps, series.samples):
        ax.annotate(label, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
    if series.curve is not None:
        b_crit, steps, samples = series.b_crit
        ax.plot(*series.curve, color=RULE_COLORS[SATURATING], linewidth=2, label=CRITICAL_CURVE)
        ax.plot([steps], [samples], "D", color=RULE_COLORS[SATURATING], markersize=8,
                label=f"critical batch size B≈{b_crit:.3g}")
        ax.axvline(series.limits[0], color=MISSING_COLOR, linestyle=":")
        ax.axhline(series.limits[1], color=MISSING_COLOR, linestyle=":")
    ax.set_xlabel("optimizer steps to the target")
    ax.set_ylabel("training samples to the target")
    ax.set_title(series.title.replace("$", r"\$"))
    ax.grid(True, which="major", color="0.92")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return figure
