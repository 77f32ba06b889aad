"""How accurate is `tuner fit`? Studies run with the real tuner on workloads whose optimum is known exactly.

    python -m benchmarks.fit_accuracy             # all four tables, 5 seeds (about three minutes)
    python -m benchmarks.fit_accuracy --seeds 15  # steadier medians

1. The built-in noisy quadratic, 8 batch sizes 8…1024, 150 trials: per-batch optimum error (median
   and worst factor against the exact optimum), interval coverage, and each rule's worst factor.
2. Synthetic losses whose optimum is lr = 0.01 (B/16)^alpha exactly (asymmetric valley, divergence
   cliff, 5% noise), 120 trials over 6 batch sizes: the alpha interval, its width and coverage.
3. A sweep as users run one: five learning rates a fixed step apart (×√2, ×2, ×3.16) at every batch
   size of the panel's synthetic valleys, the optimum anywhere between two of them, one to three runs
   each; `tuner fit`'s regret against the best run's and a plain quadratic's through every run.
4. Fitting a study of 10,000 trials, loading it from each kind of storage included.

A factor is exp(|log(estimate / truth)|): 1.00 is exact. Each summary is the median over seeds.
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import InMemoryStorage

from tuner.fit import RULE_NAMES, fit_study
from tuner.runner import open_study, run_study
from tuner.spec import StudySpec, parse_spec
from tuner.workload import Workload, load_workload
from tuner.workloads import quadratic

QUADRATIC_SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
SYNTHETIC_SIZES = [16, 32, 64, 128, 256, 512]


# --- workloads with a known optimum ---------------------------------------------------------------

def quadratic_spec(seed: int, n_trials: int = 150, sizes: list[int] = QUADRATIC_SIZES) -> StudySpec:
    return parse_spec({
        "study": {"name": f"quadratic-{seed}", "n_trials": n_trials, "seed": seed},
        "search": {"lr": [1e-4, 4.0], "batch_sizes": sizes},
        "workload": {"target": "quadratic", "samples": 16384},
    })


def quadratic_truth(batch_size: int) -> float:
    return quadratic.optimal_lr(batch_size, samples=16384)


def power_law_truth(alpha: float, lr0: float = 0.01, b0: int = 16) -> Callable[[int], float]:
    return lambda batch_size: lr0 * (batch_size / b0) ** alpha


def power_law_workload(alpha: float, noise: float = 0.05, cliff: float = 0.7, maximize: bool = False) -> Workload:
    """A loss whose optimum is exactly ``power_law_truth(alpha)``. In z = log(lr / optimum) the valley
    is twice as steep above the optimum as below, runs diverge for z > ``cliff``, every report carries
    ``noise`` relative Gaussian noise, and small learning rates converge slowly (so the pruner has
    work). With ``maximize`` the metric is an accuracy-like 1 - loss."""
    truth = power_law_truth(alpha)

    def train(run) -> float:
        z = math.log(run.lr / truth(run.batch_size))
        if z > cliff:
            raise FloatingPointError(f"diverged at z={z:.2f}")
        final = 0.3 + 0.5 * z * z * (2.0 if z > 0 else 1.0)
        rng = np.random.default_rng(run.seed)
        for k in range(1, 5):
            value = (final + (1 - k / 4) * (0.5 + max(0.0, -z))) * (1.0 + noise * rng.standard_normal())
            run.report(k * 4096, 1.0 - value if maximize else value)
        return 1.0 - value if maximize else value

    return Workload(target=f"power-law-{alpha}", train=train, options={})


def synthetic_spec(alpha: float, seed: int, n_trials: int = 120, sizes: list[int] = SYNTHETIC_SIZES,
                   maximize: bool = False) -> StudySpec:
    return parse_spec({
        "study": {"name": f"power-{alpha}-{seed}", "n_trials": n_trials, "seed": seed,
                  "direction": "maximize" if maximize else "minimize"},
        "search": {"lr": [1e-4, 10.0], "batch_sizes": sizes},
        "workload": {"target": f"power-law-{alpha}"},
    })


def run_spec(spec: StudySpec, workload: Workload | None = None) -> optuna.Study:
    """A whole study in memory, with the real sampler, pruner and runner."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = open_study(spec, InMemoryStorage())
    run_study(study, spec, workload or load_workload(spec))
    return study


