"""Does the verdict name the form the optimum really follows?

    python -m benchmarks.forms                  # 4 forms x 10 seeds, about a minute on 2 cores
    python -m benchmarks.forms --seeds 3 --only surge,sqrt
    python -m benchmarks.forms --noise 0.15 --batch-sizes 32,64,128,256,512,1024

Synthetic valleys (``benchmarks.panel_workloads.valley``: four reports, 5% noise on each, a valley
twice as steep above its optimum as below, a cliff at ×2.01) whose optimum follows exactly one of the
rules the fit compares, by default across B = 16…2048:

* ``linear``: lr* = 0.01·(B/16);
* ``sqrt``: lr* = 0.01·(B/16)^0.5;
* ``saturating``: lr* = 0.05 / (1 + 128/B) (linear well below B_noise = 128, flat above);
* ``surge``: lr* = 2·0.05 / (√(B/256) + √(256/B)) (rises to its peak at B_peak = 256, then falls
  ×1.59 by B = 2048; by ×1.25 when the largest batch size is 1024).

Each seed runs the whole tool as a user would (``tuner run``'s default search, 128 trials, then
``tuner fit``); the benchmark counts how often the recommended rule is the true form, and checks that a
surge is never called saturating. The fitted bend (B_noise, B_peak) and whether its 95% interval
covers the truth are shown too.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from benchmarks.panel_workloads import PanelWorkload, ValleyTruth, valley
from benchmarks.report import Goal, Section, log

BATCH_SIZES = (16, 32, 64, 128, 256, 512, 1024, 2048)
NOISE = 0.05
N_TRIALS = 128
SEEDS = 10
NAMED = 9  # of 10 seeds: how often the verdict must name the true form (the acceptance)


@dataclass(frozen=True)
class FormTruth(ValleyTruth):
    """A valley whose optimum follows one rule exactly: ``form`` with level ``lr0`` and ``bend``
    (B_noise for saturating, B_peak for surge; the power laws are scaled from B = ``b0``)."""

    name: str = "sqrt"
    bend: float = 0.0

    def optimum(self, batch_size: int) -> float:
        b = float(batch_size)
        if self.name == "saturating":
            return self.lr0 / (1.0 + self.bend / b)
        if self.name == "surge":
            return 2.0 * self.lr0 / (math.sqrt(b / self.bend) + math.sqrt(self.bend / b))
        return super().optimum(batch_size)

    def form(self) -> str:
        if self.name == "saturating":
            return f"lr* = {self.lr0:g} / (1 + {self.bend:g}/B)"
        if self.name == "surge":
            return f"lr* = 2·{self.lr0:g} / (√(B/{self.bend:g}) + √({self.bend:g}/B))"
        return super().form()


TRUTHS = {
    "linear": FormTruth(alpha=1.0, name="linear"),
    "sqrt": FormTruth(alpha=0.5, name="sqrt"),
    "saturating": FormTruth(alpha=math.nan, lr0=0.05, name="saturating", bend=128.0),
    "surge": FormTruth(alpha=math.nan, lr0=0.05, name="surge", bend=256.0),
}
BEND_FIELDS = {"saturating": ("b_noise", "b_noise_ci"), "surge": ("b_peak", "b_peak_ci")}


def workload(form: str, noise: float, batch_sizes: tuple[int, ...]) -> PanelWorkload:
    return valley(f"form-{form}", TRUTHS[form], noise=noise, n_trials=N_TRIALS, batch_sizes=batch_sizes)


def fall(truth: FormTruth, batch_sizes: tuple[int, ...]) -> float:
    """How far the optimum falls from its highest point to the largest batch size (1: it does not)."""
    lrs = [truth.optimum(b) for b in batch_sizes]
    return max(lrs) / lrs[-1]


def run_one(form: str, seed: int, noise: float = NOISE, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> dict:
    """One study of one form, fitted; what the fit concluded."""
    import optuna

    from benchmarks.panel import tuner_study
    from tuner.errors import InputError
    from tuner.fit import fit_study

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    start = time.perf_counter()
    study = tuner_study(workload(form, noise, batch_sizes), seed, N_TRIALS)
    try:
        fit = fit_study(study)
    except InputError as error:
        return {"form": form, "seed": seed, "recommended": None, "error": str(error)}
    row = {"form": form, "seed": seed, "recommended": fit.recommended, "verdict": fit.verdict,
           "seconds": time.perf_counter() - start, "bic": {n: r.bic for n, r in fit.rules.items()}}
    if form in BEND_FIELDS:
        value, interval = BEND_FIELDS[form]
        rule = fit.rules[form]
        row |= {"bend": getattr(rule, value), "bend_ci": list(getattr(rule, interval))}
    return row


def _unit(args: tuple) -> dict:
    return run_one(*args)


def run(forms: list[str] | None = None, seeds: int = SEEDS, jobs: int = 2, noise: float = NOISE,
        batch_sizes: tuple[int, ...] = BATCH_SIZES, command: str = "python -m benchmarks.forms") -> Section:
    forms = forms or list(TRUTHS)
    units = [(form, seed, noise, batch_sizes) for form in forms for seed in range(seeds)]
    rows = []
    with ProcessPoolExecutor(jobs) as pool:
        for row in pool.map(_unit, units):
            log(f"  forms: {row['form']} seed {row['seed']}: {row['recommended']}")
            rows.append(row)
    return section(rows, seeds, noise, batch_sizes, command)


def section(rows: list[dict], seeds: int, noise: float, batch_sizes: tuple[int, ...], command: str) -> Section:
    result = Section(
        "8. Which form: does the verdict name the rule the optimum follows?",
        f"`{command}` — synthetic valleys whose optimum follows exactly one rule across B = "
        f"{batch_sizes[0]}…{batch_sizes[-1]} ({len(batch_sizes)} batch sizes), {noise:.0%} noise on every report, "
        f"{N_TRIALS} trials with the default search, {seeds} seeds each; the recommended rule against the true form.")
    table, goals = [], []
    for form, truth in TRUTHS.items():
        mine = [r for r in rows if r["form"] == form]
        if not mine:
            continue
        named = sum(r["recommended"] == form for r in mine)
        others = Counter(r["recommended"] for r in mine if r["recommended"] != form)
        bend, covered = "-", "-"
        if form in BEND_FIELDS:
            bends = [r["bend"] for r in mine if r.get("bend")]
            bend = f"{statistics.median(bends):.3g} (truth {truth.bend:g})" if bends else "-"
            covered = f"{sum(_covers(r['bend_ci'], truth.bend) for r in mine if r.get('bend_ci'))}/{len(mine)}"
        table.append([form, truth.form(), f"×{fall(truth, batch_sizes):.2f}", f"{named}/{len(mine)}",
                      ", ".join(f"{n} {k}" for k, n in others.most_common()) or "-", bend, covered,
                      f"{statistics.median(r.get('seconds', 0.0) for r in mine):.0f} s"])
        need = math.ceil(NAMED * len(mine) / SEEDS)
        goals.append(Goal(f"15. the verdict names the {form} form", f"≥ {need} of {len(mine)} seeds",
                          f"{named} of {len(mine)}", named >= need))
    surges = [r for r in rows if r["form"] == "surge"]
    if surges and fall(TRUTHS["surge"], batch_sizes) >= 1.5:  # a smaller fall may pass for a bend
        called = sum(r["recommended"] == "saturating" for r in surges)
        goals.append(Goal("15. a surge falling ×1.5 or more is never called saturating", "0 seeds",
                          f"{called} of {len(surges)}", called == 0))
    result.table("", ["true form", "optimum", "falls past its peak", "named", "recommended instead",
                      "fitted bend (median)", "bend's 95% CI covers", "time per study"], table)
    result.goals = goals
    return result


def _covers(interval: list[float | None], value: float) -> bool:
    low, high = interval
    return (low is None or low <= value) and (high is None or value <= high)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.forms", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated forms (default: all of {','.join(TRUTHS)})")
    parser.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds per form (default {SEEDS})")
    parser.add_argument("--jobs", type=int, default=2, help="studies run at once (default 2)")
    parser.add_argument("--noise", type=float, default=NOISE, help=f"relative noise on every report (default {NOISE})")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="comma-separated")
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.forms", *(sys.argv[1:] if argv is None else argv)])
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    print(run(args.only.split(",") if args.only else None, args.seeds, args.jobs, args.noise, sizes,
              command).markdown())


if __name__ == "__main__":
    main()
