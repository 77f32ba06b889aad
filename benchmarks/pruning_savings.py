"""Pruning within a batch size: samples saved, and whether the best LR per batch size moves.

Runs the shipped quadratic study (8 batch sizes, 8...1024) with the per-batch median pruner and
without pruning, over several seeds, and prints a table. Not a timed test.

    python benchmarks/pruning_savings.py [--trials 96] [--seeds 5]
"""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import optuna

from tuner.fit import fit_study
from tuner.runner import open_study, run_study
from tuner.spec import load_spec, parse_spec
from tuner.trials import FINISHED, SAMPLES
from tuner.workload import load_workload
from tuner.workloads.quadratic import optimal_lr

optuna.logging.set_verbosity(optuna.logging.WARNING)
STUDY = Path(__file__).resolve().parent.parent / "studies" / "quadratic.toml"


def run_once(pruner: str, seed: int, n_trials: int) -> optuna.Study:
    stored = load_spec(STUDY).to_stored()
    stored["study"].update(seed=seed, n_trials=n_trials, name=f"{pruner}-{seed}")
    stored["search"]["pruner"] = pruner
    spec = parse_spec(stored)
    study = open_study(spec, optuna.storages.InMemoryStorage())
    run_study(study, spec, load_workload(spec))
    return study


def best_lr_errors(study: optuna.Study, options: dict) -> list[float]:
    """|log(lr / exact optimum)| per batch size, for the fitted optimum (what `tuner fit` reports)."""
    return [abs(math.log(o.lr / optimal_lr(o.batch_size, **options))) for o in fit_study(study).optima]


def measure(n_trials: int, seeds: int) -> list[dict]:
    options = dict(load_workload(load_spec(STUDY)).options)
    rows = []
    for seed in range(seeds):
        row = {"seed": seed}
        for pruner in ("median", "none"):
            study = run_once(pruner, seed, n_trials)
            finished = study.get_trials(states=FINISHED)
            per_batch = {}
            for t in finished:
                per_batch[t.params["batch_size"]] = per_batch.get(t.params["batch_size"], 0) + 1
            errors = best_lr_errors(study, options)
            row[pruner] = {"samples": sum(t.user_attrs[SAMPLES] for t in study.trials),
                           "min_finished": min(per_batch.values()),
                           "median_err": math.exp(statistics.median(errors)), "worst_err": math.exp(max(errors))}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=96)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    rows = measure(args.trials, args.seeds)
    print(f"quadratic, 8 batch sizes 8..1024, {args.trials} trials, the shipped study's search; "
          "LR error = x(fitted optimum / exact optimum) per batch size")
    print(f"{'seed':>4} | {'samples pruned':>14} {'samples none':>12} {'saved':>6} | {'min finished/batch':>18} |"
          f" {'LR err median':>13} {'(no pruning)':>12} | {'worst':>6} {'(no pruning)':>12}")
    for r in rows:
        m, n = r["median"], r["none"]
        print(f"{r['seed']:>4} | {m['samples']:>14,} {n['samples']:>12,} {1 - m['samples'] / n['samples']:>6.1%} |"
              f" {m['min_finished']:>18} | {m['median_err']:>13.3f} {n['median_err']:>12.3f} |"
              f" {m['worst_err']:>6.3f} {n['worst_err']:>12.3f}")
    def med(key: str, sub: str) -> float:
        return statistics.median(r[key][sub] for r in rows)

    saved = statistics.median(1 - r["median"]["samples"] / r["none"]["samples"] for r in rows)
    print(f"{'med':>4} | {med('median', 'samples'):>14,.0f} {med('none', 'samples'):>12,.0f} {saved:>6.1%} |"
          f" {min(r['median']['min_finished'] for r in rows):>18} | {med('median', 'median_err'):>13.3f}"
          f" {med('none', 'median_err'):>12.3f} | {med('median', 'worst_err'):>6.3f} {med('none', 'worst_err'):>12.3f}")


if __name__ == "__main__":
    main()
