"""The benchmark panel: is the answer right on workloads of different shapes, judged against a truth?

    python -m benchmarks.panel                          # every workload, every method (about an hour)
    python -m benchmarks.panel --only quadratic,cnn-adam-loss --seeds 3 --methods tuner,baseline

For every workload of ``benchmarks.panel_workloads`` and every method, studies are run in memory
with the default search, once per seed, and scored against the workload's truth:

* **per-batch regret**: how much worse the expected final metric is at the per-batch optimum the
  method reports than at the truth's optimum, in % of the metric there;
* **rule regret**: the same at the learning rate the recommended rule gives at each batch size;
* **reference B**: the per-batch regret at the reference batch size, the estimate the verdict scales
  the linear and square-root rules from ("the linear rule would over-shoot ×4 at B=1024");
* **unflagged > target**: per-batch estimates with more than twice the regret target that carry no flag
  (the target: 5% on synthetic workloads, 15% on real ones);
* **noise / seeds' scatter**: on a dense grid's truth, the fit's noise (one run's standard deviation)
  over the grid seeds' scatter, at the truth's optimum and where the estimate lies (median; 1 is
  honest, below 1 turns luck into bounds);
* **samples**: training samples the study processed (each trial up to its last report).

Methods: ``tuner`` (this checkout), ``baseline`` (the tuner at ``--baseline-commit``, run from a
``git archive`` of that commit: today's search and fit before this panel existed) and ``optuna`` (plain
Optuna as a user writes it: TPE over both parameters, MedianPruner, the best trial per batch size;
its rule is this checkout's fit of its trials).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.report import REPO, Goal, Section, log

METHODS = ("tuner", "baseline", "optuna")
BASELINE_COMMIT = "88e8614"  # main before issue 10: the valley search, MedianPruner's rule, the old fit
TARGETS = {"synthetic": {"median": 0.01, "worst": 0.05, "rule": 0.05},
           "real": {"median": 0.05, "worst": 0.15, "rule": 0.10}}
TARGETS["replay"] = TARGETS["real"]  # the real workloads' runs, drawn from their grids
# 6 trained seeds, not 3: a trained seed is not a fixed study (torch's CPU arithmetic differs between
# machines), and three of them put the CNN's worst cell at 44% on one machine and 36% on another
DEFAULT_SEEDS = {"synthetic": 10, "real": 6, "replay": 40}


# --- one study, scored (runs in a worker process, against whichever `tuner` is importable) -----------------

def run_one(workload_name: str, method: str, seed: int, n_trials: int | None = None) -> dict:
    import optuna

    from benchmarks.panel_workloads import panel

    workload = next(w for w in panel() if w.name == workload_name)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    n_trials = n_trials or workload.n_trials
    start = time.perf_counter()
    study = _plain_optuna(workload, seed, n_trials) if method == "optuna" else tuner_study(workload, seed, n_trials)
    seconds = time.perf_counter() - start
    import tuner

    return {"workload": workload_name, "method": method, "seed": seed, "n_trials": n_trials,
            "seconds": seconds, "tuner": str(Path(tuner.__file__).parent),
            **_score(workload, study, best_trial=method == "optuna")}


def tuner_study(workload, seed: int, n_trials: int):
    """The study ``tuner run`` makes of ``workload`` with the default search, in memory."""
    from optuna.storages import InMemoryStorage

    from tuner.runner import open_study, run_study
    from tuner.spec import parse_spec
    from tuner.workload import Workload

    spec = parse_spec({
        "study": {"name": f"{workload.name}-{seed}", "n_trials": n_trials, "seed": seed,
                  "direction": "maximize" if workload.maximize else "minimize"},
        "search": {"lr": list(workload.lr_range), "batch_sizes": workload.batch_sizes},
        "workload": {"target": f"panel:{workload.name}"},
    })
    study = open_study(spec, InMemoryStorage())
    run_study(study, spec, Workload(target=f"panel:{workload.name}", train=workload.train, options={}))
    return study


def _plain_optuna(workload, seed: int, n_trials: int):
    import optuna

    from tuner.workload import run_trial, trial_seed

    def objective(trial):
        batch_size = trial.suggest_categorical("batch_size", workload.batch_sizes)
        lr = trial.suggest_float("lr", *workload.lr_range, log=True)
        return run_trial(_Target(workload), trial, batch_size, lr, trial_seed(seed, trial.number))

    study = optuna.create_study(direction="maximize" if workload.maximize else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, n_trials=n_trials, catch=(Exception,))
    return study


class _Target:
    """What ``run_trial`` needs of a workload: ``train`` and ``options``."""

    def __init__(self, workload) -> None:
        self.train, self.options, self.target = workload.train, {}, workload.name


def _score(workload, study, best_trial: bool) -> dict:
    from optuna.trial import TrialState

    from tuner.errors import InputError
    from tuner.fit import fit_study

    try:
        fit = fit_study(study)
    except InputError:
        fit = None
    per_batch = {}
    fitted = {o.batch_size: o for o in fit.optima} if fit is not None else {}
    best = _best_trials(study, workload.maximize)
    counts = Counter(t.params.get("batch_size") for t in study.get_trials(deepcopy=False))
    for b in workload.batch_sizes:
        truth = workload.truth.optimum(b)
        if best_trial:
            lr, flags, ci, method = best.get(b), [], None, "best-trial"
        else:
            o = fitted.get(b)
            lr, flags = (o.lr, list(o.flags)) if o is not None else (None, ["no-fit"])
            ci, method = (list(o.ci) if o is not None and o.ci else None), getattr(o, "method", "")
        per_batch[b] = {"lr": lr, "truth": truth, "flags": flags, "ci": ci, "method": method,
                        "regret": _regret(workload, b, lr), "noise": _noise_against_seeds(workload, b, lr, fitted),
                        "covered": None if ci is None else ci[0] <= truth <= ci[1],
                        "best_trial_regret": _regret(workload, b, best.get(b)), "trials": counts[b]}
    rule = {b: _regret(workload, b, fit.predict(b)) for b in workload.batch_sizes} if fit is not None else None
    # the batch size the verdict scales the linear and square-root rules from: its own estimate is their anchor
    reference = fit.reference_batch_size if fit is not None else None
    trials = study.get_trials(deepcopy=False)
    return {"per_batch": per_batch, "rule": rule, "recommended": fit.recommended if fit else None,
            "reference": reference,
            "samples": sum(int(t.user_attrs.get("samples", 0)) for t in trials),
            "trials": len(trials), "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "pruned": sum(t.user_attrs.get("outcome") == "pruned" for t in trials)}


def _noise_against_seeds(workload, batch_size: int, lr: float | None, fitted: dict) -> list[float] | None:
    """The fit's noise at this batch size over the grid's seed scatter, at the truth's optimum and at
    the estimate (a dense grid knows the scatter; None elsewhere, or without a noise estimate: the
    baseline's fit predates it)."""
    noise, scatter_at = getattr(fitted.get(batch_size), "noise", None), getattr(workload.truth, "scatter_at", None)
    if not noise or lr is None or scatter_at is None:
        return None
    return [noise / scatter_at(batch_size, workload.truth.optimum(batch_size)), noise / scatter_at(batch_size, lr)]


def _best_trials(study, maximize: bool) -> dict[int, float]:
    from optuna.trial import TrialState

    best = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        b, sign = t.params["batch_size"], -1.0 if maximize else 1.0
        if b not in best or sign * t.value < sign * best[b].value:
            best[b] = t
    return {b: t.params["lr"] for b, t in best.items()}


def _regret(workload, batch_size: int, lr: float | None) -> float | None:
    """None where the method gave no estimate; inf where the learning rate diverges."""
    if lr is None:
        return None
    regret = workload.truth.regret(batch_size, lr)
    return regret if math.isfinite(regret) else math.inf


# --- running many, each method against its own `tuner` ---------------------------------------------------

def _baseline_path(commit: str) -> Path:
    """A folder holding only the baseline commit's ``tuner`` package, for PYTHONPATH."""
    folder = Path(tempfile.gettempdir()) / f"tuner-baseline-{commit}"
    if not (folder / "tuner").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "tuner"], cwd=REPO, capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(folder, filter="data")
    return folder


