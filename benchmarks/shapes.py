"""Held-out shapes: is the answer right on valleys nobody tuned the tool for?

    python -m benchmarks.shapes                       # 100 shapes, 2 seeds each (about 4 minutes)
    python -m benchmarks.shapes --shapes 200 --seeds 3 --worst 20

The panel's synthetic valleys share one shape (a quadratic in log-lr, twice as steep above, a cliff
at ×2.01, Gaussian noise) and vary only the law and the noise. Here every shape is drawn at random
from a family wider than anything the tool was developed against, and the draw is seeded by the
shape's number, so shape 17 is the same shape on every machine:

* **the law** lr*(B): a power law (exponent 0…1), a saturating one (linear or square-root up to a
  bend, flat beyond), or a surge (Adam: rises to a peak batch size, falls beyond);
* **the valley** in z = log(lr / lr*): 1 + depth·|z|^p, p = 1.5 (sharp), 2 or 3 (flat-bottomed),
  steeper above or below by up to ×4, shallow (depth 0.2) to deep (3);
* **the cliff**: none, or runs diverge beyond ×1.35…×4.5 of the optimum, some of them already up to
  0.3 (log) below it (a stability edge where some seeds blow up and others train);
* **the noise**: 0.5%…15% of the metric at the optimum (of an accuracy's rise above chance),
  Gaussian or heavy-tailed (Student's t, 3 degrees of freedom), constant or growing above the
  optimum (as the CNN with Adam's does), small where an accuracy is near chance;
* **the metric**: a loss, or an accuracy-like score (maximized) that falls to a chance plateau far
  from the optimum; some trainers report the untrained model's metric at step 0, some do not.

Each shape is a study with the default search, 16 trials a batch size, scored against the closed
form as the panel scores (``benchmarks.panel``): per-batch regret, the recommended rule's regret,
flags. Judge it by the worst cells, and read what they share from the listing.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from benchmarks.panel import pct
from benchmarks.panel_workloads import PanelWorkload
from benchmarks.report import Section

REGRET_LIMIT = 0.10  # twice the panel's synthetic worst-regret target: an estimate past it must be flagged
TRIALS_PER_BATCH = 16
REPORTS = 4


@dataclass(frozen=True)
class Shape:
    number: int
    lr0: float             # the optimum at the smallest batch size
    law: str               # "power", "saturating" or "surge"
    alpha: float           # the law's exponent (below the bend)
    bend: float            # saturating / surge: the batch size where the law bends
    sizes: tuple[int, ...]  # the batch sizes searched
    depth: float           # the metric at z = -1 is (1 + depth) times the optimum's (before the metric's map)
    power: float           # the valley's exponent in |z|
    steep_above: float     # the valley is this many times steeper above the optimum than below
    cliff: float | None    # every run diverges above z = cliff
    edge: float            # below the cliff, runs diverge with a probability rising from 0 over this width
    noise: float           # one run's standard deviation, relative to the metric at the optimum (a loss) or
    #                        to its rise above chance (an accuracy)
    tail: bool             # Student's t (3 degrees of freedom) instead of Gaussian
    grow: float            # the noise is (1 + grow·z) times larger at 0 < z < 1, (1 + grow) beyond
    maximize: bool         # an accuracy-like score instead of a loss
    chance: float          # maximize: the score far from the optimum
    top: float             # maximize: the score at the optimum
    reports_start: bool    # the trainer reports the untrained model's metric at step 0

    @classmethod
    def draw(cls, number: int) -> Shape:
        rng = np.random.default_rng([20261205, number])
        law = str(rng.choice(["power", "power", "saturating", "surge"]))
        start = int(rng.choice([8, 16, 32]))
        sizes = tuple(start * 2 ** i for i in range(int(rng.integers(5, 8))))
        cliff = float(rng.uniform(0.3, 1.5)) if rng.uniform() < 0.7 else None
        maximize = bool(rng.uniform() < 0.3)
        return cls(number=number, lr0=float(np.exp(rng.uniform(math.log(1e-3), math.log(0.1)))), law=law,
                   alpha=float(rng.uniform(0.0, 1.0)) if law == "power" else float(rng.choice([0.5, 1.0])),
                   bend=float(start * 2 ** rng.uniform(1, len(sizes) - 2)), sizes=sizes,
                   depth=float(np.exp(rng.uniform(math.log(0.2), math.log(3.0)))),
                   power=float(rng.choice([1.5, 2.0, 2.0, 3.0])),
                   steep_above=float(np.exp(rng.uniform(math.log(1 / 3), math.log(4.0)))),
                   cliff=cliff, edge=0.0 if cliff is None else float(rng.uniform(0.0, min(0.3, cliff / 2))),
                   noise=float(np.exp(rng.uniform(math.log(0.005), math.log(0.15)))),
                   tail=bool(rng.uniform() < 0.3), grow=float(rng.choice([0.0, 0.0, 1.0, 3.0])),
                   maximize=maximize, chance=float(rng.choice([0.1, 0.5])) if maximize else 0.0,
                   top=float(rng.uniform(0.7, 0.99)) if maximize else 0.0, reports_start=bool(rng.uniform() < 0.5))

    # --- the truth ---------------------------------------------------------------------------------------

    def optimum(self, batch_size: int) -> float:
        r = batch_size / self.sizes[0]
        if self.law == "power":
            return self.lr0 * r ** self.alpha
        b = batch_size / self.bend
        b0 = self.sizes[0] / self.bend
        if self.law == "saturating":  # (B / (1 + B/bend))^alpha: the law up to the bend, flat beyond
            return self.lr0 * (b / (1 + b) / (b0 / (1 + b0))) ** self.alpha
        # surge: 2 / (sqrt(bend/B) + sqrt(B/bend)), highest at the bend
        return self.lr0 * (math.sqrt(1 / b0) + math.sqrt(b0)) / (math.sqrt(1 / b) + math.sqrt(b))

    def rise(self, z: float) -> float:
        """How much the loss-like level at z exceeds the optimum's, relative to it."""
        return self.depth * abs(z) ** self.power * (self.steep_above if z > 0 else 1.0)

    def metric(self, z: float) -> float:
        """The expected final metric of a run that trains."""
        if self.maximize:
            return self.chance + (self.top - self.chance) * math.exp(-self.rise(z))
        return 1.0 + self.rise(z)

    def span(self) -> float:
        """What the noise is relative to: the metric at the optimum, or an accuracy's rise above chance."""
        return self.top - self.chance if self.maximize else self.metric(0.0)

    def learned(self, z: float) -> float:
        """How much of the noise a run at z carries: an accuracy near chance varies little (a run that
        learns nothing scores chance whatever its seed); a loss carries all of it."""
        return 1.0 if not self.maximize else min(1.0, 0.05 + (self.metric(z) - self.chance) / self.span())

    def untrained(self) -> float:
        return self.chance if self.maximize else 1.0 + self.rise(-3.0)

    def blow_up(self, z: float) -> float:
        """The probability that a run at z diverges."""
        if self.cliff is None or z <= self.cliff - self.edge:
            return 0.0
        return 1.0 if z > self.cliff or self.edge == 0 else (z - (self.cliff - self.edge)) / self.edge

    def regret(self, batch_size: int, lr: float) -> float:
        z = math.log(lr / self.optimum(batch_size))
        p = self.blow_up(z)
        expected = (1 - p) * self.metric(z) + p * self.untrained()
        best = self.metric(0.0)
        return (best - expected) / best if self.maximize else expected / best - 1.0

    # --- the workload ------------------------------------------------------------------------------------

    def train(self, run) -> float:
        z = math.log(run.lr / self.optimum(run.batch_size))
        rng = np.random.default_rng(run.seed)
        diverges = rng.uniform() < self.blow_up(z)
        if self.reports_start:
            run.report(0, self.untrained())
        scale = self.noise * self.span() * (1 + self.grow * min(max(z, 0.0), 1.0)) * self.learned(z)
        for k in range(1, REPORTS + 1):
            if diverges and k == 2:
                raise FloatingPointError(f"diverged at z={z:.2f}")
            # a slow start: lower learning rates are further from their end at the early reports
            lag = (1 - k / REPORTS) * (1 + max(0.0, -z))
            level = self.metric(z) + lag * (self.untrained() - self.metric(z)) / 2
            draw = rng.standard_t(3) / math.sqrt(3) if self.tail else rng.standard_normal()
            value = level + scale * draw
            value = min(max(value, 0.0), 1.0) if self.maximize else max(value, 0.01)
            run.report(k * 4096, value)
        return value

    def workload(self) -> PanelWorkload:
        return PanelWorkload(f"shape-{self.number}", "synthetic", self.describe(), self.train, self,
                             list(self.sizes), (1e-5, 10.0), TRIALS_PER_BATCH * len(self.sizes),
                             maximize=self.maximize)

    def describe(self) -> str:
        law = (f"B^{self.alpha:.2f}" if self.law == "power"
               else f"{self.law} (B^{self.alpha:g}, bend {self.bend:.0f})")
        cliff = "no cliff" if self.cliff is None else f"cliff ×{math.exp(self.cliff):.2f} (edge {self.edge:.2f})"
        return (f"{law}; |z|^{self.power:g}, depth {self.depth:.2f}, ×{self.steep_above:.2f} above; {cliff}; "
                f"noise {self.noise:.1%}{' t3' if self.tail else ''}{f' grows ×{self.grow:g}' if self.grow else ''}"
                f"{'; accuracy' if self.maximize else ''}")


