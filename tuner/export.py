"""`tuner export`: a stored fit in the forms people use it.

* ``json`` and ``yaml``: the stored fit result (``study.user_attrs["lr_batch_fit"]``) unchanged, key
  order kept, floats exact: ``json.loads(text) == fit`` and ``yaml.safe_load(text) == fit``.
* ``python``: a self-contained module (standard library only) with ``lr_for_batch_size(batch_size)``
  for the recommended rule, generated from its parameters so that it gives the fit's own predictions;
  its docstring says where the rule came from, and how to use it in timm, MMEngine or Lightning.
* ``markdown``: a report a person reads (verdict, per-batch table, rule comparison, the rule in
  timm/MMEngine/PyTorch terms); with ``-o report.md`` its figure is drawn beside it as ``report.png``.

    from tuner.export import export_fit

    text = export_fit(study.user_attrs["lr_batch_fit"], "python", Path("lr_rule.py"))

No format ever holds the storage URL: the fit does not record it, and a fit that holds a URL with a
password is refused rather than exported.
"""
from __future__ import annotations

import json
import keyword
import math
import re
import shlex
import textwrap
from pathlib import Path
from urllib.parse import quote

import numpy as np

from tuner.errors import InputError
from tuner.fit import RULE_NAMES, FitResult, to_markdown
from tuner.fit._report import RULE_COLORS
from tuner.fit._rules import LINEAR, POWER, SATURATING, SQRT
from tuner.fit._verdict import RULE_LABELS, TOLERANCE

FORMATS = ("json", "yaml", "python", "markdown")
DEFAULT_MODULE = "lr_rule"
# a URL that carries a password: scheme://user:password@host
_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/@:]*:[^\s/@]+@", re.IGNORECASE)


