"""The benchmark panel's workloads: different shapes, each with a truth the tuner never sees while fitting.

Each ``PanelWorkload`` is a study (batch sizes, learning-rate range, direction, trials), a
``train(run)`` that follows the workload contract, and a ``Truth`` that prices any learning rate at
any batch size: ``regret(batch_size, lr)``, how much worse the expected final metric is there than
at the true optimum, as a fraction of the metric at the optimum (0.02 is 2%; inf where the run
diverges). The truth is a closed form (the noisy quadratics, the synthetic valleys) or a dense grid
of runs over several seeds stored as data (``benchmarks/data/*.json``, made by ``benchmarks.grids``).

The real workloads are written as a user would write them against the README's contract, without
the tuner's trainer where the issue that motivated the panel did the same (the CNN has its own loop),
so that the panel can also run the tuner as it was at an earlier commit.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
# how the oracles below place a batch size's runs: this many learning rates, ×√2 apart, around a guess
# that is the optimum to within ×√2
ORACLE_RATES = 5
ORACLE_STEP = math.log(math.sqrt(2.0))


# --- truths ------------------------------------------------------------------------------------------------

class Truth(Protocol):
    def optimum(self, batch_size: int) -> float:
        """The true optimal learning rate at this batch size."""

    def regret(self, batch_size: int, lr: float) -> float:
        """How much worse the expected final metric is at ``lr`` than at the optimum, as a fraction."""


@dataclass(frozen=True)
class QuadraticTruth:
    """The noisy quadratic's expected final loss, in closed form."""

    options: tuple  # sorted (key, value) pairs of the workload's options

    def _options(self) -> dict:
        return dict(self.options)

    def optimum(self, batch_size: int) -> float:
        return _quadratic_module().optimal_lr(batch_size, **self._options())

    def regret(self, batch_size: int, lr: float) -> float:
        quadratic = _quadratic_module()
        best = quadratic.expected_loss(self.optimum(batch_size), batch_size, **self._options())
        return quadratic.expected_loss(lr, batch_size, **self._options()) / best - 1.0