# --- running and scoring -------------------------------------------------------------------------------------

def run_one(number: int, seed: int) -> dict:
    import optuna

    from benchmarks.panel import _score, tuner_study

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    shape = Shape.draw(number)
    workload = shape.workload()
    study = tuner_study(workload, seed, workload.n_trials)
    return {"shape": number, "seed": seed, **_score(workload, study, best_trial=False)}


def run(shapes: int, seeds: int, jobs: int, first: int = 0) -> list[dict]:
    work = [(n, s) for n in range(first, first + shapes) for s in range(seeds)]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(run_one, *zip(*work)))


def cells(rows: list[dict]) -> list[dict]:
    """Every batch size of every study, with its shape's features."""
    out = []
    for row in rows:
        shape = Shape.draw(row["shape"])
        for b, p in row["per_batch"].items():
            regret = math.inf if p["regret"] is None else p["regret"]
            out.append({"shape": shape, "seed": row["seed"], "batch_size": int(b), "regret": regret,
                        "flags": p["flags"], "lr": p["lr"], "truth": p["truth"],
                        "best_trial": p["best_trial_regret"], "method": p["method"]})
    return out


FEATURES = {
    "law": lambda s: s.law,
    "valley |z|^p": lambda s: f"p={s.power:g}",
    "steeper": lambda s: "above" if s.steep_above > 1.5 else "below" if s.steep_above < 1 / 1.5 else "even",
    "cliff": lambda s: "none" if s.cliff is None else "edge" if s.edge > 0.1 else "sharp",
    "noise": lambda s: "<2%" if s.noise < 0.02 else "2-6%" if s.noise < 0.06 else ">6%",
    "tails": lambda s: "t3" if s.tail else "Gaussian",
    "noise grows above": lambda s: "yes" if s.grow else "no",
    "metric": lambda s: "accuracy" if s.maximize else "loss",
}


