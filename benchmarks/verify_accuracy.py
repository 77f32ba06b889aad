"""`tuner verify` against the truth: does the measured regret of each rule agree with the exact one,
and does verify rank the rules as the truth does? Prints two tables. Not a timed test.

1. The shipped quadratic study (its regret is known in closed form), over several seeds of the
   whole procedure (search, fit, verify): per learning rate verify trained, the measured regret
   against the exact one at the same two learning rates (the rate's and the best measured), and
   whether they agree within the measured regret's 95% interval (Student's t over the paired
   seeds) or 1% of the metric.
2. Synthetic valleys whose optimum follows lr ∝ B^α exactly (the benchmark panel's, α = 0.5 and 1):
   at the largest held-out batch size, whether verify orders the recommended, linear and
   square-root rules as their true regrets do (the anchored textbook rule carries the reference
   batch size's estimation error, so the recommended one may truly beat it), and puts the rule the
   truth does not follow last.

    python -m benchmarks.verify_accuracy [--seeds 5] [--verify-seeds 3]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
from pathlib import Path

import optuna
from scipy.stats import t as student

from benchmarks.panel_workloads import panel
from tuner import verify
from tuner.fit._verification import RULE_CHOICES
from tuner.runner import fit_and_save, open_study, run_study
from tuner.spec import load_spec, parse_spec
from tuner.storage import open_storage
from tuner.workload import Workload, load_workload
from tuner.workloads.quadratic import expected_loss

optuna.logging.set_verbosity(optuna.logging.WARNING)
STUDY = Path(__file__).resolve().parent.parent / "studies" / "quadratic.toml"


def searched(stored: dict, workload: Workload, folder: Path) -> str:
    """Search and fit the study ``stored`` describes into a journal file in ``folder``; its path."""
    spec = parse_spec(stored)
    path = str(folder / f"{spec.study.name}.journal")
    study = open_study(spec, open_storage(path, create=True))
    run_study(study, spec, workload)
    fit_and_save(study)
    return path


def quadratic_agreement(seed: int, verify_seeds: int, folder: Path) -> list[dict]:
    stored = load_spec(STUDY).to_stored()
    stored["study"].update(seed=seed, name=f"quadratic-{seed}")
    path = searched(stored, load_workload(parse_spec(stored)), folder)
    fit = verify.run(verify.prepare(f"quadratic-{seed}", path, seeds=verify_seeds, rules=RULE_CHOICES), quiet=True)
    options = {k: v for k, v in stored["workload"].items() if k != "target"}
    rows = []
    for batch in fit.verify.batches:
        best = expected_loss(batch.best_lr, batch.batch_size, **options)
        for rate in batch.rates:
            if rate.regret is None or rate.diverged:
                continue
            exact = expected_loss(rate.lr, batch.batch_size, **options) - best
            interval = student.ppf(0.975, max(len(rate.values) - 1, 1)) * (rate.regret_se or 0.0)
            allowed, off = max(interval, 0.01 * best), abs(rate.regret - exact)
            rows.append({"seed": seed, "deviation": off / best, "used": off / allowed, "agrees": off <= allowed,
                         "within_se": off <= max(rate.regret_se or 0.0, 0.01 * best)})
    return rows


def ranking(name: str, wrong: str, seed: int, verify_seeds: int, folder: Path) -> dict:
    """At the largest held-out batch size: whether verify orders every two rules as the truth does
    (those whose true regrets differ by more than 0.5%), and puts the wrong textbook rule last."""
    workload = next(w for w in panel() if w.name == name)
    stored = {"study": {"name": f"{name}-{seed}", "n_trials": workload.n_trials, "seed": seed},
              "search": {"lr": list(workload.lr_range), "batch_sizes": workload.batch_sizes},
              "workload": {"target": f"panel:{name}"}}
    target = Workload(target=f"panel:{name}", train=workload.train, options={})
    path = searched(stored, target, folder)
    fit = verify.run(verify.prepare(f"{name}-{seed}", path, seeds=verify_seeds), quiet=True, workload=target)
    largest = max(fit.verify.batches, key=lambda b: b.batch_size)
    rates = {label: rate for rate in largest.rates for label in rate.labels}
    rules = ("recommended", "linear", "sqrt")
    truth = {label: workload.truth.regret(largest.batch_size, rates[label].lr) for label in rules}
    pairs = [(a, b) for a, b in itertools.combinations(rules, 2) if abs(truth[a] - truth[b]) > 0.005]
    return {"ordered": all((rates[a].regret < rates[b].regret) == (truth[a] < truth[b]) for a, b in pairs),
            "wrong_last": rates[wrong].regret == max(rates[label].regret for label in rules)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the whole procedure")
    parser.add_argument("--verify-seeds", type=int, default=3, help="tuner verify --seeds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = [row for seed in range(args.seeds) for row in quadratic_agreement(seed, args.verify_seeds, Path(folder))]
        ranks = {(name, wrong): [ranking(name, wrong, seed, args.verify_seeds, Path(folder))
                                 for seed in range(args.seeds)]
                 for name, wrong in (("valley-sqrt-5%", "linear"), ("valley-linear-1%", "sqrt"))}
    print(f"\n**Quadratic: measured against exact regret ({args.seeds} seeds, verify --seeds {args.verify_seeds}, "
          "every rule)**\n")
    print("| seed | rates compared | agree (95% interval or 1% of the metric) | within one standard error or 1% "
          "| median deviation (% of metric) | worst deviation (share of the allowed) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for seed in range(args.seeds):
        mine = [r for r in rows if r["seed"] == seed]
        print(f"| {seed} | {len(mine)} | {sum(r['agrees'] for r in mine)} | {sum(r['within_se'] for r in mine)} | "
              f"{_median_deviation(mine)} | "
              f"{max(r['used'] for r in mine):.2f} |")
    agree = sum(r["agrees"] for r in rows)
    within = sum(r["within_se"] for r in rows)
    print(f"| all | {len(rows)} | {agree} ({100 * agree / len(rows):.0f}%) | "
          f"{within} ({100 * within / len(rows):.0f}%) | {_median_deviation(rows)} | "
          f"{max(r['used'] for r in rows):.2f} |")
    print("\n**Ranking at the largest held-out batch size, against the truth**\n")
    print("| workload | wrong rule | rules ordered as the truth orders them | wrong rule last |")
    print("|---|---|---:|---:|")
    for (name, wrong), results in ranks.items():
        print(f"| {name} | {wrong} | {sum(r['ordered'] for r in results)} of {len(results)} seeds | "
              f"{sum(r['wrong_last'] for r in results)} of {len(results)} seeds |")
    print(f"\n- Produced by `python -m benchmarks.verify_accuracy --seeds {args.seeds} "
          f"--verify-seeds {args.verify_seeds}`.")


def _median_deviation(rows: list[dict]) -> str:
    return f"{100 * statistics.median(r['deviation'] for r in rows):.2f}%"


if __name__ == "__main__":
    main()
