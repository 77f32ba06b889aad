"""The recommended rule in the terms of the frameworks people train with (timm, MMEngine, plain
PyTorch / Lightning): exactly where a framework has the rule, else the nearest rule it has and where
that one holds."""
from __future__ import annotations

import math
import shlex

import numpy as np

from tuner.fit._optimum import BatchOptimum
from tuner.fit._result import FitResult
from tuner.fit._rules import FIXED_ALPHA, LINEAR, POWER, SATURATING, SQRT, SURGE, Rule
from tuner.fit._verdict import RULE_LABELS, TOLERANCE, format_batch_size

DEFAULT_MODULE = "lr_rule"  # the exported Python module's name (``tuner export --format python``)


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


def _timm(result: FitResult, name: str, rule: Rule, module: str) -> str:
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
            f"B={format_batch_size(lo)}…{format_batch_size(hi)}, {flags} is within ×{TOLERANCE:g} of it.")


def _mmengine(result: FitResult, name: str, rule: Rule, module: str) -> str:
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
            f"set the optimizer's lr from {module}. Within B={format_batch_size(lo)}…{format_batch_size(hi)}, "
            f"{config} is within ×{TOLERANCE:g} of it.")


def _describe(name: str, rule: Rule) -> str:
    if name == POWER:
        return f"power law (α={rule.alpha:.2f})"
    if name == SATURATING:
        return f"saturating rule (B_noise≈{format_batch_size(rule.b_noise)})"
    if name == SURGE:
        return f"surge rule (peak at B≈{format_batch_size(rule.b_peak)})"
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
    grid = np.unique(np.concatenate([np.geomspace(low, high, 400), [o.batch_size for o in usable(result)]]))
    target = np.log(np.atleast_1d(result.rules[result.recommended].predict(grid)))
    candidates = []
    for scale in scales:
        alpha = FIXED_ALPHA[scale]
        for anchor in (o.batch_size for o in usable(result)):
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


def fitted_range(result: FitResult) -> tuple[int, int]:
    """The smallest and largest batch size whose optimum the rules were fitted to."""
    sizes = [o.batch_size for o in usable(result)] or result.batch_sizes
    return min(sizes), max(sizes)


def usable(result: FitResult) -> list[BatchOptimum]:
    """The batch sizes whose optimum the rules were fitted to."""
    return [o for o in result.optima if o.usable]