def export_fit(fit: dict, fmt: str, output: Path | None = None) -> str:
    """The stored fit ``fit`` as ``fmt`` (json, yaml, python or markdown).

    With ``output`` the text is also written there (UTF-8); for markdown the figure is written
    beside it as a PNG (``report.md`` -> ``report.png``) and the report links it. Without ``output``
    nothing is written, and the markdown says how to get the figure.

    Raises:
        ValueError: an unknown format.
        InputError: the fit holds a URL with a password (nothing is written).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}; got {fmt!r}")
    _refuse_credentials(fit)
    output = Path(output) if output is not None else None
    if fmt == "json":
        text = to_json(fit)
    elif fmt == "yaml":
        text = to_yaml(fit)
    elif fmt == "python":
        stem = "" if output is None else output.stem
        module = stem if stem.isidentifier() and not keyword.iskeyword(stem) else DEFAULT_MODULE
        text = to_python(fit, module_name=module)
    else:
        figure = None if output is None else figure_path(output)
        text = to_report(fit, figure_name=None if figure is None else figure.name)
        if figure is not None:
            save_figure(FitResult.model_validate(fit), figure)
    if output is not None:
        output.write_text(text, encoding="utf-8")
    return text


# --- json and yaml: the stored result, unchanged --------------------------------------------------

def to_json(fit: dict) -> str:
    return json.dumps(fit, indent=2, ensure_ascii=False) + "\n"


def to_yaml(fit: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        """Lists of numbers on one line ([8, 16, 32]); everything else in block style."""

    def represent_list(dumper, data):
        flat = all(v is None or isinstance(v, (int, float)) for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)

    Dumper.add_representer(list, represent_list)
    return yaml.dump(fit, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)


# --- python: lr_for_batch_size() for the recommended rule -----------------------------------------

def to_python(fit: dict, module_name: str = DEFAULT_MODULE) -> str:
    """A module a user pastes into a training script: ``lr_for_batch_size(batch_size)``, exact to the
    fit's predictions (its parameters written with ``repr``), warning outside the fitted batch range.
    Plain ASCII, lines within 88 columns, clean under ruff's and black's defaults."""
    result = FitResult.model_validate(fit)
    name = result.recommended
    rule = result.rules[name]
    low, high = fitted_range(result)
    n_trials = sum(o.n_trials for o in result.optima)
    provenance = [
        ("study", f"{result.study!r} (metric {_past(result.direction)})"),
        ("fitted on", f"B = {low} ... {high} ({len(_usable(result))} batch sizes, {n_trials} trials)"),
        ("reference B", f"{result.reference_batch_size} (the linear and square-root rules are scaled from it)"),
        ("fitted", f"{result.created or 'unknown date'} by tuner {result.version or '(unknown version)'}"),
        ("verdict", result.verdict),
    ]
    doc = [f"Learning rate for a batch size: the {RULE_LABELS[name]} fitted by lr-batch-tuner.", "",
           f"    {rule.formula()}", ""]
    for key, value in provenance:
        if value:
            doc += _wrap(value, initial=f"    {key + ':':<13}", subsequent=" " * 17)
    doc += [""] + _wrap(f"Outside B = {low} ... {high} the rule is extrapolated: lr_for_batch_size() still "
                        "returns its value, but warns (OutsideFittedRange). batch_size is the batch per "
                        "optimizer step, as in the study (data parallel: per-device batch x devices x "
                        "gradient-accumulation steps).")
    doc += ["", "Usage (plain PyTorch; with Lightning, in configure_optimizers):", "",
            f"    from {module_name} import lr_for_batch_size",
            "    optimizer = torch.optim.SGD(model.parameters(), lr=lr_for_batch_size(batch_size))",
            "", "In other frameworks:"]
    for line in framework_lines(result, module_file=None):
        doc += _wrap(line, initial="  - ", subsequent="    ")
    doc += [""] + _wrap(f"Generated by `tuner export {shlex.quote(result.study)} --format python`; export "
                        "again after re-fitting.")
    constants = _constants(name, rule.params)
    lines = [f'"""{_doc_safe(chr(10).join(doc))}\n"""', "", "import math", "import warnings", ""]
    lines += [f"{constant} = {value!r}  # {comment}" for _, constant, value, comment in constants]
    lines += ["RULE = {", f'    "name": {_literal(name)},', f'    "formula": {_literal(_ascii(rule.formula()))},']
    lines += [f'    "{key}": {constant},' for key, constant, _, _ in constants]
    lines += ["}", f"FITTED_BATCH_SIZES = {tuple(o.batch_size for o in _usable(result))!r}",
              f"MIN_BATCH_SIZE = {low!r}", f"MAX_BATCH_SIZE = {high!r}", ""]
    lines += ["# The other rules, fitted to the same optima (BIC: lower is better; leave-one-out:",
              "# typical factor by which the rule, fitted without a batch size, misses its optimum).",
              "# To use one instead, return its expression from lr_for_batch_size:"]
    for other in RULE_NAMES:
        lines += _alternative(result, other)
    lines += ["", "", _FUNCTION.format(label=RULE_LABELS[name], expression=_expression(name, constant=True))]
    return "\n".join(lines)


def _wrap(text: str, initial: str = "", subsequent: str = "", width: int = 88) -> list[str]:
    return textwrap.wrap(_ascii(text), width=width, initial_indent=initial, subsequent_indent=subsequent,
                         break_on_hyphens=False)


def _literal(text: str) -> str:
    """A Python string literal in double quotes (JSON's escapes are Python's)."""
    return json.dumps(text)


_FUNCTION = '''\
class OutsideFittedRange(UserWarning):
    """A batch size outside the range the rule was fitted on: its lr is extrapolated."""


def lr_for_batch_size(batch_size: int) -> float:
    """Return the learning rate for ``batch_size`` by the {label}.

    ``batch_size`` is the number of samples per optimizer step. Raises ValueError
    unless it is a positive finite number; warns (OutsideFittedRange) outside
    MIN_BATCH_SIZE ... MAX_BATCH_SIZE, where the rule is extrapolated.
    """
    if not (batch_size > 0 and math.isfinite(batch_size)):
        message = f"batch_size must be a positive number, got {{batch_size!r}}"
        raise ValueError(message)
    if not MIN_BATCH_SIZE <= batch_size <= MAX_BATCH_SIZE:
        warnings.warn(
            f"batch size {{batch_size}} is outside the batch sizes the rule was fitted "
            f"on ({{MIN_BATCH_SIZE}} ... {{MAX_BATCH_SIZE}}): its lr is extrapolated",
            OutsideFittedRange,
            stacklevel=2,
        )
    return {expression}
'''


def _constants(name: str, params: dict) -> list[tuple[str, str, float, str]]:
    """(RULE key, constant name, value, comment) of a rule's parameters."""
    if name == SATURATING:
        return [("lr_max", "LR_MAX", params["lr_max"], "the learning rate approached at large batch sizes"),
                ("b_noise", "B_NOISE", params["b_noise"], "critical batch size: linear scaling below, flat above")]
    return [("lr_ref", "LR_REF", params["lr_ref"], "the learning rate at BATCH_SIZE_REF"),
            ("batch_size_ref", "BATCH_SIZE_REF", params["batch_size_ref"], "reference batch size"),
            ("alpha", "ALPHA", params["alpha"], "exponent: lr grows as batch_size ** ALPHA")]


