"""Which batch size: the steps-to-target readings and the critical batch size against the closed form.

    python -m benchmarks.critical_batch                   # two quadratics x 5 seeds, and digits-mlp-sgd
    python -m benchmarks.critical_batch --seeds 2 --no-digits

For each noisy quadratic (the built-in one, and Zhang et al. 2019's setting: h_i = 1/i, noise
covariance proportional to the curvature, 10,000 dimensions), whole studies run with the default
search (120 trials over B = 8…1024) under two protocols:

* **final metric**: each batch size tuned for the final loss (32 reports per run), and ``tuner fit``
  reads, at its default target, the steps each batch size needs off the learning curves;
* **goal**: each batch size tuned for the fewest steps to a loss of 1 (``[study] goal``, Shallue et
  al. 2019's protocol; 64 reports per run on a log scale), read off each batch size's valley.

The truth is ``quadratic.steps_to_target``: the fewest steps after which the expected loss reaches
the target, the learning rate tuned for it; and B_crit = E_min / S_min, with S_min the steps of the
full gradient (B = 2^20) and E_min the samples at B = 1. Zhang et al. track the expected loss, and
so does their goal study (``noisy = false``): on their spectrum one run's loss is skewed (a few
top-curvature dimensions carry it) and crosses a level ~12% sooner than its expectation.

On the digits MLP (``studies/digits-mlp-sgd.toml`` with 32 reports per run and the gradient
noise scale measured, ``noise_scale = true``) there is no closed form: B_crit, the learning rates'
B_noise and the measured B_simple are shown side by side.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

from benchmarks.report import Goal, Section, log

SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
N_TRIALS = 120
QUADRATICS = {
    "quadratic": {"samples": 16384, "reports": 32},
    "zhang-harmonic": {"spectrum": "harmonic", "dims": 10000, "samples": 16384, "reports": 32},
}
GOAL = 1.0
GOAL_STUDIES = {  # reports on a log scale: a run reaches the goal in dozens of steps or thousands
    "quadratic": {"samples": 2**19, "reports": 64, "spacing": "log"},
    "zhang-harmonic": {"spectrum": "harmonic", "dims": 10000, "samples": 2**19, "reports": 64, "spacing": "log",
                       "noisy": False},
}
DIGITS_GOAL = 0.1  # validation loss: every batch size reaches it in a tenth of its 50 epochs or less
READING_TARGET = 0.10  # the acceptance: every reading within 10% of the closed form
B_CRIT_TARGET = 1.5    # and B_crit within ×1.5


def quadratic_row(name: str, seed: int, goal: float | None = None) -> dict:
    from tuner.fit import fit_study
    from tuner.workloads import quadratic

    options = (QUADRATICS if goal is None else GOAL_STUDIES)[name]
    fit = fit_study(_run({"target": "quadratic", **options}, seed, goal=goal))
    critical = fit.critical
    errors = {r.batch_size: r.steps / quadratic.steps_to_target(critical.target, r.batch_size, **options) - 1.0
              for r in critical.batches if r.reached}
    unlimited = {**options, "samples": 2**40}
    s_min = quadratic.steps_to_target(critical.target, 2**20, **unlimited)
    e_min = quadratic.steps_to_target(critical.target, 1, **unlimited)
    return {"workload": name, "protocol": "final metric" if goal is None else "goal", "seed": seed,
            "target": critical.target, "errors": errors,
            "unreached": [r.batch_size for r in critical.batches if not r.reached],
            "b_crit": critical.b_crit, "b_crit_ci": critical.b_crit_ci, "truth": e_min / s_min,
            "b_noise": fit.rules["saturating"].b_noise}


def digits_row(seed: int, goal: float | None = None) -> dict:
    """The digits MLP study tuned for the final metric (32 evaluations per run), or for the steps to
    ``goal`` (32 evaluations on a log scale)."""
    import tomllib

    from benchmarks.report import REPO
    from tuner.fit import fit_study

    spec = tomllib.loads((REPO / "studies" / "digits-mlp-sgd.toml").read_text())
    workload = {**spec["workload"], "evals": 32, "noise_scale": True, **({"eval_spacing": "log"} if goal else {})}
    fit = fit_study(_run(workload, seed, spec["search"]["batch_sizes"], spec["search"]["lr"],
                         spec["study"]["n_trials"], goal=goal))
    saturating = fit.rules["saturating"]
    return {"workload": "digits-mlp-sgd", "protocol": "final metric" if goal is None else "goal", "seed": seed,
            "target": fit.critical.target, "b_crit": fit.critical.b_crit,
            "b_crit_ci": fit.critical.b_crit_ci, "b_noise": saturating.b_noise, "b_noise_ci": saturating.b_noise_ci,
            "b_simple": fit.critical.b_simple, "b_simple_ci": fit.critical.b_simple_ci,
            "unreached": [r.batch_size for r in fit.critical.batches if not r.reached]}


def _run(workload: dict, seed: int, sizes=SIZES, lr=(1e-4, 4.0), n_trials: int = N_TRIALS, goal: float | None = None):
    import optuna
    from optuna.storages import InMemoryStorage

    from tuner.runner import open_study, run_study
    from tuner.spec import parse_spec
    from tuner.workload import load_workload

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = {"name": f"critical-{seed}", "n_trials": n_trials, "seed": seed, **({"goal": goal} if goal else {})}
    spec = parse_spec({"study": study,
                       "search": {"lr": list(lr), "batch_sizes": list(sizes)}, "workload": workload})
    study = open_study(spec, InMemoryStorage())
    run_study(study, spec, load_workload(spec))
    return study


def run(seeds: int = 5, digits: bool = True, command: str = "python -m benchmarks.critical_batch") -> Section:
    rows = []
    for goal in (None, GOAL):
        for name in QUADRATICS:
            for seed in range(seeds):
                start = time.perf_counter()
                rows.append(quadratic_row(name, seed, goal))
                log(f"  critical: {name} ({rows[-1]['protocol']}) seed {seed}: {time.perf_counter() - start:.0f} s")
    result = Section(
        "10. Which batch size: steps to a target and the critical batch size",
        f"`{command}` — {N_TRIALS} trials with the default search over B = {SIZES[0]}…{SIZES[-1]} per study. "
        "*Final metric*: each batch size tuned for the final loss, 32 reports per run, read at the default target "
        "(the best value three runs of every batch size reach). *Goal*: each batch size tuned for the fewest steps "
        f"to a loss of {GOAL:g} (`[study] goal`), 64 reports per run on a log scale, 2^19 samples; Zhang's "
        "spectrum reports the expected loss (`noisy = false`), as Zhang et al. track it. Each reading against the "
        "closed form (the fewest steps to the target's expected loss, the learning rate tuned for it), B_crit "
        "against E_min / S_min.")
    table, goals = [], []
    for protocol in ("final metric", "goal"):
        for name in QUADRATICS:
            mine = [r for r in rows if r["workload"] == name and r["protocol"] == protocol]
            worst = [max(abs(e) for e in r["errors"].values()) for r in mine]
            ratios = [math.exp(abs(math.log(r["b_crit"] / r["truth"]))) for r in mine]
            covered = sum(_covers(r["b_crit_ci"], r["truth"]) for r in mine)
            table.append([name, protocol, len(mine), f"{statistics.median(r['target'] for r in mine):.3g}",
                          f"{100 * statistics.median(worst):.1f}%", f"{100 * max(worst):.1f}%",
                          f"{statistics.median(r['b_crit'] for r in mine):.0f}",
                          f"{statistics.median(r['truth'] for r in mine):.0f}", f"×{statistics.median(ratios):.2f}",
                          f"×{max(ratios):.2f}", f"{covered}/{len(mine)}",
                          f"{statistics.median(r['b_noise'] for r in mine):.0f}",
                          str(sum(len(r["unreached"]) for r in mine))])
            if protocol == "goal":  # the acceptance's protocol: each batch size tuned for the target
                goals.append(Goal(f"16. {name}: every steps-to-target reading within 10% of the closed form",
                                  "worst batch size of the worst seed ≤ 10%", f"{100 * max(worst):.1f}%",
                                  max(worst) <= READING_TARGET))
                goals.append(Goal(f"16. {name}: B_crit within ×1.5 of the closed form", "worst seed ≤ ×1.5",
                                  f"×{max(ratios):.2f}", max(ratios) <= B_CRIT_TARGET))
    result.table("", ["workload", "tuned for", "seeds", "target (median)", "worst reading (median seed)",
                      "worst reading (worst seed)", "B_crit (median)", "closed form", "ratio (median seed)",
                      "ratio (worst seed)", "B_crit's 95% CI covers", "B_noise (median)",
                      "batch sizes short of the target"], table)
    if digits:
        table = []
        for goal in (None, DIGITS_GOAL):
            start = time.perf_counter()
            row = digits_row(0, goal)
            log(f"  critical: digits-mlp-sgd ({row['protocol']}): {time.perf_counter() - start:.0f} s")
            table.append([row["protocol"], f"{row['target']:.3g}",
                          f"{row['b_crit']:.0f} ({_interval(row['b_crit_ci'])})",
                          f"{row['b_noise']:.0f} ({_interval(row['b_noise_ci'])})",
                          f"{row['b_simple']:.0f} ({_interval(row['b_simple_ci'])})",
                          ", ".join(map(str, row["unreached"])) or "none"])
        result.table("digits-mlp-sgd (no closed form): the critical batch size from steps, from learning rates, "
                     "and the gradient noise scale",
                     ["tuned for", "target", "B_crit (95% CI)", "B_noise (95% CI)", "B_simple (95% CI)",
                      "batch sizes short of the target"], table)
    result.goals = goals
    return result


def _covers(interval, value: float) -> bool:
    low, high = interval
    return (low is None or low <= value) and (high is None or value <= high)


def _interval(ends) -> str:
    low, high = ends
    return f"{low:.3g} to {high:.3g}" if low and high else f"{low or 0:.3g} to {high or math.inf:.3g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.critical_batch", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per quadratic (default 5)")
    parser.add_argument("--no-digits", action="store_true", help="leave out the digits MLP study")
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.critical_batch", *(sys.argv[1:] if argv is None else argv)])
    print(run(args.seeds, not args.no_digits, command).markdown())


if __name__ == "__main__":
    main()