def log_error(estimate: float, truth: float) -> float:
    return abs(math.log(estimate / truth))


# --- one study each ---------------------------------------------------------------------------------

def quadratic_row(seed: int, n_trials: int = 150, sizes: list[int] = QUADRATIC_SIZES) -> dict:
    """One fitted quadratic study against the exact optimum (errors in log units)."""
    result = fit_study(run_spec(quadratic_spec(seed, n_trials, sizes)))
    measured = [o for o in result.optima if o.lr is not None]
    return {
        "per_batch": {o.batch_size: log_error(o.lr, quadratic_truth(o.batch_size)) for o in measured},
        "covered": statistics.mean(o.ci[0] <= quadratic_truth(o.batch_size) <= o.ci[1] for o in measured),
        "recommended": result.recommended,
        "rule_worst": {name: max(log_error(result.predict(b, name), quadratic_truth(b)) for b in sizes)
                       for name in RULE_NAMES},
        "critical": result.critical_batch_size,
    }


def power_law_row(alpha: float, seed: int, n_trials: int = 120, sizes: list[int] = SYNTHETIC_SIZES,
                  maximize: bool = False) -> dict:
    """The power law's exponent and interval from one synthetic study, against the true alpha."""
    spec = synthetic_spec(alpha, seed, n_trials, sizes, maximize)
    result = fit_study(run_spec(spec, power_law_workload(alpha, maximize=maximize)))
    truth = power_law_truth(alpha)
    low, high = result.rules["power"].alpha_ci
    return {
        "alpha": result.rules["power"].alpha, "ci": (low, high), "holds": low <= alpha <= high,
        "tells_1_from_half": not (low <= 1.0 <= high and low <= 0.5 <= high),
        "recommended": result.recommended,
        "per_batch": [log_error(o.lr, truth(o.batch_size)) for o in result.optima if o.lr],
        "rule_worst": max(log_error(result.predict(b), truth(b)) for b in sizes),
    }


# --- tables -----------------------------------------------------------------------------------------

def _x(log_errors) -> str:
    """The median of log errors, as a factor."""
    return f"×{math.exp(statistics.median(log_errors)):.3f}"


def quadratic_table(seeds: range) -> None:
    print(f"\n1. Noisy quadratic, batch sizes {QUADRATIC_SIZES[0]}…{QUADRATIC_SIZES[-1]}, 150 trials; "
          "factors against the exact optimum")
    header = ["seed", "per-batch median", "per-batch worst", "CI coverage", "recommended", "its worst",
              "B_noise", *RULE_NAMES]
    widths = [max(len(h), 10) for h in header]
    rows = []
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))

    def line(label, per_batch_median, per_batch_worst, covered, recommended, its_worst, critical, worst_by_rule):
        cells = [label, per_batch_median, per_batch_worst, covered, recommended, its_worst, critical, *worst_by_rule]
        print("  ".join(str(c).rjust(w) for c, w in zip(cells, widths)))

    for seed in seeds:
        row = quadratic_row(seed)
        rows.append(row)
        errors = list(row["per_batch"].values())
        line(seed, _x([statistics.median(errors)]), _x([max(errors)]), f"{row['covered']:.0%}",
             row["recommended"], _x([row["rule_worst"][row["recommended"]]]), f"{row['critical']:.0f}",
             [_x([row["rule_worst"][n]]) for n in RULE_NAMES])
    line("median", _x([statistics.median(r["per_batch"].values()) for r in rows]),
         _x([max(r["per_batch"].values()) for r in rows]), f"{statistics.median(r['covered'] for r in rows):.0%}",
         "", _x([r["rule_worst"][r["recommended"]] for r in rows]),
         f"{statistics.median(r['critical'] for r in rows):.0f}",
         [_x([r["rule_worst"][n] for r in rows]) for n in RULE_NAMES])
    print("targets: per-batch median ≤ ×1.08, worst ≤ ×1.30; recommended rule within ×1.25 at every batch size")
    print("per-batch error by batch size (median | worst over seeds):")
    print("  " + "  ".join(f"B={b}: {_x([r['per_batch'][b] for r in rows])} | "
                           f"×{math.exp(max(r['per_batch'][b] for r in rows)):.2f}" for b in QUADRATIC_SIZES))