def _expression(name: str, constant: bool, params: dict | None = None) -> str:
    """The rule as Python, over ``batch_size``: with the module's constants, or with literal values.

    The square-root rule uses math.sqrt and the linear rule no power: the same values as the fit's
    own arithmetic (numpy), to the last bit or one rounding step."""
    def value(key: str, const: str) -> str:
        return const if constant else repr(params[key])

    if name == SATURATING:
        return f"{value('lr_max', 'LR_MAX')} / (1.0 + {value('b_noise', 'B_NOISE')} / batch_size)"
    ratio = f"batch_size / {value('batch_size_ref', 'BATCH_SIZE_REF')}"
    scale = {LINEAR: f"({ratio})", SQRT: f"math.sqrt({ratio})"}.get(name, f"({ratio}) ** {value('alpha', 'ALPHA')}")
    return f"{value('lr_ref', 'LR_REF')} * {scale}"


def _alternative(result: FitResult, name: str) -> list[str]:
    rule = result.rules[name]
    bic, lobo = rule.bic, rule.lobo_error
    scores = [f"BIC {bic:.1f}" if math.isfinite(bic) else None, f"leave-one-out x{lobo:.2f}" if lobo else None]
    recommended = ", recommended" if name == result.recommended else ""
    return [f"#   {name} ({', '.join(s for s in scores if s)}{recommended}):",
            f"#       {_expression(name, constant=False, params=rule.params)}"]


def _past(direction: str) -> str:
    return {"minimize": "minimized", "maximize": "maximized"}.get(direction, direction)


_ASCII = {"×": "x", "≈": "~", "α": "alpha", "…": "...", "–": "-", "—": "-", "∞": "inf", "√": "sqrt",
          "≤": "<=", "≥": ">=", "·": "*", "’": "'", "±": "+/-"}


def _ascii(text: str) -> str:
    """The docstring in plain ASCII where we can: some editors and linters flag × and ≈ in code."""
    return "".join(_ASCII.get(c, c) for c in text)