def table(rows: list[dict]) -> tuple[list[str], list[list]]:
    found = cells(rows)
    rules = defaultdict(list)
    for row in rows:
        rules[row["shape"]].append(max(row["rule"].values()) if row["rule"] else math.inf)
    header = ["feature", "value", "cells", "per-batch median", "worst", "best trial's worst",
              f"unflagged > {REGRET_LIMIT:.0%}", "flagged", "rule worst"]
    out = []
    for feature, key in [("all", lambda s: "all"), *FEATURES.items()]:
        groups = defaultdict(list)
        for c in found:
            groups[key(c["shape"])].append(c)
        for value, group in sorted(groups.items()):
            shapes = {c["shape"].number for c in group}
            out.append([feature, value, len(group), pct(statistics.median(c["regret"] for c in group)),
                        pct(max(c["regret"] for c in group)),
                        pct(max(c["best_trial"] if c["best_trial"] is not None else math.inf for c in group)),
                        sum(not c["flags"] and c["regret"] > REGRET_LIMIT for c in group),
                        f"{statistics.mean(bool(c['flags']) for c in group):.0%}",
                        pct(max(r for n in shapes for r in rules[n]))])
    return header, out


def worst_cells(rows: list[dict], count: int) -> list[str]:
    found = sorted(cells(rows), key=lambda c: -c["regret"])[:count]
    return [f"shape {c['shape'].number} seed {c['seed']} B={c['batch_size']}: {pct(c['regret'])} "
            f"(×{c['lr'] / c['truth']:.2f}, {c['method']}{', ' + ','.join(c['flags']) if c['flags'] else ''}; "
            f"best trial {pct(c['best_trial'])}) — {c['shape'].describe()}"
            if c["lr"] else f"shape {c['shape'].number} seed {c['seed']} B={c['batch_size']}: no estimate "
            f"({','.join(c['flags'])}) — {c['shape'].describe()}" for c in found]


def section(rows: list[dict], command: str, worst: int = 10) -> Section:
    """The results as a section of RESULTS.md."""
    intro = __doc__.split("\n\n", 2)[2].strip()
    result = Section("11. Held-out shapes: valleys nobody tuned the tool for", intro)
    shapes, seeds = len({r["shape"] for r in rows}), len({r["seed"] for r in rows})
    result.table(f"Regret in % of the metric at the truth's optimum, {shapes} shapes × {seeds} seeds, "
                 "by what the shapes share", *table(rows))
    result.notes.append(f"The {worst} worst cells (regret; the estimate as a multiple of the truth; how it "
                        "was read; flags):\n\n" + "\n".join(f"  - {line}" for line in worst_cells(rows, worst)))
    result.notes.append(f"Produced by `{command}`.")
    return result


def run_section(shapes: int = 100, seeds: int = 2, jobs: int = 2, command: str = "python -m benchmarks.shapes"
                ) -> Section:
    return section(run(shapes, seeds, jobs), command)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shapes", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, default=100, help="how many shapes to draw (default 100)")
    parser.add_argument("--first", type=int, default=0, help="the first shape's number (default 0)")
    parser.add_argument("--seeds", type=int, default=2, help="studies per shape (default 2)")
    parser.add_argument("--jobs", type=int, default=2, help="studies run at once (default 2)")
    parser.add_argument("--worst", type=int, default=10, help="list this many of the worst cells (default 10)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.shapes", *(sys.argv[1:] if argv is None else argv)])
    print(section(run(args.shapes, args.seeds, args.jobs, args.first), command, args.worst).markdown())


if __name__ == "__main__":
    main()