def power_law_table(seeds: range, alphas=(1.0, 0.75, 0.5, 0.25, 0.0)) -> None:
    print(f"\n2. Synthetic power laws lr = 0.01 (B/16)^alpha, batch sizes {SYNTHETIC_SIZES[0]}…"
          f"{SYNTHETIC_SIZES[-1]}, 120 trials; medians over {len(seeds)} seeds")
    print(f"{'alpha':>5}  {'estimate':>8}  {'CI width':>8}  {'holds truth':>11}  {'tells 1 from 0.5':>16}  "
          f"{'per-batch median':>16}  {'recommended':>24}  {'its worst':>9}")
    for alpha in alphas:
        rows = [power_law_row(alpha, seed) for seed in seeds]
        picks = Counter(r["recommended"] for r in rows)
        print(f"{alpha:>5.2f}  {statistics.median(r['alpha'] for r in rows):>8.3f}  "
              f"{statistics.median(r['ci'][1] - r['ci'][0] for r in rows):>8.3f}  "
              f"{sum(r['holds'] for r in rows):>5}/{len(rows):<5}  "
              f"{sum(r['tells_1_from_half'] for r in rows):>10}/{len(rows):<5}  "
              f"{_x([statistics.median(r['per_batch']) for r in rows]):>16}  "
              f"{', '.join(f'{n} {c}' for n, c in picks.most_common()):>24}  "
              f"{_x([r['rule_worst'] for r in rows]):>9}")
    print("targets: alpha interval width ≤ 0.25 and holding the truth")


def sweep_study(workload, step: float, runs: int, rng: np.random.Generator) -> tuple[optuna.Study, dict]:
    """A sweep of a panel workload: at every batch size five learning rates ``step`` (log) apart around
    the optimum times a factor within half a step, ``runs`` seeds each (a blow-up stored as an infinite
    value). Also returns each batch size's runs as (log-lr, values)."""
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    from benchmarks.panel_workloads import _oracle_run

    study = optuna.create_study(direction="maximize" if workload.maximize else "minimize")
    distributions = {"batch_size": IntDistribution(1, 4096, log=True),
                     "lr": FloatDistribution(*workload.lr_range, log=True)}
    swept = {}
    for b in workload.batch_sizes:
        x = math.log(workload.truth.optimum(b)) + rng.uniform(-step / 2, step / 2) + step * np.arange(-2, 3)
        x = np.repeat(x, runs)
        values = np.array([_oracle_run(workload, b, math.exp(xi), int(rng.integers(2**31))) for xi in x])
        swept[b] = (x, values)
        for xi, value in zip(x, values):
            study.add_trial(create_trial(value=float(value), params={"batch_size": b, "lr": math.exp(xi)},
                                         distributions=distributions))
    return study, swept


# (step between learning rates, runs at each): as users sweep
SWEEPS = ((1.414, 3), (2.0, 1), (2.0, 3), (3.162, 2))


