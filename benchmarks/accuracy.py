"""Accuracy per compute on the noisy quadratic, whose optimal learning rate is known exactly.

At equal trial budgets, the tuner with its defaults against what people do today:

* a grid: a fixed number of log-spaced learning rates at every batch size, no pruning, the best
  trial per batch size (papers use about 17: the "dense grid" row, 136 trials, at every budget);
* plain Optuna as a user writes it: TPE over the learning rate and the batch size (a categorical),
  Optuna's MedianPruner, the best trial per batch size;
* random search over both, no pruning, the best trial per batch size.

Every method trains the same workload through ``tuner.workload.run_trial`` with the same per-trial
seeds, so outcomes and samples are recorded identically. "Samples" is the sum over trials of the
training samples each processed: up to its last report, or for a diverged run up to the report
where it blew up. The tuner's per-batch estimate is its fitted optimum (``tuner fit``), and its best
trial per batch size is shown too. "Rule" is the worst error over batch sizes of the rule ``tuner
fit`` recommends from each method's trials (the baselines get the tuner's fit for free). A batch
size with no complete trial has no estimate: its error shows as "none".
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.pruners import MedianPruner, NopPruner
from optuna.samplers import GridSampler, RandomSampler, TPESampler
from optuna.trial import TrialState

from benchmarks.fit_accuracy import QUADRATIC_SIZES, log_error, quadratic_spec, quadratic_truth, run_spec
from benchmarks.report import Goal, Section, factor, log, ratio, thousands
from tuner.errors import InputError
from tuner.fit import fit_study
from tuner.runner import WARM_START_BELOW
from tuner.trials import OUTCOME, SAMPLES, Outcome
from tuner.workload import load_workload, run_trial, trial_seed
from tuner.workloads import quadratic

LR_RANGE = (1e-4, 4.0)
DENSE_GRID = 17  # learning rates per batch size, as papers sweep them
BUDGETS = (60, 120, 240)


# --- the methods: each returns a finished in-memory study -------------------------------------------------

def tuner_defaults(seed: int, n_trials: int) -> optuna.Study:
    """`tuner run` with every search option at its default (valley sampler, per-batch median pruner)."""
    return run_spec(quadratic_spec(seed, n_trials))


def plain_optuna(seed: int, n_trials: int) -> optuna.Study:
    return _optuna_study(seed, n_trials, TPESampler(seed=seed), MedianPruner())


def random_search(seed: int, n_trials: int) -> optuna.Study:
    return _optuna_study(seed, n_trials, RandomSampler(seed=seed), NopPruner())


def grid(per_batch: int) -> Callable[[int, int], optuna.Study]:
    def grid_search(seed: int, n_trials: int) -> optuna.Study:
        lrs = np.clip(np.geomspace(*LR_RANGE, per_batch), *LR_RANGE).tolist()
        sampler = GridSampler({"batch_size": QUADRATIC_SIZES, "lr": lrs}, seed=seed)
        return _optuna_study(seed, per_batch * len(QUADRATIC_SIZES), sampler, NopPruner())
    return grid_search


def _optuna_study(seed: int, n_trials: int, sampler, pruner) -> optuna.Study:
    """A plain Optuna study of the quadratic, as a user would write the objective."""
    workload = load_workload(quadratic_spec(seed))

    def objective(trial: optuna.Trial) -> float:
        batch_size = trial.suggest_categorical("batch_size", QUADRATIC_SIZES)
        lr = trial.suggest_float("lr", *LR_RANGE, log=True)
        return run_trial(workload, trial, batch_size, lr, trial_seed(seed, trial.number))

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=sampler, pruner=pruner)
    study.optimize(objective, n_trials=n_trials)
    return study


# --- scoring one study ---------------------------------------------------------------------------------------

@dataclass
class Score:
    per_batch: dict[int, float]  # log error of the per-batch estimate (inf: none)
    rule_worst: float            # worst log error of the recommended rule over batch sizes (inf: no fit)
    samples: int
    trials: int
    pruned: int                  # stopped by the pruner (diverged trials not counted)

    @property
    def median(self) -> float:
        return statistics.median(self.per_batch.values())

    @property
    def worst(self) -> float:
        return max(self.per_batch.values())


def samples_processed(trial: optuna.trial.FrozenTrial) -> int:
    """Training samples the trial processed: a diverged run also processed the steps up to the report
    where the quadratic found it blown up (it stops there without reporting)."""
    seen = trial.user_attrs.get(SAMPLES, 0)
    if trial.user_attrs.get(OUTCOME) != Outcome.DIVERGED:
        return seen
    batch_size, options = trial.params["batch_size"], quadratic.Options()
    total_steps = options.samples // batch_size
    report_steps = np.unique(np.linspace(0, total_steps, options.reports + 1).round().astype(int))
    return int(min((s for s in report_steps * batch_size if s > seen), default=seen))


def best_trial_lrs(study: optuna.Study) -> dict[int, float]:
    """The lr of the best complete trial at each batch size: what users read off a sweep."""
    best: dict[int, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        b = t.params["batch_size"]
        if b not in best or t.value < best[b].value:
            best[b] = t
    return {b: t.params["lr"] for b, t in best.items()}


def score(study: optuna.Study, fitted_optimum: bool = False) -> Score:
    """Errors against the exact optimum. ``fitted_optimum``: per-batch estimates from ``tuner fit``
    (the tuner's answer) instead of the best trial."""
    try:
        fit = fit_study(study)
    except InputError:  # fewer than three batch sizes with an optimum inside the range
        fit = None
    if fitted_optimum and fit is not None:
        estimates = {o.batch_size: o.lr for o in fit.optima if o.lr is not None}
    else:
        estimates = best_trial_lrs(study)
    per_batch = {b: log_error(estimates[b], quadratic_truth(b)) if b in estimates else math.inf
                 for b in QUADRATIC_SIZES}
    rule_worst = math.inf if fit is None else max(log_error(fit.predict(b), quadratic_truth(b))
                                                  for b in QUADRATIC_SIZES)
    trials = study.trials
    return Score(per_batch, rule_worst, samples=sum(samples_processed(t) for t in trials), trials=len(trials),
                 pruned=sum(t.user_attrs.get(OUTCOME) == Outcome.PRUNED for t in trials))


# --- the benchmark -------------------------------------------------------------------------------------------

TUNER, TUNER_BEST, PLAIN, RANDOM = "tuner (fitted optimum)", "tuner (best trial)", "plain Optuna", "random search"
DENSE = f"dense grid ({DENSE_GRID}/batch)"


@dataclass
class Row:
    """One method at one budget: its scores over seeds, summarised by medians."""

    method: str
    budget: int
    scores: list[Score]

    def median_of(self, key: Callable[[Score], float]) -> float:
        return statistics.median(key(s) for s in self.scores)

    @property
    def samples(self) -> float:
        return self.median_of(lambda s: s.samples)

    @property
    def per_batch_median(self) -> float:
        return self.median_of(lambda s: s.median)

    @property
    def per_batch_worst(self) -> float:
        return self.median_of(lambda s: s.worst)

    @property
    def answered_worst(self) -> float:
        """The worst error over the batch sizes that have an estimate."""
        return self.median_of(lambda s: max((e for e in s.per_batch.values() if math.isfinite(e)), default=math.inf))

    @property
    def missing(self) -> float:
        return self.median_of(lambda s: sum(math.isinf(e) for e in s.per_batch.values()))

    @property
    def rule_worst(self) -> float:
        return self.median_of(lambda s: s.rule_worst)

    @property
    def pruned_share(self) -> float:
        return self.median_of(lambda s: s.pruned / s.trials)

    @property
    def full_run_share(self) -> float:
        """Samples over what the trials would have processed unpruned."""
        return self.median_of(lambda s: s.samples / (s.trials * quadratic.Options().samples))

    def reaches(self, other: Row) -> bool:
        return self.per_batch_median <= other.per_batch_median and self.per_batch_worst <= other.per_batch_worst

    def cells(self) -> list:
        return [self.budget, self.method, thousands(self.median_of(lambda s: s.trials)), thousands(self.samples),
                factor(self.per_batch_median), factor(self.per_batch_worst), factor(self.answered_worst),
                f"{self.missing:g}", factor(self.rule_worst)]


def measure(seeds: range, budgets=BUDGETS, tuner_budgets=()) -> list[Row]:
    """Every method at every budget in ``budgets``, the tuner also at ``tuner_budgets``, and the dense grid."""
    rows = []
    for budget in sorted(set(budgets) | set(tuner_budgets)):
        per_batch = max(2, budget // len(QUADRATIC_SIZES))
        methods = {TUNER: tuner_defaults}
        if budget in budgets:
            methods.update({PLAIN: plain_optuna, RANDOM: random_search, f"grid ({per_batch}/batch)": grid(per_batch)})
        for name, method in methods.items():
            log(f"  accuracy: {name}, {budget} trials, {len(seeds)} seeds")
            studies = [method(seed, budget) for seed in seeds]
            rows.append(Row(name, budget, [score(s, fitted_optimum=name == TUNER) for s in studies]))
            if name == TUNER:
                rows.append(Row(TUNER_BEST, budget, [score(s) for s in studies]))
    log(f"  accuracy: {DENSE}, {len(seeds)} seeds")
    rows.append(Row(DENSE, DENSE_GRID * len(QUADRATIC_SIZES), [score(grid(DENSE_GRID)(seed, 0)) for seed in seeds]))
    return rows


def run(seeds: int = 30, budgets=BUDGETS, tuner_budgets=(40, 44, 48, 56, 64, 80, 96)) -> Section:
    rows = measure(range(seeds), budgets, tuner_budgets)
    section = Section(
        "1. Accuracy per compute: the noisy quadratic",
        f"Built-in `quadratic` workload (16,384 samples per run), batch sizes {QUADRATIC_SIZES[0]}…"
        f"{QUADRATIC_SIZES[-1]} ({len(QUADRATIC_SIZES)}), lr in [{LR_RANGE[0]:g}, {LR_RANGE[1]:g}]. Errors "
        "are factors against the exact optimum (`tuner.workloads.quadratic.optimal_lr`): ×1.00 is exact. "
        f"Every number is a median over {seeds} seeds (per seed: the median or worst over batch sizes)."
        + "\n\n" + __doc__.split("\n\n", 1)[1].strip())
    header = ["budget", "method", "trials", "samples", "per-batch median", "per-batch worst",
              "worst where answered", "batch sizes without estimate", "rule worst"]
    main = [r for r in rows if r.budget in budgets or r.method == DENSE]
    section.table("Per method and trial budget", header, [r.cells() for r in main])
    section.table("The tuner against each baseline at equal budgets", *comparison(rows, budgets))
    dense = _find(rows, DENSE)
    section.table(f"The tuner's budget against the {DENSE}: where it reaches the grid's accuracy",
                  ["trials", "samples", "% of grid's samples", "per-batch median", "per-batch worst",
                   "rule worst", "grid's accuracy"],
                  [[r.budget, thousands(r.samples), f"{r.samples / dense.samples:.0%}", factor(r.per_batch_median),
                    factor(r.per_batch_worst), factor(r.rule_worst), "yes" if r.reaches(dense) else "no"]
                   for r in rows if r.method == TUNER] +
                  [[f"grid {dense.budget}", thousands(dense.samples), "100%", factor(dense.per_batch_median),
                    factor(dense.per_batch_worst), factor(dense.rule_worst), ""]])
    section.goals += goals(rows, budgets)
    return section


def _find(rows: list[Row], method: str, budget: int | None = None) -> Row:
    return next(r for r in rows if r.method.startswith(method) and (budget is None or r.budget == budget))


def comparison(rows: list[Row], budgets) -> tuple[list[str], list[list]]:
    header = ["budget", "baseline", "samples, tuner / baseline", "per-batch median, baseline / tuner (log)",
              "per-batch worst, baseline / tuner (log)", "rule worst, baseline / tuner (log)"]
    table = []
    for budget in budgets:
        tuner = _find(rows, TUNER, budget)
        for baseline in (_find(rows, PLAIN, budget), _find(rows, RANDOM, budget), _find(rows, "grid (", budget),
                         _find(rows, DENSE)):
            table.append([budget, f"{baseline.method}, {baseline.budget} trials",
                          ratio(tuner.samples / baseline.samples),
                          _log_ratio(baseline.per_batch_median, tuner.per_batch_median),
                          _log_ratio(baseline.per_batch_worst, tuner.per_batch_worst),
                          _log_ratio(baseline.rule_worst, tuner.rule_worst)])
    return header, table


def _log_ratio(baseline: float, tuner: float) -> str:
    """How many times smaller the tuner's log error is; "∞" where the baseline has no estimate."""
    if math.isinf(tuner):
        return "— (tuner has none)"
    if math.isinf(baseline):
        return "∞ (no estimate)"
    return ratio(baseline / tuner, 1) if tuner > 0 else "∞"


def goals(rows: list[Row], budgets) -> list[Goal]:
    dense = _find(rows, DENSE)
    tuners = sorted((r for r in rows if r.method == TUNER), key=lambda r: r.samples)
    per_batch = _grid_goal(
        "1a. the grid's per-batch accuracy with ≤ 1/3 of its samples",
        f"per-batch median and worst ≤ the {DENSE}'s ({factor(dense.per_batch_median)}, "
        f"{factor(dense.per_batch_worst)})", dense, tuners, Row.reaches,
        lambda r: f"{factor(r.per_batch_median)}, {factor(r.per_batch_worst)}")
    per_batch.why = _why_per_batch(tuners, dense)
    rule = _grid_goal(
        "1a′. the grid's rule accuracy with ≤ 1/3 of its samples",
        f"worst error of the recommended rule ≤ that of the rule fitted to the {DENSE}'s trials "
        f"({factor(dense.rule_worst)})", dense, tuners, lambda t, d: t.rule_worst <= d.rule_worst,
        lambda r: f"rule {factor(r.rule_worst)}")
    return [per_batch, rule, _optuna_goal(rows, budgets)]


def _grid_goal(name: str, accuracy: str, dense: Row, tuners: list[Row], reaches, show) -> Goal:
    """Met when the cheapest tuner run that ``reaches`` the dense grid's accuracy used ≤ 1/3 of its samples."""
    first = next((t for t in tuners if reaches(t, dense)), None)
    at_third = max((t for t in tuners if t.samples <= dense.samples / 3), key=lambda t: t.samples, default=None)
    measured = ("not reached at any budget measured" if first is None else
                f"reached at {first.budget} trials ({show(first)}) with {first.samples / dense.samples:.0%} "
                "of its samples")
    if at_third is not None and at_third is not first:
        measured += f"; at {at_third.budget} trials ({at_third.samples / dense.samples:.0%}): {show(at_third)}"
    return Goal(name, f"{accuracy} with ≤ 33% of its {thousands(dense.samples)} samples", measured,
                met=first is not None and first.samples <= dense.samples / 3)


def _why_per_batch(tuners: list[Row], dense: Row) -> str:
    at_third = max((t for t in tuners if t.samples <= dense.samples / 3), key=lambda t: t.samples, default=None)
    if at_third is None:
        return ""
    per_batch = at_third.budget / len(QUADRATIC_SIZES)
    if per_batch < WARM_START_BELOW:
        start = (f"below {WARM_START_BELOW} per batch size, each batch size's search starts where the batch "
                 "sizes searched before it found the optimum and brackets it in steps of at most ×8, "
                 "instead of spreading over the whole lr range, so most trials land in the valley")
    else:
        spread = quadratic_spec(0).search.startup_trials
        start = f"{spread} of those spread over the whole lr range before each batch size's search refines"
    return (f"within a third of the grid's samples the tuner has {at_third.budget} trials, {per_batch:.0f} "
            f"per batch size; {start}. The rule, fitted across batch sizes, pools their noise "
            f"({factor(at_third.rule_worst)}). Pruning stopped {at_third.pruned_share:.0%} of the trials; they "
            f"processed {at_third.full_run_share:.0%} of a full run's samples on average.")


def _optuna_goal(rows: list[Row], budgets) -> Goal:
    """Each plain-Optuna budget against the largest tuner run with no more trials and ≤ 1.5× its samples."""
    tuners = [r for r in rows if r.method == TUNER]
    parts, met = [], True
    for budget in budgets:
        plain = _find(rows, PLAIN, budget)
        fitting = [t for t in tuners if t.budget <= budget and t.samples <= 1.5 * plain.samples]
        tuner = max(fitting, key=lambda t: t.budget, default=None)
        if tuner is None:
            parts.append(f"plain {budget}: no tuner run within 1.5× its samples")
            met = False
            continue
        smaller = plain.per_batch_worst / tuner.per_batch_worst if tuner.per_batch_worst else math.inf
        met &= smaller >= 3
        answered = plain.answered_worst / tuner.per_batch_worst if tuner.per_batch_worst else math.inf
        ratio_text = (f"∞ ({answered:.1f}× against its worst where it has one, {factor(plain.answered_worst)})"
                      if math.isinf(smaller) else f"{smaller:.1f}×")
        at = "" if tuner.budget == budget else f" at {tuner.budget} trials"
        parts.append(f"{budget} trials: plain Optuna {factor(plain.per_batch_worst)}, tuner{at} "
                     f"{factor(tuner.per_batch_worst)} with {tuner.samples / plain.samples:.2f}× the samples: "
                     f"{ratio_text} smaller")
    plain = [r for r in rows if r.method == PLAIN]
    why = (f"plain Optuna's MedianPruner compares every batch size at equal samples seen, where large batches "
           f"are behind: it stopped {statistics.median(r.pruned_share for r in plain):.0%} of its trials (the "
           f"trials processed {statistics.median(r.full_run_share for r in plain):.0%} of a full run's samples), "
           f"so it spends fewer samples per trial than the tuner "
           f"({statistics.median(r.full_run_share for r in tuners):.0%}) and leaves a median of "
           f"{statistics.median(r.missing for r in plain):g} batch sizes with no complete trial at all.")
    return Goal("1b. worst per-batch error ≥ 3× smaller (log) than plain Optuna's with ≤ 1.5× its samples",
                "at every budget (the tuner run with the most trials, no more than plain Optuna's, "
                "within 1.5× its samples)", "; ".join(parts), met=met, why=why)


if __name__ == "__main__":
    print(run(seeds=3).markdown())