@lru_cache(maxsize=1)
def _quadratic_module():
    """This checkout's noisy quadratic, whichever ``tuner`` is imported (the panel also runs the tuner
    as it was at an earlier commit, whose quadratic had fewer options)."""
    import importlib.util

    import tuner.workload

    root = Path(__file__).resolve().parents[1] / "tuner"
    if not hasattr(tuner.workload, "DIVERGENCE_FACTOR"):  # an earlier commit's tuner predates the constant
        tuner.workload.DIVERGENCE_FACTOR = _assigned(root / "workload.py", "DIVERGENCE_FACTOR")  # it reads
    spec = importlib.util.spec_from_file_location("panel_quadratic", root / "workloads" / "quadratic.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the Options annotations through it
    spec.loader.exec_module(module)
    return module


def _assigned(path: Path, name: str):
    """The literal value ``name`` is assigned at the top level of the Python file at ``path``."""
    import ast

    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{name} is not assigned in {path}")


@dataclass(frozen=True)
class ValleyTruth:
    """A synthetic valley in z = log(lr / optimum(B)) with optimum lr0 (B / b0)^alpha exactly."""

    alpha: float
    lr0: float = 0.01
    b0: int = 16
    floor: float = 0.3     # the metric at the optimum
    steep_above: float = 2.0  # the valley is this many times steeper above the optimum than below
    cliff: float = 0.7     # runs diverge above z = cliff

    def optimum(self, batch_size: int) -> float:
        return self.lr0 * (batch_size / self.b0) ** self.alpha

    def form(self) -> str:
        return f"lr* = {self.lr0:g}·(B/{self.b0})^{self.alpha:g}"

    def loss(self, z: float) -> float:
        return self.floor + 0.5 * z * z * (self.steep_above if z > 0 else 1.0)

    def regret(self, batch_size: int, lr: float) -> float:
        z = math.log(lr / self.optimum(batch_size))
        return math.inf if z > self.cliff else self.loss(z) / self.floor - 1.0


@dataclass(frozen=True)
class GridTruth:
    """A dense grid of runs (``benchmarks/data/<name>.json``): the metric's mean over seeds at each
    learning rate, linearly interpolated in log-lr. A run that diverged counts as the untrained
    model's metric (what the user is left with)."""

    name: str
    metric: str      # a key of each run's record: "loss" or "accuracy"
    maximize: bool = False

    def _curve(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        return _grid_curves(self.name, self.metric)[batch_size]

    def optimum(self, batch_size: int) -> float:
        x, mean = self._curve(batch_size)
        return float(math.exp(x[np.argmax(mean) if self.maximize else np.argmin(mean)]))

    def mean_at(self, batch_size: int, lr: float) -> float:
        x, mean = self._curve(batch_size)
        return float(np.interp(math.log(lr), x, mean))

    def regret(self, batch_size: int, lr: float) -> float:
        best = self.mean_at(batch_size, self.optimum(batch_size))
        here = self.mean_at(batch_size, lr)
        return (best - here) / best if self.maximize else here / best - 1.0

    def scatter_at(self, batch_size: int, lr: float) -> float:
        """One run's standard deviation over the grid's seeds at ``lr`` (linear in log-lr between grid
        points, as the mean): what a fit's noise estimate there should come to."""
        x, _ = self._curve(batch_size)
        spread = grid_values(self.name, self.metric)[batch_size].std(axis=1, ddof=1)
        return float(np.interp(math.log(lr), x, spread))

    def resolution(self, splits: int = 400) -> tuple[float, float]:
        """How finely the grid itself can judge regret: the grid's best learning rate from half its
        seeds, priced by the other half; (median, 95th percentile) over random splits and batch sizes. A
        regret target below it cannot be told apart from the truth's own seed noise."""
        rng, regrets = np.random.default_rng(0), []
        sign = -1.0 if self.maximize else 1.0
        for runs in grid_values(self.name, self.metric).values():
            values = sign * runs  # (lr, seed), lower is better
            for _ in range(splits):
                half = rng.permutation(values.shape[1])
                chosen, judge = values[:, half[: len(half) // 2]], values[:, half[len(half) // 2:]].mean(axis=1)
                regrets.append((judge[np.argmin(chosen.mean(axis=1))] - judge.min()) / abs(judge.min()))
        return float(np.median(regrets)), float(np.percentile(regrets, 95))

    def oracle_regret(self, runs: int, rates: int = ORACLE_RATES, draws: int = 400) -> np.ndarray:
        """What ``runs`` runs a batch size can reach with their learning rates placed by an oracle: it
        knows the grid's optimum to within ×√2 (its guess is the optimum or the grid learning rate ×√2
        either side, at random), runs the ``rates`` grid learning rates ×√2 apart around the guess with
        ``runs // rates`` seeds each, drawn from the grid's, and keeps the best mean. The regrets of
        ``draws`` such experiments per batch size, priced by the whole grid (which counts the oracle's
        own runs, so errs in its favour). A target below what it reaches is below this budget's noise."""
        rng, regrets = np.random.default_rng(0), []
        sign, seeds = (-1.0 if self.maximize else 1.0), max(runs // rates, 1)
        log_lrs = np.log(np.asarray(load_grid(self.name)["lrs"], dtype=float))
        stride = max(round(ORACLE_STEP / (log_lrs[1] - log_lrs[0])), 1)  # grid steps in ×√2
        for batch_size, values in grid_values(self.name, self.metric).items():
            values = sign * values  # (lr, seed), lower is better
            best = int(np.argmin(values.mean(axis=1)))
            for _ in range(draws):
                first = best + stride * (int(rng.integers(-1, 2)) - rates // 2)
                tried = np.arange(first, first + stride * rates, stride)
                tried = tried[(tried >= 0) & (tried < len(values))]
                means = [values[i, rng.choice(values.shape[1], seeds, replace=False)].mean() for i in tried]
                regrets.append(self.regret(batch_size, float(np.exp(log_lrs[tried[int(np.argmin(means))]]))))
        return np.array(regrets)


@lru_cache(maxsize=16)
def _grid_curves(name: str, metric: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    log_lrs = np.log(np.asarray(load_grid(name)["lrs"], dtype=float))
    return {b: (log_lrs, values.mean(axis=1)) for b, values in grid_values(name, metric).items()}


@lru_cache(maxsize=16)
def grid_values(name: str, metric: str) -> dict[int, np.ndarray]:
    """Per batch size, the metric of every run as (learning rate, seed); a run that diverged counts
    as the untrained model's metric."""
    grid = load_grid(name)
    return {int(b): np.array([[grid["untrained"][metric] if r["diverged"] else r[metric] for r in per_seed]
                              for per_seed in runs], dtype=float)
            for b, runs in grid["runs"].items()}


@lru_cache(maxsize=16)
def load_grid(name: str) -> dict:
    path = DATA / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: make it with `python -m benchmarks.grids {name}`")
    return json.loads(path.read_text())


def synthetic_oracle_regret(workload: PanelWorkload, runs: int, rates: int = ORACLE_RATES,
                            draws: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """What ``runs`` runs a batch size of a synthetic workload can reach with their learning rates
    placed by an oracle: its guess is the optimum times a factor drawn uniformly (in log) from ÷√2 to
    ×√2; it runs the ``rates`` learning rates ×√2 apart around the guess with ``runs // rates`` seeds
    each, trained by the workload itself. Two estimates from those runs, each priced by the truth:
    the learning rate with the best mean (as ``GridTruth.oracle_regret``), and the vertex of a
    quadratic in log-lr fitted through every run that trained (kept within the learning rates run;
    the best mean where the quadratic has no valley). The guess is continuous here, where the grid's
    oracle lands on the grid's own optimum a third of the time: the best mean pays for the ×√2
    spacing, the quadratic does not. Returns the two arrays of regrets, ``draws`` per batch size."""
    rng, seeds = np.random.default_rng(0), max(runs // rates, 1)
    sign = -1.0 if workload.maximize else 1.0
    best_mean, quadratic = [], []
    for batch_size in workload.batch_sizes:
        for _ in range(draws):
            guess = math.log(workload.truth.optimum(batch_size)) + rng.uniform(-ORACLE_STEP, ORACLE_STEP)
            x = guess + ORACLE_STEP * (np.arange(rates) - rates // 2)
            values = sign * np.array([[_oracle_run(workload, batch_size, float(math.exp(xi)), int(rng.integers(2**31)))
                                       for _ in range(seeds)] for xi in x])
            chosen = x[int(np.argmin(values.mean(axis=1)))]
            best_mean.append(workload.truth.regret(batch_size, math.exp(chosen)))
            quadratic.append(workload.truth.regret(batch_size, math.exp(_vertex(np.repeat(x, seeds), values.ravel(),
                                                                                chosen))))
    return np.array(best_mean), np.array(quadratic)


def _vertex(x: np.ndarray, values: np.ndarray, fallback: float) -> float:
    """The vertex of a quadratic through the runs that trained, within the learning rates run;
    ``fallback`` where fewer than three learning rates trained or the quadratic has no valley."""
    trained = np.isfinite(values)
    if len(np.unique(x[trained])) < 3:
        return fallback
    curve = np.polyfit(x[trained], values[trained], 2)
    return float(np.clip(-curve[1] / (2 * curve[0]), x.min(), x.max())) if curve[0] > 0 else fallback


def _oracle_run(workload: PanelWorkload, batch_size: int, lr: float, seed: int) -> float:
    """One run's final metric, outside any study (inf, or -inf when maximized, where it diverged)."""
    from tuner.workload import Run, TrialDiverged

    run = Run(lr, batch_size, seed, direction="maximize" if workload.maximize else "minimize")
    try:
        return float(workload.train(run))
    except (FloatingPointError, TrialDiverged):
        return -math.inf if workload.maximize else math.inf


# --- workloads ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PanelWorkload:
    name: str
    kind: str                       # "synthetic" (closed-form truth) or "real" (a dense grid)
    description: str
    train: Callable                 # train(run) -> float, the README's contract
    truth: Truth
    batch_sizes: list[int]
    lr_range: tuple[float, float]
    n_trials: int
    maximize: bool = False
    options: dict = field(default_factory=dict)  # the [workload] options a study file would hold


def _quadratic(name: str, description: str, batch_sizes: list[int], lr_range, n_trials: int,
               **options) -> PanelWorkload:
    def train(run):
        return _quadratic_module().train(_WithOptions(run, options))

    return PanelWorkload(name, "synthetic", description, train, QuadraticTruth(tuple(sorted(options.items()))),
                         batch_sizes, lr_range, n_trials, options=options)


class _WithOptions:
    """A run that carries fixed workload options (the panel's workloads are not built-in targets)."""

    def __init__(self, run, options: dict) -> None:
        self._run = run
        self.lr, self.batch_size, self.seed, self.options = run.lr, run.batch_size, run.seed, options
        self.direction = getattr(run, "direction", "minimize")

    def report(self, step: int, value: float) -> None:
        self._run.report(step, value)


def valley(name: str, truth: ValleyTruth, noise: float, n_trials: int, maximize: bool = False,
            batch_sizes=(16, 32, 64, 128, 256, 512)) -> PanelWorkload:
    """Reports four times; small learning rates converge slowly (the pruner has work); every report
    carries ``noise`` relative Gaussian noise; with ``maximize`` the metric is 1 - loss."""

    def train(run) -> float:
        z = math.log(run.lr / truth.optimum(run.batch_size))
        if z > truth.cliff:
            raise FloatingPointError(f"diverged at z={z:.2f}")
        rng = np.random.default_rng(run.seed)
        for k in range(1, 5):
            value = (truth.loss(z) + (1 - k / 4) * (0.5 + max(0.0, -z))) * (1.0 + noise * rng.standard_normal())
            run.report(k * 4096, 1.0 - value if maximize else value)
        return 1.0 - value if maximize else value

    description = (f"{truth.form()} exactly; valley {truth.steep_above:g}× "
                   f"steeper above, cliff at ×{math.exp(truth.cliff):.2f}, {noise:.0%} noise per report")
    return PanelWorkload(name, "synthetic", description, train, truth, list(batch_sizes), (1e-4, 10.0), n_trials,
                         maximize=maximize)


# --- the CNN: digits 1x8x8, two convolutions, global pooling, a linear layer, Adam -------------------------

CNN_EPOCHS = 6


def cnn_run(lr: float, batch_size: int, seed: int, report: Callable[[int, float, float], None] | None = None,
            epochs: int = CNN_EPOCHS) -> tuple[float, float]:
    """Train the CNN with Adam; after every epoch call ``report(samples, loss, accuracy)`` on the
    held-out images. Returns the last (validation loss, validation accuracy); raises
    FloatingPointError when the loss is not finite."""
    import torch
    from torch import nn

    from tuner.workloads.digits import load_data

    torch.set_num_threads(1)
    (x, y), (x_valid, y_valid) = load_data()
    x, x_valid = (torch.as_tensor(a).view(-1, 1, 8, 8) for a in (x, x_valid))
    y, y_valid = torch.as_tensor(y), torch.as_tensor(y_valid)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    n, order, start = len(x), torch.empty(0, dtype=torch.long), 0
    steps, per_epoch = epochs * n // batch_size, n // batch_size
    for step in range(1, steps + 1):
        if start + batch_size > len(order):
            order, start = torch.cat([order[start:], torch.randperm(n, generator=shuffle)]), 0
        batch = order[start:start + batch_size]
        start += batch_size
        loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % per_epoch == 0 or step == steps:
            with torch.no_grad():
                out = net(x_valid)
                valid_loss = nn.functional.cross_entropy(out, y_valid).item()
                accuracy = (out.argmax(1) == y_valid).float().mean().item()
            if not math.isfinite(valid_loss):
                raise FloatingPointError(f"validation loss {valid_loss} after {step} steps")
            if report is not None:
                report(step * batch_size, valid_loss, accuracy)
    return valid_loss, accuracy


def cnn_loss(run) -> float:
    return cnn_run(run.lr, run.batch_size, run.seed, lambda s, loss, acc: run.report(s, loss))[0]


def cnn_accuracy(run) -> float:
    return cnn_run(run.lr, run.batch_size, run.seed, lambda s, loss, acc: run.report(s, acc))[1]


# --- the MLP: the built-in digits workload with SGD and momentum --------------------------------------------

MLP_OPTIONS = {"optimizer": "momentum", "epochs": 20, "evals": 5}


def mlp_momentum(run) -> float:
    from tuner.workloads import digits
    return digits.train(_WithOptions(run, MLP_OPTIONS))


# --- the real workloads replayed from their grids ---------------------------------------------------------

def replayed(workload: PanelWorkload) -> PanelWorkload:
    """``workload`` with each run drawn from its truth's grid instead of trained: from one of the two
    grid learning rates either side of the run's, the nearer one the likelier in
    proportion to the log-distance, so that the expected metric at any learning rate is the truth's
    (which interpolates linearly in log-lr between them: drawn from the nearest one instead, a run at
    ×1.09 of a grid learning rate whose neighbour above blows up in most seeds never blew up, while
    the truth priced it at 65 times the optimum's loss); one of its seeds, chosen by the run's seed;
    diverged where that run diverged. The noise is the real runs' (heavy tails included), and a
    study takes seconds, so the tails can be judged over many seeds; but a repeat may draw the same
    seed, and nothing reports a learning curve, so nothing is pruned."""
    truth = workload.truth

    def train(run) -> float:
        grid, rng = load_grid(truth.name), np.random.default_rng(run.seed)
        log_lrs = np.log(grid["lrs"])
        x = min(max(math.log(run.lr), log_lrs[0]), log_lrs[-1])
        i = min(int(np.searchsorted(log_lrs, x, side="right")) - 1, len(log_lrs) - 2)
        i += int(rng.uniform() < (x - log_lrs[i]) / (log_lrs[i + 1] - log_lrs[i]))
        runs = grid["runs"][str(run.batch_size)][i]
        drawn = runs[int(rng.integers(len(runs)))]
        if drawn["diverged"]:
            raise FloatingPointError(f"the grid's run at lr={grid['lrs'][i]:g} diverged")
        return float(drawn[truth.metric])

    return PanelWorkload(f"{workload.name}-replay", "replay", f"{workload.name} replayed from its grid", train,
                         truth, workload.batch_sizes, workload.lr_range, workload.n_trials, workload.maximize)


CNN_SIZES = [16, 32, 64, 128, 256, 512]
MLP_SIZES = [8, 16, 32, 64, 128, 256, 512]
CNN_LR, MLP_LR = (1e-4, 1.0), (1e-4, 3.0)


def panel() -> list[PanelWorkload]:
    measured = _measured()
    return measured + [replayed(w) for w in measured if w.kind == "real"]


def _measured() -> list[PanelWorkload]:
    return [
        _quadratic("quadratic", "the built-in noisy quadratic (curvatures 1e-3…1, noise 1, 16,384 samples)",
                   [8, 16, 32, 64, 128, 256, 512, 1024], (1e-4, 4.0), 120, samples=16384),
        _quadratic("quadratic-stiff", "another spectrum: curvatures 1e-3…10, noise 10, 65,536 samples, 512 dims",
                   [16, 32, 64, 128, 256, 512, 1024, 2048], (1e-5, 1.0), 120,
                   samples=65536, dims=512, curvatures=(1e-3, 10.0), noise=10.0),
        valley("valley-linear-1%", ValleyTruth(alpha=1.0), noise=0.01, n_trials=96),
        valley("valley-sqrt-5%", ValleyTruth(alpha=0.5), noise=0.05, n_trials=96),
        valley("valley-0.75-15%", ValleyTruth(alpha=0.75), noise=0.15, n_trials=96),
        PanelWorkload("mlp-momentum", "real", "digits MLP (64 hidden), SGD with momentum 0.9, 20 epochs",
                      mlp_momentum, GridTruth("mlp-momentum", "loss"), MLP_SIZES, MLP_LR, 120),
        PanelWorkload("cnn-adam-loss", "real", f"digits CNN (16/32 channels, global pool), Adam, {CNN_EPOCHS} "
                      "epochs, validation loss", cnn_loss, GridTruth("cnn-adam", "loss"), CNN_SIZES, CNN_LR, 90),
        PanelWorkload("cnn-adam-accuracy", "real", "the same CNN maximizing validation accuracy", cnn_accuracy,
                      GridTruth("cnn-adam", "accuracy", maximize=True), CNN_SIZES, CNN_LR, 90, maximize=True),
    ]