def _doc_safe(text: str) -> str:
    """Text that cannot end or escape out of a triple-quoted docstring (study names are the user's)."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


# --- framework mapping -----------------------------------------------------------------------------

def framework_lines(result: FitResult, module_file: str | None = f"{DEFAULT_MODULE}.py") -> list[str]:
    """The recommended rule in the terms of timm, MMEngine and plain PyTorch / Lightning: exactly
    where a framework has the rule, else the nearest rule it has and the batch range where that one
    is within TOLERANCE, with the Python module as the exact alternative (``module_file``; None: the
    lines go in that module's own docstring)."""
    name = result.recommended
    rule = result.rules[name]
    module = "the exported Python module" if module_file else "this module"
    lines = [_timm(result, name, rule, module), _mmengine(result, name, rule, module)]
    get = (f"`tuner export {shlex.quote(result.study)} --format python -o {module_file}`, then "
           if module_file else "")
    lines.append(f"Lightning / plain PyTorch: {get}`lr=lr_for_batch_size(batch_size)` where the optimizer is "
                 "built (`configure_optimizers` in Lightning); it warns outside the fitted batch range.")
    return lines


def _timm(result: FitResult, name: str, rule, module: str) -> str:
    note = (" (and no `--lr`: timm then scales lr_base by the global batch size, batch x GPUs x "
            "gradient-accumulation steps, over lr_base_size)")
    if name in (LINEAR, SQRT):
        return (f"timm: `--lr-base {rule.lr_ref:.6g} --lr-base-size {rule.batch_size_ref:g} "
                f"--lr-base-scale {name}`{note}: exactly this rule.")
    scale, anchor, lr, (lo, hi), worst = nearest_scaled_rule(result, (LINEAR, SQRT))
    flags = f"`--lr-base {lr:.6g} --lr-base-size {anchor} --lr-base-scale {scale}`"
    low, high = fitted_range(result)
    if lo <= low and hi >= high:
        return (f"timm: {flags}{note}: within ×{worst:.2f} of the {_describe(name, rule)} across the fitted "
                f"range B={low}…{high}.")
    return (f"timm: `--lr-base-scale` has only linear and sqrt, no option for the {_describe(name, rule)}: "
            f"use {module} (pass `--lr` from `lr_for_batch_size`). Within "
            f"B={_size(lo)}…{_size(hi)}, {flags} is within ×{TOLERANCE:g} of it.")


def _mmengine(result: FitResult, name: str, rule, module: str) -> str:
    note = ("; MMEngine scales the optimizer's lr by the real batch size (GPUs x per-GPU batch, "
            "not counting gradient accumulation) over base_batch_size")
    if name == LINEAR:
        return (f"MMEngine: `auto_scale_lr = dict(enable=True, base_batch_size={rule.batch_size_ref:g})` "
                f"with `optim_wrapper = dict(optimizer=dict(lr={rule.lr_ref:.6g}, ...))`{note}: "
                "exactly this rule.")
    _, anchor, lr, (lo, hi), worst = nearest_scaled_rule(result, (LINEAR,))
    config = f"`auto_scale_lr = dict(enable=True, base_batch_size={anchor})` with the optimizer's `lr={lr:.6g}`"
    low, high = fitted_range(result)
    if lo <= low and hi >= high:
        return (f"MMEngine: {config}{note}: within ×{worst:.2f} of the {_describe(name, rule)} across the "
                f"fitted range B={low}…{high}.")
    return (f"MMEngine: `auto_scale_lr` scales linearly only, and the {_describe(name, rule)} is not linear: "
            f"set the optimizer's lr from {module}. Within B={_size(lo)}…{_size(hi)}, "
            f"{config} is within ×{TOLERANCE:g} of it.")


def _describe(name: str, rule) -> str:
    if name == POWER:
        return f"power law (α={rule.alpha:.2f})"
    if name == SATURATING:
        return f"saturating rule (B_noise≈{_size(rule.b_noise)})"
    return RULE_LABELS[name]


def nearest_scaled_rule(result: FitResult, scales: tuple[str, ...]):
    """The linear or square-root rule, scaled from the recommended rule's lr at one fitted batch size,
    that stays closest to the recommended rule over the fitted range.

    Returns (scale, anchor batch size, lr at the anchor, (lo, hi), worst factor): [lo, hi] is the
    batch range around the anchor where it stays within TOLERANCE (within the fitted range), and the
    worst factor is over the whole fitted range. Preferred: one within TOLERANCE everywhere, the
    closest; else the one that holds over the widest range.
    """
    low, high = fitted_range(result)
    grid = np.unique(np.concatenate([np.geomspace(low, high, 400), [o.batch_size for o in _usable(result)]]))
    target = np.log(np.atleast_1d(result.rules[result.recommended].predict(grid)))
    candidates = []
    for scale in scales:
        alpha = 1.0 if scale == LINEAR else 0.5
        for anchor in (o.batch_size for o in _usable(result)):
            lr = result.predict(anchor)
            miss = np.abs(math.log(lr) + alpha * np.log(grid / anchor) - target)
            i = int(np.searchsorted(grid, anchor))
            ok = miss <= math.log(TOLERANCE) + 1e-12
            lo_i, hi_i = i, i
            while lo_i > 0 and ok[lo_i - 1]:
                lo_i -= 1
            while hi_i < len(grid) - 1 and ok[hi_i + 1]:
                hi_i += 1
            worst = float(np.exp(miss.max()))
            width = math.log(grid[hi_i] / grid[lo_i])
            candidates.append(((ok.all(), -worst if ok.all() else width),
                               (scale, anchor, lr, (float(grid[lo_i]), float(grid[hi_i])), worst)))
    return max(candidates, key=lambda c: c[0])[1]


def _usable(result: FitResult):
    return [o for o in result.optima if o.usable]


def fitted_range(result: FitResult) -> tuple[int, int]:
    """The smallest and largest batch size whose optimum the rules were fitted to."""
    sizes = [o.batch_size for o in _usable(result)] or result.batch_sizes
    return min(sizes), max(sizes)


def _size(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


# --- markdown: a report, its figure beside it -------------------------------------------------------

def figure_path(report: Path) -> Path:
    """Where the report's figure goes: report.md -> report.png (never the report itself)."""
    path = report.with_suffix(".png")
    return path if path != report else report.with_name(report.stem + "-figure.png")


def to_report(fit: dict, figure_name: str | None = None) -> str:
    """The markdown report; ``figure_name``: the PNG beside it to link, None for none (stdout)."""
    result = FitResult.model_validate(fit)
    low, high = fitted_range(result)
    n_trials = sum(o.n_trials for o in result.optima)
    study = shlex.quote(result.study)
    name = result.recommended
    verdict = result.verdict or f"Use the {RULE_LABELS[name]}: {result.rules[name].formula()}."
    scope = (f"Metric {_past(result.direction)}; optimal learning rate measured at {len(result.batch_sizes)} batch "
             f"sizes ({result.batch_sizes[0]}…{result.batch_sizes[-1]}, {n_trials} trials), rules fitted on "
             f"B={low}…{high}; reference batch size {result.reference_batch_size}.")
    parts = [f"# Learning rate × batch size: study `{result.study}`", scope, f"**{verdict}**"]
    if figure_name is not None:
        parts.append(f"![Optimal learning rate vs batch size, with the fitted rules]({quote(figure_name)})")
    else:
        parts.append(f"> The figure is drawn only when the report goes to a file: `tuner export {study} --format "
                     "markdown -o report.md` (with the same `--storage`) writes `report.png` beside it and "
                     "links it here.")
    parts.append("## In your training code\n" + "\n".join(f"- {line}" for line in framework_lines(result)))
    parts += _note_sections(result)
    parts.append(f"<sub>Fitted {result.created or '(date unknown)'} by tuner {result.version or '(version unknown)'}; "
                 "after more trials, `tuner fit` and export again.</sub>")
    return "\n\n".join(parts) + "\n"


def _note_sections(result: FitResult) -> list[str]:
    """The tables of the study note (``tuner.fit.to_markdown``), one heading level up, without its
    title, verdict and footer (this report has its own)."""
    note = to_markdown(result)
    sections = note.split("\n\n### ")[1:]
    if sections and "\n\n<sub>" in sections[-1]:
        sections[-1] = sections[-1].rsplit("\n\n<sub>", 1)[0]
    return ["## " + section for section in sections]


def save_figure(result: FitResult, path: Path) -> None:
    """The figure of ``tuner.fit.make_figure`` drawn with matplotlib (Agg, no display, no browser):
    per-batch optima with intervals on log-log axes, the fitted rules, the linear and square-root
    rules scaled from the reference batch size, and the batch sizes left out."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("the markdown report's figure needs matplotlib: pip install matplotlib") from None

    figure = Figure(figsize=(8.5, 7.0), layout="constrained")
    ax = figure.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    measured = [o for o in result.optima if o.lr is not None]
    for usable, label, face in ((True, "optimum (95% interval)", "black"),
                                (False, "optimum at the edge of the LR range (left out)", "white")):
        points = [o for o in measured if o.usable == usable]
        if points:
            errors = [[o.lr - o.ci[0] for o in points], [o.ci[1] - o.lr for o in points]]
            ax.errorbar([o.batch_size for o in points], [o.lr for o in points], yerr=errors, fmt="o",
                        color="black", markerfacecolor=face, capsize=3, label=label, zorder=4)
    for i, b in enumerate(o.batch_size for o in result.optima if o.lr is None):
        ax.axvline(b, color="0.6", linestyle=":", label="no complete trial (left out)" if i == 0 else None)
    grid = np.geomspace(min(result.batch_sizes) / 1.5, max(result.batch_sizes) * 1.5, 200)
    for name in RULE_NAMES:
        rule, best = result.rules[name], name == result.recommended
        ax.plot(grid, rule.predict(grid), color=RULE_COLORS[name], linewidth=2.5 if best else 1.2,
                linestyle="-" if best else ":",
                label=f"{name}{' (recommended)' if best else ''}: {rule.formula(digits=3)}")
    for name in (LINEAR, SQRT):
        scaled = result.rules[name].anchored_lr
        if scaled:
            ax.plot(result.batch_sizes, scaled, color=RULE_COLORS[name], linestyle="--", linewidth=1,
                    label=f"{name} rule scaled from B={result.reference_batch_size}")
    b_noise = result.critical_batch_size
    if grid[0] <= b_noise <= grid[-1]:
        ax.axvline(b_noise, color=RULE_COLORS[SATURATING], linewidth=0.8, linestyle=":")
        ax.annotate(f"B_noise≈{b_noise:.3g}", (b_noise, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", color=RULE_COLORS[SATURATING], fontsize=8)
    ax.set_xlim(grid[0], grid[-1])
    ax.set_xticks(result.batch_sizes, [str(b) for b in result.batch_sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("learning rate")
    ax.set_title(f"Optimal learning rate vs batch size: {result.study}".replace("$", r"\$"))
    ax.grid(True, which="major", color="0.92")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith(("optimum", "no complete")))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper center",
              bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    figure.savefig(path, format="png", dpi=110, metadata={"Software": None})


# --- nothing secret leaves ----------------------------------------------------------------------------

def _refuse_credentials(fit: dict) -> None:
    """A fit never records its storage; if a URL with a password got in anyway, export nothing."""
    for key, text in _strings(fit, ""):
        if _CREDENTIALS.search(text):
            raise InputError(f"the stored fit holds a URL with a password (at {key or 'the top'}); "
                             "refusing to export it")


def _strings(value, where: str):
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(str(k), where)
            yield from _strings(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")