def run_many(units: list[tuple[str, str, list[int]]], jobs: int, baseline_commit: str,
             n_trials: int | None = None) -> list[dict]:
    """Each (workload, method, seeds) unit in a subprocess of its own; results as they come."""
    from tuner.workers import threads_per_worker

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(jobs)))  # the digits MLP: ×40 slower without
    # the baseline runs in its own folder: `python -m` puts the working directory first on sys.path,
    # so its `tuner` is found before this checkout's (which still provides `benchmarks`)
    baseline = _baseline_path(baseline_commit) if any(m == "baseline" for _, m, _ in units) else REPO

    def one(unit):
        workload, method, seeds = unit
        command = [sys.executable, "-m", "benchmarks.panel", "--unit", workload, method,
                   ",".join(map(str, seeds)), *(["--trials", str(n_trials)] if n_trials else [])]
        done = subprocess.run(command, cwd=baseline if method == "baseline" else REPO, env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{workload}/{method} failed:\n{done.stderr[-3000:]}")
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        log(f"  panel: {workload} / {method} / seeds {seeds[0]}…{seeds[-1]}: "
            f"{sum(r['seconds'] for r in rows):.0f} s")
        return rows

    with ThreadPoolExecutor(jobs) as pool:
        return [row for rows in pool.map(one, units) for row in rows]


# --- summaries ----------------------------------------------------------------------------------------------

@dataclass
class Summary:
    workload: str
    kind: str
    method: str
    rows: list[dict]

    def _regrets(self, row: dict) -> list[float]:
        return [p["regret"] if p["regret"] is not None else math.inf for p in row["per_batch"].values()]

    @property
    def per_batch_median(self) -> float:
        return statistics.median(r for row in self.rows for r in self._regrets(row))

    @property
    def worst_median_seed(self) -> float:
        """The median over seeds of each seed's worst batch size."""
        return statistics.median(max(self._regrets(row)) for row in self.rows)

    @property
    def worst(self) -> float:
        return max(max(self._regrets(row)) for row in self.rows)

    @property
    def rule_worst(self) -> float:
        return max((max(row["rule"].values()) if row["rule"] else math.inf) for row in self.rows)

    @property
    def rule_median_seed(self) -> float:
        return statistics.median((max(row["rule"].values()) if row["rule"] else math.inf) for row in self.rows)

    @property
    def reference_worst(self) -> float | None:
        """The worst regret, over seeds, of the estimate the verdict scales the textbook rules from."""
        found = [_at(row["per_batch"], row["reference"])["regret"] for row in self.rows if row.get("reference")]
        return max((math.inf if r is None else r for r in found), default=None)

    @property
    def noise_against_seeds(self) -> tuple[float, float] | None:
        """The median over batch sizes and seeds of the fit's noise over the grid's seed scatter: at
        the truth's optimum, and where the estimate lies."""
        found = [p["noise"] for row in self.rows for p in row["per_batch"].values() if p.get("noise")]
        return (statistics.median(f[0] for f in found), statistics.median(f[1] for f in found)) if found else None

    def share_over(self, limit: float) -> float:
        """The share of per-batch estimates, flagged or not, with regret over ``limit``."""
        cells = [r for row in self.rows for r in self._regrets(row)]
        return sum(r > limit for r in cells) / len(cells)

    def unflagged_over(self, limit: float) -> int:
        return sum(1 for row in self.rows for p in row["per_batch"].values()
                   if not p["flags"] and p["regret"] is not None and p["regret"] > limit)

    @property
    def flagged_share(self) -> float:
        cells = [p for row in self.rows for p in row["per_batch"].values()]
        return sum(bool(p["flags"]) for p in cells) / len(cells)

    @property
    def most_flagged_in_a_seed(self) -> float:
        return max(sum(bool(p["flags"]) for p in row["per_batch"].values()) / len(row["per_batch"])
                   for row in self.rows)

    @property
    def coverage(self) -> float | None:
        covered = [p["covered"] for row in self.rows for p in row["per_batch"].values() if p["covered"] is not None]
        return statistics.mean(covered) if covered else None

    @property
    def samples(self) -> float:
        return statistics.median(row["samples"] for row in self.rows)


def _at(per_batch: dict, batch_size: int) -> dict:
    """A row's batch size, whether its keys came back from JSON (strings) or not."""
    return per_batch[batch_size] if batch_size in per_batch else per_batch[str(batch_size)]


def pct(value: float) -> str:
    return "none" if value is None or math.isinf(value) else f"{100 * value:.1f}%"


def summarize(rows: list[dict]) -> list[Summary]:
    from benchmarks.panel_workloads import panel

    kinds = {w.name: w.kind for w in panel()}
    keys = sorted({(r["workload"], r["method"]) for r in rows}, key=lambda k: (list(kinds).index(k[0]),
                                                                              METHODS.index(k[1])))
    return [Summary(w, kinds[w], m, [r for r in rows if (r["workload"], r["method"]) == (w, m)]) for w, m in keys]


def section(rows: list[dict], command: str) -> Section:
    from benchmarks.panel_workloads import panel

    summaries = summarize(rows)
    described = {w.name: w for w in panel()}
    used = sorted({s.workload for s in summaries}, key=list(described).index)
    intro = (__doc__.split("\n\n", 2)[2].strip() + "\n\nWorkloads:\n\n" +
             "\n".join(f"* `{n}` ({described[n].kind}, {len(described[n].batch_sizes)} batch sizes "
                       f"{described[n].batch_sizes[0]}…{described[n].batch_sizes[-1]}, {described[n].n_trials} "
                       f"trials{', maximized' if described[n].maximize else ''}): {described[n].description}"
                       for n in used))
    result = Section("4. The panel: regret against the truth on workloads of different shapes", intro)
    header = ["workload", "method", "seeds", "per-batch median", "worst batch (median seed)",
              "worst batch (worst seed)", "rule worst (median seed)", "rule worst (worst seed)",
              "reference B (worst seed)", "unflagged > 2× target", "flagged", "CI coverage",
              "noise / seeds' scatter (at optimum; at estimate)", "samples", "samples / baseline"]
    table = []
    for s in summaries:
        limit = 2 * TARGETS[s.kind]["worst"]
        baseline = next((b for b in summaries if b.workload == s.workload and b.method == "baseline"), None)
        coverage, noise = s.coverage, s.noise_against_seeds
        table.append([s.workload, s.method, len(s.rows), pct(s.per_batch_median), pct(s.worst_median_seed),
                      pct(s.worst), pct(s.rule_median_seed), pct(s.rule_worst), pct(s.reference_worst),
                      s.unflagged_over(limit),
                      f"{s.flagged_share:.0%} (≤{s.most_flagged_in_a_seed:.0%})",
                      "-" if coverage is None else f"{coverage:.0%}",
                      "-" if noise is None else f"{noise[0]:.2f}; {noise[1]:.2f}", f"{s.samples:,.0f}",
                      f"{s.samples / baseline.samples:.2f}" if baseline and baseline.samples else "-"])
    result.table("Regret in % of the metric at the truth's optimum (lower is better)", header, table)
    result.goals += _goals(summaries)
    result.notes += _resolutions(summaries)
    result.notes.append(f"Produced by `{command}`.")
    return result


def _resolutions(summaries: list[Summary]) -> list[str]:
    """What each grid truth can resolve (``GridTruth.resolution``), once per grid; and what each real
    or synthetic workload's budget can reach with its runs placed by an oracle (``GridTruth.oracle_regret``,
    ``synthetic_oracle_regret``), beside the share of the tuner's own estimates over the target."""
    from benchmarks.panel_workloads import ORACLE_RATES, GridTruth, load_grid, panel, synthetic_oracle_regret

    measured = {s.workload: s for s in summaries if s.method == "tuner"}
    workloads = [w for w in panel() if w.name in measured]
    notes = []
    for truth in sorted({w.truth for w in workloads if isinstance(w.truth, GridTruth)},
                        key=lambda t: (t.name, t.metric)):
        median, high = truth.resolution()
        seeds = len(load_grid(truth.name)["seeds"])
        notes.append(f"The truth `{truth.name}` ({truth.metric}, {seeds} seeds) resolves regret to: its best learning "
                     f"rate from half its seeds, priced by the other half, costs {pct(median)} (median) and "
                     f"{pct(high)} (95th percentile over splits and batch sizes); regrets below that are the "
                     "truth's own seed noise.")
    for w in (w for w in workloads if w.kind in ("real", "synthetic")):
        runs, target, summary = w.n_trials // len(w.batch_sizes), TARGETS[w.kind]["worst"], measured[w.name]
        seeds = runs // ORACLE_RATES
        placed = f"{seeds * ORACLE_RATES} runs as {ORACLE_RATES} learning rates ×√2 apart around it × {seeds} seeds"
        if w.kind == "real":
            reached = f"the best mean kept: {_reach(w.truth.oracle_regret(runs), target, summary)}"
            knows = "the grid's optimum to within ×√2"
        else:
            best_mean, quadratic = synthetic_oracle_regret(w, runs)
            reached = (f"the best mean kept: {_reach(best_mean, target, summary)}; a quadratic in log-lr through "
                       f"its runs: {_reach(quadratic, target, summary)}")
            knows = "the optimum to within ×√2 (a factor drawn at random)"
        notes.append(f"`{w.name}` at its budget ({runs} runs a batch size), placed by an oracle that knows {knows} "
                     f"({placed}), {reached}. The tuner's estimates over {pct(target)}: "
                     f"{summary.share_over(target):.1%}.")
    return notes


def _reach(regrets: np.ndarray, target: float, summary: Summary) -> str:
    """An oracle's regrets, and the chance that all of this run's estimates would stay within the target."""
    over, cells = float(np.mean(regrets > target)), len(summary.rows) * len(summary.rows[0]["per_batch"])
    return (f"regret {pct(float(np.median(regrets)))} (median), {pct(float(np.percentile(regrets, 95)))} (95th "
            f"percentile), {over:.1%} over the {pct(target)} target, so all {cells} of this run's within it "
            f"with probability {(1 - over) ** cells:.0%}")


def _goals(summaries: list[Summary]) -> list[Goal]:
    goals = []
    for kind in ("synthetic", "real"):
        mine = [s for s in summaries if s.kind == kind and s.method == "tuner"]
        if not mine:
            continue
        t = TARGETS[kind]
        worst_median = max(s.per_batch_median for s in mine)
        worst = max(s.worst for s in mine)
        rule = max(s.rule_worst for s in mine)
        unflagged = sum(s.unflagged_over(2 * t["worst"]) for s in mine)
        flagged = max(s.most_flagged_in_a_seed for s in mine)
        goals.append(Goal(
            f"10. {kind} workloads: per-batch and rule regret",
            f"per-batch median ≤ {pct(t['median'])}, worst ≤ {pct(t['worst'])}; rule worst ≤ {pct(t['rule'])}",
            f"median ≤ {pct(worst_median)}, worst {pct(worst)}, rule worst {pct(rule)} (worst seed of every workload)",
            worst_median <= t["median"] and worst <= t["worst"] and rule <= t["rule"]))
        goals.append(Goal(
            f"10. {kind} workloads: no unflagged estimate beyond twice the target",
            f"0 unflagged per-batch estimates over {pct(2 * t['worst'])} in any seed; ≤ 1 batch size in 5 flagged",
            f"{unflagged} unflagged over; at most {flagged:.0%} of a seed's batch sizes flagged",
            unflagged == 0 and flagged <= 0.2))
    ratios = [(s, b) for s in summaries if s.method == "tuner"
              for b in summaries if b.workload == s.workload and b.method == "baseline" and b.samples]
    if ratios:
        worst_ratio = max(s.samples / b.samples for s, b in ratios)
        goals.append(Goal("10. samples no more than today's search at the same trial count",
                          "tuner / baseline ≤ 1.00 on every workload", f"at most {worst_ratio:.2f}",
                          worst_ratio <= 1.0))
    return goals


# --- command line -----------------------------------------------------------------------------------------

def run(only: list[str] | None = None, seeds: int | None = None, methods=METHODS, jobs: int = 2,
        baseline_commit: str = BASELINE_COMMIT, n_trials: int | None = None, cache: Path | None = None,
        command: str = "python -m benchmarks.panel") -> Section:
    from benchmarks.panel_workloads import panel

    workloads = [w for w in panel() if only is None or w.name in only]
    notes = []
    if "baseline" in methods:
        try:
            _baseline_path(baseline_commit)
        except (OSError, subprocess.CalledProcessError):
            methods = tuple(m for m in methods if m != "baseline")
            notes.append(f"The baseline was left out: commit {baseline_commit} is not in this clone.")
    units = []
    for w in workloads:
        count = seeds or DEFAULT_SEEDS[w.kind]
        chunks = max(1, min(count, jobs * 2 if w.kind == "real" else 2))
        for method in methods:
            for k in range(chunks):
                part = list(range(count))[k::chunks]
                if part:
                    units.append((w.name, method, part))
    rows = run_many(units, jobs, baseline_commit, n_trials)
    if cache is not None:
        cache.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = section(rows, command)
    result.notes += notes
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.panel", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated workload names")
    parser.add_argument("--seeds", type=int, help="seeds per workload (default: 10 synthetic, 6 real, 40 replayed)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--jobs", type=int, default=2, help="studies run at once (default 2)")
    parser.add_argument("--trials", type=int, help="trials per study instead of each workload's own")
    parser.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    parser.add_argument("--rows", type=Path, help="also write every scored study as JSON lines here")
    parser.add_argument("--unit", nargs=3, metavar=("WORKLOAD", "METHOD", "SEEDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.unit:
        workload, method, seeds = args.unit
        for seed in map(int, seeds.split(",")):
            print(json.dumps(run_one(workload, method, seed, args.trials)), flush=True)
        return
    command = " ".join(["python -m benchmarks.panel", *(sys.argv[1:] if argv is None else argv)])
    result = run(args.only.split(",") if args.only else None, args.seeds, args.methods.split(","), args.jobs,
                 args.baseline_commit, args.trials, args.rows, command)
    print(result.markdown())


if __name__ == "__main__":
    main()