def sweep_table(seeds: range, names=("valley-sqrt-5%", "valley-0.75-15%"), sweeps=SWEEPS) -> None:
    from benchmarks.panel_workloads import _vertex, panel

    workloads = {w.name: w for w in panel()}
    print(f"\n3. A user's sweep: 5 learning rates a step apart at every batch size, the optimum anywhere between two; "
          f"regret in % of the metric, {len(seeds)} seeds × 6 batch sizes")
    print(f"{'':>16}  {'':>5}  {'':>4}  {'tuner fit':^24}  {'best run':^24}  {'plain quadratic':^24}")
    print(f"{'workload':>16}  {'step':>5}  {'runs':>4}" + "  median    95th  over 5%" * 3)
    for name in names:
        workload = workloads[name]
        for step, runs in sweeps:
            found = {"fit": [], "best": [], "quadratic": []}
            for seed in seeds:
                study, swept = sweep_study(workload, math.log(step), runs, np.random.default_rng(seed))
                for optimum in fit_study(study).optima:
                    b, (x, values) = optimum.batch_size, swept[optimum.batch_size]
                    best = x[np.argmin(values)]
                    for key, lr in (("fit", optimum.own_lr), ("best", math.exp(best)),
                                    ("quadratic", math.exp(_vertex(x, values, best)))):
                        found[key].append(100 * workload.truth.regret(b, lr) if lr else math.inf)
            print(f"{name:>16}  ×{step:<4.2f}  {runs:>4}" + "".join(_regrets(np.array(found[key]))
                                                                 for key in ("fit", "best", "quadratic")))
    print("a batch size without an estimate, or past the cliff (the plain quadratic knows none), loses 'inf'")


def _regrets(regret: np.ndarray) -> str:
    """Median, 95th percentile (an infinite one stays infinite) and share over 5%, in one column group."""
    return (f"  {np.median(regret):>5.1f}%  {np.percentile(regret, 95, method='higher'):>5.1f}%  "
            f"{np.mean(regret > 5):>7.0%}")


def big_study(n_trials: int, storage, seed: int = 0) -> optuna.Study:
    """A study of ``n_trials`` finished trials over 8 batch sizes (power law 0.75), written directly."""
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    rng = np.random.default_rng(seed)
    truth = power_law_truth(0.75)
    distributions = {"batch_size": IntDistribution(16, 2048, log=True),
                     "lr": FloatDistribution(1e-4, 10.0, log=True)}
    trials = []
    for i in range(n_trials):
        b = int(2 ** (4 + i % 8))
        lr = float(np.clip(truth(b) * math.exp(rng.normal(0, 1.0)), 1e-4, 10.0))
        z = math.log(lr / truth(b))
        params = {"batch_size": b, "lr": lr}
        if z > 0.7:
            trials.append(create_trial(state=TrialState.PRUNED, params=params, distributions=distributions,
                                       user_attrs={"outcome": "diverged"}))
        else:
            value = (0.3 + 0.5 * z * z * (2.0 if z > 0 else 1.0)) * (1 + 0.05 * rng.standard_normal())
            trials.append(create_trial(value=value, params=params, distributions=distributions,
                                       intermediate_values={4096: 2 * value, 8192: value}))
    study = optuna.create_study(study_name="big", storage=storage)
    study.add_trials(trials)
    return study


def timing_table(n_trials: int = 10_000) -> None:
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    print(f"\n4. Fitting a study of {n_trials:,} trials over 8 batch sizes: seconds, loading the study included")
    folder = Path(tempfile.mkdtemp(prefix="fit-benchmark-"))
    storages = {
        "in-memory": InMemoryStorage,
        "journal file": lambda: JournalStorage(JournalFileBackend(str(folder / "big.journal"))),
        "sqlite": lambda: RDBStorage(f"sqlite:///{folder / 'big.db'}"),
    }
    for label, make in storages.items():
        storage = make()
        big_study(n_trials, storage)
        start = time.perf_counter()
        # a fresh storage object, as `tuner fit` in a new process would open it
        fit_study(optuna.load_study(study_name="big", storage=storage if label == "in-memory" else make()))
        print(f"  {label:<13} {time.perf_counter() - start:6.2f} s")
    print("target: ≤ 5 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per configuration (default: 5)")
    seeds = range(parser.parse_args().seeds)
    quadratic_table(seeds)
    power_law_table(seeds)
    sweep_table(seeds)
    timing_table()


if __name__ == "__main__":
    main()
