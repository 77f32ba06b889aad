"""The optimal learning rate at one batch size, with a 95% interval, from that batch size's trials.

The estimate must be one the trials support, on any workload: a valley that is asymmetric and ends
in a cliff, a plateau at chance level on either side, far outliers, seed noise as large as the
valley is deep. In order:

1. **Noise.** Runs repeated at one learning rate (replicates, other seeds) give it directly; the
   scatter of each learning rate's result about the straight line through its two neighbours gives
   it without replicates (a difference-based estimator: robust, and it errs high where trials are
   sparse on a curved valley, which only makes the tests below more cautious). Both are pooled,
   over batch sizes too, but a residual beyond ``WALL_Z`` times the study's median one is a wall
   next to the optimum (runs twenty times worse a step away), never noise: read as noise, one such
   wall made every batch size's noise a hundred times too large and every test below blind. Nor
   is the noise ever taken larger than the study's repeated runs allow (``_Batch.noise``): next to
   a sharp bottom between sparse trials, the residuals are the valley's curvature.
2. **Bounds.** Every learning rate tried on either side of the best one that did clearly worse than
   it (beyond noise) bounds the optimum, as a divergence does from above: the estimate never lies
   where a trial measured clearly worse.
3. **Local quadratic.** A weighted quadratic in log-lr is fitted only to the trials near the best
   one: those between the bounds (the bounding trials included, they give the valley its walls) and
   within ``REACH`` of it; far trials (a chance plateau, a distant outlier) never enter. Its vertex
   is the estimate, kept inside the bounds and no further than ``MARGIN`` beyond the fitted trials
   (nor beyond them at all towards a run that did clearly worse than the valley says: a wall, nor
   past the highest run that trained towards one that diverged).
4. **Checks.** Where the quadratic is not a valley, or its vertex had to be clipped (the model and
   the trials disagree: it points where the trials say it cannot be), or it claims a dip deeper
   than any trial measured, or it passes further from the trials than their noise explains (a
   wall it cannot follow pulls its vertex away from the runs that did best), the estimate falls
   back to the middle of the runs that did as well as the best (``method = "best-trials"``) and
   the interval widens to the trials either side of them (a best that every neighbour denies is a
   lucky run where the neighbourhood that did best lies elsewhere: read from that one instead).
5. **Interval.** A bootstrap that redraws each learning rate's result from the fitted curve with
   the larger of the noise and its own residual (so that a model that misfits widens it), refits
   and re-applies the bounds; then widened to every learning rate whose runs did not do clearly
   worse than the best (the bootstrap knows only the trials the valley was fitted to).
6. **No signal.** A batch size where no learning rate did better than the others beyond noise (and
   the means change no more smoothly with the learning rate than noise would leave them), or whose
   best run is no better than the untrained model (when the workload reports step 0), is flagged
   ``no-signal``: the data cannot say where its optimum is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from pydantic import Field, model_serializer
from scipy.special import chdtri, fdtri

from tuner.fit._data import BatchTrials
from tuner.fit._model import Frozen

MIN_COMPLETE = 3        # a quadratic needs three learning rates
FEW_COMPLETE = 5        # below this the interval is rough: flagged
WORSE_Z = 2.5           # "clearly worse": the difference exceeds this many standard errors (one-sided ~99%)
WALL_Z = 5.0            # a residual beyond this many noise deviations (the median's) is a wall or a cliff
MIN_ROBUST = 5          # residuals the median needs before it may call one a wall
NO_SIGNAL_Z = 3.0       # a best run within this many noise deviations of the untrained model has no signal
MIN_SIGNAL_SPAN = math.log(4.0)  # flatness only means no signal when the trials span at least ×4
CLIFF_REACH = math.log(2.0)  # a divergence this close above a flat valley's last run makes the flat its floor
NOISE_SPAN = math.log(4.0)  # neighbours further apart than this say more about the valley than the noise
REACH = math.log(8.0)   # the local model sees trials at most this far from the best...
DEPTH = 0.5             # ...in the lower part of the valley: at most this share of its height above the best...
NEIGHBOURHOOD = 0.15    # the kernel width (log-lr) over which the best learning rate is judged
MIN_FIT = 6             # the local model sees at least this many, the nearest to the best
MAX_ASYMMETRY = 10.0    # a valley at most this many times steeper on one side than on the other
MAX_DIP = 0.5           # a vertex between trials may dip below the best by at most this share of the rise
MISFIT = 0.001          # a valley whose residuals noise explains with less than this probability misfits
MODEL_DOF = 2           # the valley's residuals estimate the noise from this many spare degrees of freedom
PRIOR_DF = 6            # the noise pooled over batch sizes counts as this many degrees of freedom
TOLERATED = 0.02        # a rule may stray from a batch size's optimum as far as this costs (2% of the metric)
MARGIN = math.log(1.1)  # how far beyond the fitted trials the vertex may go
MAX_GAP = math.log(1.5)  # widest gap between trials the metric is interpolated across
NEAR_REPEAT = math.log(1.02)  # learning rates this close run as repeats of one another
RESOLUTION = math.log(1.01)  # no optimum is known closer than this: the valley is a model, and a run a run
N_BOOTSTRAP = 150
VERTEX_GRID = 61  # candidate vertices the valley is profiled over (then refined between them)
Z95 = 1.959964
MAD_NORMAL = 0.6744898  # the median of |z| for a standard normal z

EDGE_LOW, EDGE_HIGH, FEW_TRIALS, NO_COMPLETE = "edge-low", "edge-high", "few-trials", "no-complete-trials"
NO_SIGNAL = "no-signal"  # no learning rate did better than the others beyond noise
NO_VALLEY = "no-valley"  # trials enough, but the best's neighbours did far worse and the runs rise and fall
LUCKY_EDGE = "lucky-edge"  # the best run, the last below a divergence, was a lucky survivor: set aside
INFEASIBLE = "out-of-memory"  # the batch size did not fit in memory (the study lists it in infeasible_batch_sizes)
UNPLACED = frozenset({EDGE_LOW, EDGE_HIGH, INFEASIBLE, NO_SIGNAL, NO_VALLEY})  # left out of the rules
QUADRATIC, BEST_TRIALS, BEST_TRIAL, NONE = "local-quadratic", "best-trials", "best-trial", "none"


@dataclass(frozen=True)
class Groups:
    """Complete trials grouped by learning rate: one row per distinct log-lr, sorted."""

    x: np.ndarray        # log-lr
    mean: np.ndarray     # mean metric (lower is better)
    count: np.ndarray    # runs (seeds) at that learning rate
    scatter: np.ndarray  # sum of squares about the mean, within each group (replicates)

    @classmethod
    def of(cls, x: np.ndarray, loss: np.ndarray) -> Groups:
        keys, inverse = np.unique(x, return_inverse=True)  # a replicate repeats the learning rate exactly
        count = np.bincount(inverse).astype(float)
        mean = np.bincount(inverse, weights=loss) / count
        scatter = np.bincount(inverse, weights=(loss - mean[inverse]) ** 2, minlength=len(keys))
        return cls(keys, mean, count, scatter)

    @property
    def ss(self) -> float:
        return float(self.scatter.sum())

    @property
    def df(self) -> int:
        return int(self.count.sum() - len(self.count))

    def subset(self, keep: np.ndarray) -> Groups:
        return Groups(self.x[keep], self.mean[keep], self.count[keep], self.scatter[keep])

    def merged(self, within: float) -> Groups:
        """Learning rates closer than ``within`` (log) to the previous one counted as one: their runs
        scatter as replicates do (no valley changes measurably over ×1.02)."""
        cluster = np.concatenate([[0], np.cumsum(np.diff(self.x) > within)])
        count = np.bincount(cluster, weights=self.count)
        mean = np.bincount(cluster, weights=self.count * self.mean) / count
        scatter = np.bincount(cluster, weights=self.scatter + self.count * (self.mean - mean[cluster]) ** 2)
        return Groups(np.bincount(cluster, weights=self.count * self.x) / count, mean, count, scatter)


@dataclass(frozen=True)
class Valley:
    """The metric around the optimum, as the fit sees it; ``worse_by`` prices a learning rate.

    ``curves`` holds the accepted model's bootstrap replicates evaluated on ``grid`` (log-lr), so a
    price comes with its standard error; beyond ``fitted`` (and MARGIN past it) the metric is read
    off the trials.
    """

    groups: Groups
    noise: float                   # standard deviation of one run's metric
    optimum_x: float
    cliff_x: float                 # the optimum lies below this diverged log-lr; inf if none
    grid: np.ndarray
    curves: np.ndarray             # (bootstrap, grid) model values, lower is better
    fitted: tuple[float, float]    # log-lr span of the trials the model was fitted to (none: empty)

    def loss_at(self, x: float) -> tuple[float, float] | None:
        """The metric (lower is better) at log-lr ``x`` with its standard error; inf at or above a
        divergence; None where no trial was close enough to say (a gap wider than MAX_GAP may hide
        a cliff)."""
        found = self._priced(x)
        return None if found is None else found[:2]

    def worse_by(self, lr: float) -> tuple[float, float] | None:
        """How much worse the metric is at ``lr`` than at the optimum, in the metric's units (>= 0),
        with its standard error; (inf, 0) where the learning rate diverged; None where not measured."""
        x = math.log(lr)
        if x >= self.cliff_x:
            return math.inf, 0.0
        here, best = self._priced(x), self._priced(self.optimum_x)
        if here is None or best is None:
            return None
        if here[2] is not None and best[2] is not None:  # both on the model: its bootstrap pairs them
            diff = here[2] - best[2]
            return max(0.0, float(diff.mean())), float(diff.std())
        return max(0.0, here[0] - best[0]), math.hypot(here[1], best[1])

    def expected_regret(self) -> float | None:
        """How much worse the metric is at the estimate than at the bottom of each bootstrap valley,
        averaged over them: what the estimate's uncertainty is likely to cost, in the metric's units.
        None where no model was fitted (the valley is read off the trials)."""
        if len(self.curves) < 2:
            return None
        at = np.array([np.interp(self.optimum_x, self.grid, curve) for curve in self.curves])
        return float(np.mean(at - self.curves.min(axis=1)))

    def _priced(self, x: float) -> tuple[float, float, np.ndarray | None] | None:
        """(mean, standard error, the model's bootstrap values or None where read off the trials).
        Within the trials the model was fitted to it stands for the metric; up to MARGIN beyond them
        it extrapolates, unless the trials there did clearly worse than it says (a wall it did not
        see: its extrapolation would price a learning rate past the wall as nearly free)."""
        if x >= self.cliff_x:
            return math.inf, 0.0, None
        read = self._read_off(x)
        low, high = self.fitted
        if not low - MARGIN <= x <= high + MARGIN:
            return None if read is None else (*read, None)
        values = np.array([np.interp(x, self.grid, curve) for curve in self.curves])
        model = (float(values.mean()), float(values.std()), values)
        if low <= x <= high:
            return model
        g = self.groups
        if read is None and not g.x[0] <= x <= g.x[-1]:  # past the last trial, as bad as it: a valley
            end = 0 if x < g.x[0] else -1                # does not come down again past its wall
            read = float(g.mean[end]), self.noise / math.sqrt(g.count[end])
        overruled = read is not None and read[0] - model[0] > WORSE_Z * math.hypot(read[1], model[1])
        return (*read, None) if overruled else model

    def _read_off(self, x: float) -> tuple[float, float] | None:
        """The metric in line between the trials either side of ``x`` (across a gap no wider than
        MAX_GAP), else that of a trial within MARGIN of it; None where no trial says."""
        g = self.groups
        right = min(int(np.searchsorted(g.x, x)), len(g.x) - 1)
        left = max(right - 1, 0)
        if g.x[0] <= x <= g.x[-1] and (g.x[right] - g.x[left] <= MAX_GAP or g.x[right] == x):
            share = 0.0 if right == left else (x - g.x[left]) / (g.x[right] - g.x[left])
            mean = (1 - share) * g.mean[left] + share * g.mean[right]
            se = self.noise * math.sqrt((1 - share) ** 2 / g.count[left] + share**2 / g.count[right])
            return float(mean), float(se)
        nearest = int(np.argmin(np.abs(g.x - x)))  # a learning rate next to a run costs what that run did
        if abs(g.x[nearest] - x) <= MARGIN:
            return float(g.mean[nearest]), float(self.noise / math.sqrt(g.count[nearest]))
        return None


class BatchOptimum(Frozen):
    """The optimal learning rate at one batch size, what the trials there say of it, and how sure it is."""

    batch_size: int
    lr: float | None          # the learning rate to use (None: no complete trial)
    own_lr: float | None = None  # what this batch size's trials alone say, where ``lr`` is averaged with
    # the recommended rule's (``tuner.fit._pool``); None: ``lr`` is its own
    ci: tuple[float, float] | None  # 95% interval of the valley's bottom
    n_trials: int
    n_complete: int
    n_pruned: int = 0
    n_diverged: int = 0
    best_lr: float | None = None     # the best complete trial (the best mean, where learning rates were repeated)
    best_value: float | None = None
    flags: tuple[str, ...] = ()
    method: str = ""          # QUADRATIC, BEST_TRIALS, BEST_TRIAL or NONE
    noise: float | None = None  # standard deviation of one run's final metric, estimated
    vertex: float | None = None  # where the valley's bottom is; ``lr`` is the learning rate to use, which
    # approaches an uncertain bottom from the valley's gentle side
    # where the optimum can lie, given the trials: at most halfway to the learning rates either side of
    # the best that did clearly worse, below a divergence, not far beyond the trials; None: unbounded
    bracket: tuple[float | None, float | None] | None = None
    valley: Valley | None = Field(None, exclude=True)  # the trials' valley, for costs; not stored

    @model_serializer(mode="wrap")
    def _stored_form(self, handler) -> dict:
        """As stored: no ``own_lr`` key where ``lr`` is its own (a fit stored before it, read and
        written again, stays byte-for-byte the same)."""
        data = handler(self)
        if data.get("own_lr") is None:
            data.pop("own_lr", None)
        return data

    @property
    def usable(self) -> bool:
        """A point estimate a rule can be fitted to: measured, neither on the edge of the search nor
        without signal, and shaped by more than its best run."""
        return self.lr is not None and not UNPLACED & set(self.flags)

    @property
    def sigma(self) -> float:
        """Standard error of log(lr), from the 95% interval."""
        assert self.ci is not None
        return (math.log(self.ci[1]) - math.log(self.ci[0])) / (2 * Z95)

    @property
    def spread(self) -> tuple[float, float]:
        """Standard errors of the valley's bottom (log) below and above it, from the 95% interval."""
        assert self.ci is not None and self.vertex is not None
        return (math.log(self.vertex / self.ci[0]) / Z95, math.log(self.ci[1] / self.vertex) / Z95)


@dataclass(frozen=True)
class NoiseEvidence:
    """What one batch size's trials near its optimum say about the noise: a sum of squares, its
    degrees of freedom, and the metric's level there (lower is better)."""

    ss: float
    df: float
    level: float

    @property
    def sigma(self) -> float | None:
        return math.sqrt(self.ss / self.df) if self.df > 0 else None


@dataclass(frozen=True)
class NoisePrior:
    """The noise pooled over batch sizes: for a positive metric that is minimized (a loss) relative to
    the metric's level where a run's scatter grows with it (the noisy quadratic's does, in
    proportion), absolute where it grows far more slowly (a CNN's: 0.07 at a loss of 0.38, 0.17 at
    1.5; ``_proportional`` tells which); absolute otherwise (an accuracy scatters about as much at
    chance as near its best). A batch size's own evidence is weighed against it as PRIOR_DF degrees
    of freedom: a handful of residuals alone can put the noise at a fifth of its size, and noise
    taken too low turns a lucky run into bounds."""

    sigma: float
    relative: bool
    df: float | None = None  # the replicates' degrees of freedom, where measured by them alone (pure
    # error, ``of_replicates``); None where residuals about the valley say it

    def at(self, level: float) -> float:
        return self.sigma * abs(level) if self.relative else self.sigma

    def upper(self, level: float) -> float:
        """The largest noise these replicates allow at ``level`` (the 99% chi-square bound)."""
        assert self.df is not None
        return self.at(level) * math.sqrt(self.df / chdtri(self.df, 0.99))

    @classmethod
    def pool(cls, evidence: list[NoiseEvidence | None]) -> NoisePrior | None:
        found = [e for e in evidence if e is not None and e.df > 0]
        if sum(e.df for e in found) < PRIOR_DF:
            return None
        return cls.measured(np.array([e.ss for e in found]), np.array([e.df for e in found]),
                            np.array([e.level for e in found]))

    @classmethod
    def of_replicates(cls, batches: list[_Batch]) -> NoisePrior | None:
        """The noise as learning rates run more than once measure it near each batch size's best
        (among the candidates: a pair next to a cliff, where one seed blows up and the other does
        not, says nothing of the noise at the optimum), pooled over these batch sizes, each group's
        scatter at its own mean's level; None with fewer than PRIOR_DF degrees of freedom. Pure
        error: residuals about a curve also carry the valley's curvature where the trials are sparse
        next to a sharp bottom (on the noisy quadratic they put the noise at ×10 to ×40 its size),
        replicates only the seeds' scatter; ``_Batch.noise`` caps the residuals' estimate at what
        they allow."""
        groups = [b.near.merged(NEAR_REPEAT) for b in batches]
        means = np.concatenate([g.mean for g in groups] or [np.zeros(0)])
        scatter = np.concatenate([g.scatter for g in groups] or [np.zeros(0)])
        df = np.concatenate([g.count - 1 for g in groups] or [np.zeros(0)])
        if df.sum() < PRIOR_DF:
            return None
        repeated = df > 0
        return replace(cls.measured(scatter[repeated], df[repeated], means[repeated]), df=float(df.sum()))

    @classmethod
    def measured(cls, ss: np.ndarray, df: np.ndarray, levels: np.ndarray) -> NoisePrior:
        """The noise these sums of squares (with their degrees of freedom, at these levels) say."""
        relative = bool(np.all(levels > 0)) and _proportional(ss, df, levels)
        scale = levels**2 if relative else np.ones_like(levels)
        return cls(math.sqrt(float(np.sum(ss / scale)) / float(df.sum())), relative)

    @classmethod
    def robust(cls, batches: list[_Batch]) -> NoisePrior | None:
        """The noise as the median neighbour residual says it, over these batch sizes: a wall next to
        an optimum (runs twenty times worse a step away) gives residuals that would make the pooled
        noise a hundred times too large, and every test built on it blind; the median does not see
        them. None with fewer than MIN_ROBUST residuals."""
        levels = np.array([b.level for b in batches])
        relative = bool(len(levels)) and bool(np.all(levels > 0))
        residuals = np.concatenate([b.residuals / (b.level if relative else 1.0) for b in batches] or [np.zeros(0)])
        if len(residuals) < MIN_ROBUST:
            return None
        return cls(float(np.median(np.abs(residuals))) / MAD_NORMAL, relative)

    def combine(self, own: NoiseEvidence) -> float:
        return math.sqrt((own.ss + PRIOR_DF * self.at(own.level) ** 2) / (own.df + PRIOR_DF))


@dataclass(frozen=True)
class _Batch:
    """One batch size's complete trials made ready for the estimate (lower is better)."""

    groups: Groups           # below the cliff
    best: int
    tried: np.ndarray        # every learning rate tried, sorted
    pruned: np.ndarray       # the pruned ones: they did worse than their neighbours promised
    cliff: float
    candidates: np.ndarray | None  # which groups the local model may see; None with too few trials
    wall: float = math.inf   # a residual larger than this (in the metric's units) is a wall, not noise
    # the study's fit, not the search's, which refines around its best run until the valley has runs of
    # its own: a coarse grid's best run and its two neighbours make a parabola (``_window``), and a lone
    # dip is read from the neighbourhood that did best (``_as_good_as_best``). Searched so, the panel's
    # studies (40 seeds each, all 320 rerun) went elsewhere and did worse: with the parabola, estimates
    # over 5% of the metric 7 -> 12 (the 15%-noise valley) and 38 -> 56 (the MLP), rules over 5% 4 -> 13
    # and 60 -> 75; with the lone dip, 8 of the 12 replayed real studies that changed did worse (the
    # MLP's seed 28: its rule 7.1% -> 56.2%, the CNN loss's seed 31: its worst estimate 3.6% -> 29.9%)
    final: bool = False

    @classmethod
    def of(cls, trials: BatchTrials, maximize: bool) -> _Batch | None:
        if len(trials.x) == 0:
            return None
        groups = Groups.of(trials.x, (-1.0 if maximize else 1.0) * trials.value)
        tried = np.sort(np.concatenate([trials.x, trials.pruned_x, trials.diverged_x]))
        cliff = _cliff(trials.diverged_x, groups.x[0])
        below = groups.x < cliff  # a luckier run above a divergence completed, but that lr is not safe
        groups = groups.subset(below) if below.any() else groups.subset(np.arange(len(groups.x)) == 0)
        best = _robust_best(groups)
        candidates = _candidates(groups, best) if len(groups.x) >= MIN_COMPLETE else None
        return cls(groups, best, tried, np.sort(trials.pruned_x), cliff, candidates)

    @property
    def level(self) -> float:
        return float(self.groups.mean[self.best])

    @property
    def at_edge(self) -> bool:
        """The best is the highest run that trained below one that diverged."""
        return math.isfinite(self.cliff) and self.best == len(self.groups.x) - 1

    @property
    def near(self) -> Groups:
        """The learning rates near the best (the candidates), or all where they are too few."""
        return self.groups if self.candidates is None else self.groups.subset(self.candidates)

    @property
    def scatter(self) -> NoiseEvidence:
        """The noise as the neighbours' scatter (and replicates) says it, among the candidates."""
        return _scatter(self.near, self.level, self.wall)

    @property
    def residuals(self) -> np.ndarray:
        """The neighbours' pseudo-residuals among the candidates, in the metric's units."""
        return _pseudo_residuals(self.near)

    def noise(self, prior: NoisePrior | None, replicated: NoisePrior | None = None) -> float | None:
        """One run's noise here: this batch size's evidence (the valley's residuals) weighed against
        the prior, and no larger than the ``replicated`` runs allow: where trials are sparse next to
        a sharp bottom the residuals are the valley's curvature, not noise (×10 to ×90 its size),
        while the few replicates alone (six degrees of freedom) put it below 0.6 of its size one
        study in ten, and noise taken too low turns luck into bounds; the residuals are kept where
        the replicates do not rule them out."""
        noise = _noise(self.evidence(_noise(self.scatter, prior)), prior)
        if replicated is None or noise is None:
            return noise
        return min(noise, replicated.upper(self.level))

    def beside_walls(self, scale: NoisePrior | None) -> _Batch:
        """The same trials, with residuals beyond WALL_Z of ``scale`` taken for walls."""
        return self if scale is None else replace(self, wall=WALL_Z * scale.at(self.level))

    def window(self, noise: float | None) -> Groups:
        """The trials the local model sees (see ``_window``)."""
        return self.groups.subset(_window(self.groups, self.best, self.candidates, noise, self.at_edge,
                                          self.final))

    def evidence(self, noise: float | None) -> NoiseEvidence:
        """The noise near the optimum: the local valley's residuals (they know its curvature, where
        the neighbours' scatter mistakes a steep wall for noise), else that scatter."""
        if self.candidates is None:
            return self.scatter
        fitted = self.window(noise)
        valley = LocalValley.fit(fitted, _limits(fitted, (-math.inf, self.cliff), self.tried, self.pruned))
        if valley is not None:  # a wall the valley cannot follow bends it: its residuals elsewhere
            off = np.sqrt(fitted.count) * np.abs(fitted.mean - valley.at(fitted.x)) > self.wall  # say so
            if off.any() and np.count_nonzero(~off) >= MIN_COMPLETE + MODEL_DOF:
                fitted = fitted.subset(~off)
                valley = LocalValley.fit(fitted, _limits(fitted, (-math.inf, self.cliff), self.tried, self.pruned))
        return _model_scatter(fitted, valley, self.level, self.wall) or self.scatter

    def shape(self, noise: float | None) -> tuple[float, float, int] | None:
        """What the window says of the valley's shape: (symmetric rss, asymmetric rss, trials)."""
        if self.candidates is None:
            return None
        fitted = self.window(noise)
        fits = _shape_fits(fitted, _limits(fitted, (-math.inf, self.cliff), self.tried, self.pruned))
        if True not in fits:
            return None
        return fits[True][0], fits.get(False, (math.inf,))[0], len(fitted.x)


def estimate_optima(batches: list[BatchTrials], maximize: bool, lr_range: tuple[float, float],
                    rng: np.random.Generator) -> list[BatchOptimum]:
    """The optimum at every batch size of a study, the noise pooled over them (``NoisePrior``)."""
    prepared = [_Batch.of(b, maximize) for b in batches]
    scale = NoisePrior.robust([p for p in prepared if p is not None])
    prepared = [None if p is None else replace(p.beside_walls(scale), final=True) for p in prepared]
    ready = [p for p in prepared if p is not None]
    first = NoisePrior.pool([p.scatter for p in ready])
    prior = NoisePrior.pool([p.evidence(_noise(p.scatter, first)) for p in ready]) or first
    replicated = NoisePrior.of_replicates(ready)
    # one shape for the study: a valley asymmetric at some batch sizes and symmetric at others would
    # bias their optima differently, and the rules with them
    shapes = [p.shape(p.noise(prior, replicated)) for p in ready]
    asymmetric = _asymmetry_pays([s for s in shapes if s is not None])
    return [_estimate(b, p, prior, maximize, lr_range, rng, asymmetric, replicated)
            for b, p in zip(batches, prepared)]


def replicate_noise(batches: list[BatchTrials], maximize: bool) -> NoisePrior | None:
    """The noise that learning rates run more than once measure, pooled over these batch sizes
    (``NoisePrior.of_replicates``); None while they are too few."""
    return NoisePrior.of_replicates([p for p in (_Batch.of(b, maximize) for b in batches) if p is not None])


def estimate_optimum(trials: BatchTrials, maximize: bool, lr_range: tuple[float, float],
                     rng: np.random.Generator, replicated: NoisePrior | None = None) -> BatchOptimum:
    """The optimum at one batch size, from its trials alone (the noise no larger than the study's
    ``replicated`` runs allow, if given)."""
    batch = _Batch.of(trials, maximize)
    batch = None if batch is None else batch.beside_walls(NoisePrior.robust([batch]))
    return _estimate(trials, batch, None, maximize, lr_range, rng, replicated=replicated)


@lru_cache(maxsize=256)
def estimate_cached(x: tuple[float, ...], value: tuple[float, ...], pruned_x: tuple[float, ...],
                    diverged_x: tuple[float, ...], maximize: bool, lr_range: tuple[float, float],
                    replicated: NoisePrior | None = None) -> BatchOptimum:
    """``estimate_optimum`` of one batch size's trials given as tuples (log-lr), remembered: the
    sampler and the pruner ask for the same batch size's fit again and again between two of its
    trials finishing, and a fit costs milliseconds."""
    trials = BatchTrials(0, *(np.asarray(v, dtype=float) for v in (x, value, pruned_x, diverged_x)))
    return estimate_optimum(trials, maximize, lr_range, np.random.default_rng(0), replicated)


def _proportional(ss: np.ndarray, df: np.ndarray, levels: np.ndarray) -> bool:
    """Does one run's noise grow in proportion to the metric's level across these samples of it, or
    is it the same at every level? In proportion, unless the same noise everywhere makes their sums
    of squares (chi-square, ``df`` degrees of freedom each; the scale profiled out) more likely
    beyond chance (a likelihood ratio test at 95%). Taken as proportional, a CNN's noise at its
    largest batch size (the loss at the optimum 1.5 there and 0.38 at the smallest, its scatter 0.17
    and 0.07 over 24 seeds) was put at 0.37, and the batch size's clear valley flagged as no signal;
    an exponent between the two, fitted, strayed with the scatter of six batch sizes' noise (the
    noise of the smallest put at half its size)."""
    total = df.sum()

    def likelihood(variance: float) -> float:  # the log-likelihood, the scale at its best
        return -total * math.log(max(variance, 1e-300)) / 2

    proportional = likelihood(np.sum(ss / levels**2) / total) - np.sum(df * np.log(levels))
    absolute = likelihood(np.sum(ss) / total)
    return not 2 * (absolute - proportional) > chdtri(1, 0.05)


def _noise(evidence: NoiseEvidence, prior: NoisePrior | None) -> float | None:
    return prior.combine(evidence) if prior is not None else evidence.sigma


def _estimate(trials: BatchTrials, batch: _Batch | None, prior: NoisePrior | None, maximize: bool,
              lr_range: tuple[float, float], rng: np.random.Generator,
              asymmetric: bool | None = None, replicated: NoisePrior | None = None) -> BatchOptimum:
    counts = {"batch_size": trials.batch_size, "n_trials": trials.n_trials, "n_complete": len(trials.x),
              "n_pruned": len(trials.pruned_x), "n_diverged": len(trials.diverged_x)}
    if batch is None:
        return BatchOptimum(lr=None, ci=None, best_lr=None, best_value=None, flags=(NO_COMPLETE,),
                            method=NONE, **counts)
    noise = batch.noise(prior, replicated)
    groups, best = batch.groups, batch.best
    if _lucky_at_edge(batch, noise):  # counted as the run that blew up it nearly was; the rest say where
        aside = _set_aside(trials, groups.x[best])
        again = replace(_Batch.of(aside, maximize), wall=batch.wall, final=batch.final)
        optimum = _estimate(aside, again, prior, maximize, lr_range, rng, asymmetric, replicated)
        flags = optimum.flags if LUCKY_EDGE in optimum.flags else (*optimum.flags, LUCKY_EDGE)
        return optimum.model_copy(update={"flags": flags, **counts})
    if batch.candidates is None:
        estimate, interval, method = _best_trial(groups.x[best], batch.tried, batch.cliff, lr_range)
        valley, bracket, vertex = _interpolated(groups, noise, estimate, batch.cliff), interval, estimate
    else:
        estimate, vertex, interval, method, valley, bracket = _fit(batch, noise, rng, asymmetric, lr_range)
    interval = _not_ruled_out(interval, groups, best, noise)
    x_best, sign = groups.x[best], -1.0 if maximize else 1.0
    flags = ((EDGE_LOW,) if batch.tried[0] == x_best else ()) + ((EDGE_HIGH,) if batch.tried[-1] == x_best else ())
    flags += (FEW_TRIALS,) if len(trials.x) < FEW_COMPLETE else ()
    # with trials enough for a valley, an estimate on the best run alone, between complete runs that
    # all did far worse and rise and fall again beyond them (no single valley: heavy-tailed runs), is
    # one run's word, and a lucky seed among them looks exactly like it (the CNN with Adam, B=128: ×5
    # and ×12 off). Beside a divergence the cliff brackets it; in a valley that climbs steadily away
    # from it on both sides, so do its neighbours
    alone = (method == BEST_TRIAL and len(trials.x) >= FEW_COMPLETE and 0 < best < len(groups.x) - 1
             and not _one_valley(groups.mean, best))
    flags += (NO_VALLEY,) if alone else ()
    baseline = None if trials.baseline is None else sign * trials.baseline
    if _no_signal(groups, best, noise, baseline, batch.cliff):
        flags += (NO_SIGNAL,)
    return BatchOptimum(lr=math.exp(estimate), ci=(math.exp(interval[0]), math.exp(interval[1])),
                        best_lr=math.exp(x_best), best_value=float(sign * groups.mean[best]), flags=flags,
                        method=method, noise=_plain_noise(noise), bracket=_lrs(bracket), vertex=math.exp(vertex),
                        valley=valley, **counts)


# --- 1. noise ------------------------------------------------------------------------------------------------

def estimate_noise(groups: Groups) -> float | None:
    """Standard deviation of one run's metric from these groups alone (replicates, and the scatter
    of neighbouring learning rates); None when neither is available."""
    return _scatter(groups, 0.0).sigma


def _scatter(groups: Groups, level: float, wall: float = math.inf) -> NoiseEvidence:
    """Replicates pooled with the difference-based estimate (residuals beyond ``wall`` left out)."""
    residuals = _pseudo_residuals(groups)
    residuals = residuals[np.abs(residuals) <= wall]
    # the mean of the squares, not a robust median: a median of a handful discards exactly the
    # large residuals a lucky run leaves, and noise taken too low would turn luck into bounds
    return NoiseEvidence(groups.ss + float(np.sum(residuals**2)), groups.df + len(residuals), float(level))


def _model_scatter(fitted: Groups, valley: LocalValley | None, level: float,
                   wall: float = math.inf) -> NoiseEvidence | None:
    """Replicates pooled with the valley's residuals (those beyond ``wall`` left out: a wall the
    quadratic cannot follow), where it has at least MODEL_DOF spare degrees of freedom; None otherwise."""
    if valley is None:
        return None
    residuals = np.sqrt(fitted.count) * (fitted.mean - valley.at(fitted.x))
    kept = np.abs(residuals) <= wall
    dof = int(kept.sum()) - (3 if valley.symmetric else 4)
    if dof < MODEL_DOF:
        return None
    return NoiseEvidence(fitted.ss + float(np.sum(residuals[kept] ** 2)), fitted.df + dof, float(level))


def _pseudo_residuals(g: Groups) -> np.ndarray:
    """Each learning rate's mean against the line through its neighbours', in units of one run's
    noise (Gasser, Sroka and Jennen-Steinmetz 1986); only where the neighbours are close."""
    if len(g.x) < 3:
        return np.zeros(0)
    left, middle, right = g.x[:-2], g.x[1:-1], g.x[2:]
    close = (right - left) <= NOISE_SPAN
    a = (right - middle) / (right - left)
    b = 1.0 - a
    predicted = a * g.mean[:-2] + b * g.mean[2:]
    scale = np.sqrt(1 / g.count[1:-1] + a**2 / g.count[:-2] + b**2 / g.count[2:])
    return ((g.mean[1:-1] - predicted) / scale)[close]


# --- 2-5. bounds, local quadratic, checks, interval ----------------------------------------------------------

def _fit(batch: _Batch, noise: float | None, rng, asymmetric: bool | None, lr_range: tuple[float, float]):
    groups, best, tried = batch.groups, batch.best, batch.tried
    fitted = batch.window(noise)
    if len(fitted.x) < MIN_COMPLETE:  # the trials near the best are too few for a valley
        estimate, interval, method = _best_trial(groups.x[best], tried, batch.cliff, lr_range)
        return estimate, estimate, interval, method, _interpolated(groups, noise, estimate, batch.cliff), interval
    limits = _short_of_cliff(_limits(fitted, _bounds(groups, best, noise, batch.cliff), tried, batch.pruned),
                             groups, batch.cliff)
    valley = LocalValley.fit(fitted, limits, asymmetric)
    walled = _short_of_walls(limits, fitted, groups, valley, noise)
    if valley is not None and walled != limits:
        limits, valley = walled, LocalValley.fit(fitted, walled, asymmetric)
    if valley is not None and valley.agrees(fitted, noise, limits):
        spread = np.maximum(np.abs(fitted.mean - valley.at(fitted.x)), (noise or 0.0) / np.sqrt(fitted.count))
        draws = valley.at(fitted.x)[None, :] + spread[None, :] * rng.standard_normal((N_BOOTSTRAP, len(fitted.x)))
        vertices, coefs = valley.refit(fitted, draws)
        grid = np.linspace(fitted.x[0] - MARGIN, fitted.x[-1] + MARGIN, 121)
        curves = _valley_values(coefs, grid[None, :] - vertices[:, None])
        estimate, method, vertex = _best_expected(vertices, coefs, limits), QUADRATIC, valley.vertex
        low_ci, high_ci = np.percentile(vertices, [2.5, 97.5])
        other = valley.other_form(fitted)
        if other is not None:  # the shape is a choice too: where the other one would say otherwise, say so
            alternative = np.percentile(other.refit(fitted, draws)[0], [2.5, 97.5])
            low_ci, high_ci = min(low_ci, alternative[0]), max(high_ci, alternative[1])
        span = (fitted.x[0], fitted.x[-1])
    else:
        # the model and the trials disagreed: the middle of the learning rates that did as well as
        # the best (within noise), and an interval out to the trials tried beyond them
        neighbourhood = groups.x[best] if batch.final else None
        estimate, (low_ci, high_ci) = _as_good_as_best(fitted, neighbourhood, noise, tried)
        method, limits, vertex = BEST_TRIALS, (min(limits[0], estimate), max(limits[1], estimate)), estimate
        grid, curves, span = fitted.x, fitted.mean[None, :], (math.inf, -math.inf)
    estimate, vertex = float(np.clip(estimate, *limits)), float(np.clip(vertex, *limits))
    interval = (min(float(low_ci), estimate, vertex - RESOLUTION),
                min(max(float(high_ci), estimate, vertex + RESOLUTION), batch.cliff))  # never past a divergence
    valley = Valley(groups, noise or 0.0, estimate, batch.cliff, grid, curves, span)
    return estimate, vertex, interval, method, valley, limits


@dataclass(frozen=True)
class LocalValley:
    """A valley a + c_low (x - v)^2 below its vertex v and a + c_high (x - v)^2 above it, fitted by
    least squares profiled over v on a grid spanning where the vertex may go. The two curvatures may
    differ (an asymmetric valley: a learning-rate valley is often steeper on the side of the cliff);
    they are taken equal unless the data pay for the extra parameter (AICc)."""

    vertex: float
    coef: np.ndarray              # (a, c_low, c_high)
    grid: np.ndarray              # the candidate vertices
    symmetric: bool

    @classmethod
    def fit(cls, fitted: Groups, limits: tuple[float, float], asymmetric: bool | None = None) -> LocalValley | None:
        """``asymmetric``: two curvatures (where the trials can tell them: five or more), one, or
        None: two where they fit these trials better than their scatter explains (``_shape_fits``)."""
        fits = _shape_fits(fitted, limits)
        if not fits:
            return None
        grid = _vertex_grid(fitted, limits)
        if asymmetric is None:
            asymmetric = _asymmetry_pays([(fits[True][0], fits.get(False, (math.inf,))[0], len(fitted.x))])
        symmetric = not (asymmetric and False in fits)
        rss, k = fits[symmetric]
        vertex = _polish(fitted, grid, k, symmetric)
        coef = _profile(fitted, np.array([vertex]), fitted.mean[None, :], symmetric)[1][0, 0]
        return cls(vertex, coef, grid, symmetric)

    def other_form(self, fitted: Groups) -> LocalValley | None:
        """The same valley with one curvature where this one has two, or two where it has one."""
        if len(fitted.x) < 5:
            return None
        rss, _ = _profile(fitted, self.grid, fitted.mean[None, :], not self.symmetric)
        if not np.isfinite(rss[0]).any():
            return None
        k = int(np.nanargmin(rss[0]))
        coef = _profile(fitted, self.grid[k:k + 1], fitted.mean[None, :], not self.symmetric)[1][0, 0]
        return LocalValley(float(self.grid[k]), coef, self.grid, not self.symmetric)

    def at(self, x: np.ndarray) -> np.ndarray:
        return _valley_values(self.coef[None, :], np.atleast_1d(x)[None, :] - self.vertex)[0]

    def agrees(self, fitted: Groups, noise: float | None, limits: tuple[float, float]) -> bool:
        """A valley whose vertex lies where the trials allow (within RESOLUTION of ``limits``: a vertex
        beyond them is a slope extrapolated into the gap before a wall or a cliff, where a run did
        clearly worse, not a bottom the trials saw; clipped to the limit, next to a cliff, it cost
        ×3 the metric on the panel's quadratic), with
        curvature on both sides, no deeper than what the trials measured (beyond noise), and that
        passes through the trials as closely as their noise explains (a chi-square test at 99.9%: a
        wall the quadratic cannot follow pulls its vertex away from the trials that did best)."""
        inside = limits[0] - RESOLUTION <= self.vertex <= limits[1] + RESOLUTION
        if not inside or not (self.coef[1] > 0 and self.coef[2] > 0):
            return False
        best = fitted.mean.min()
        slack = WORSE_Z * (noise or 0.0) + MAX_DIP * (fitted.mean.max() - best)
        if self.coef[0] < best - slack:
            return False
        dof = len(fitted.x) - (3 if self.symmetric else 4)
        if noise is None or dof < 1:
            return True
        # repeats that came out identical (a deterministic workload): the valley must pass through the
        # trials to within rounding, else its vertex is a shape the trials did not show
        noise = noise or math.sqrt(np.finfo(float).eps) * max(abs(best), 1.0)
        chi2 = float(np.sum(fitted.count * (fitted.mean - self.at(fitted.x)) ** 2)) / noise**2
        return chi2 <= chdtri(dof, MISFIT)

    def refit(self, fitted: Groups, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same form refitted to each row of redrawn means: vertices and (a, c_low, c_high) rows."""
        rss, coef = _profile(fitted, self.grid, draws, self.symmetric)
        rss = np.where(np.isfinite(rss), rss, np.inf)
        k = np.argmin(rss, axis=1)
        return _between_grid_points(self.grid, rss, k), coef[np.arange(len(draws)), k]


def _best_expected(vertices: np.ndarray, coefs: np.ndarray, limits: tuple[float, float]) -> float:
    """The learning rate with the best metric averaged over the bootstrap valleys. Where the valley
    is steeper on one side (a cliff), an uncertain vertex is best approached from the gentle side."""
    from scipy.optimize import minimize_scalar

    def expected(x: float) -> float:
        return float(_valley_values(coefs, x - vertices[:, None]).mean())

    grid = np.linspace(limits[0], limits[1], 81)
    k = int(np.argmin([expected(x) for x in grid]))
    low, high = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    if not high > low:
        return float(grid[k])
    return float(minimize_scalar(expected, bounds=(low, high), method="bounded", options={"xatol": 1e-6}).x)


def _profile(fitted: Groups, grid: np.ndarray, y: np.ndarray, symmetric: bool):
    """For each candidate vertex v (grid) and each row of y: the weighted residual sum of squares of
    the best valley with its vertex at v, and its (a, c_low, c_high); rss is inf where a curvature
    would be negative (no valley there)."""
    w = np.sqrt(fitted.count)
    d = fitted.x[None, :] - grid[:, None]                     # (grid, n)
    below, above = np.minimum(d, 0.0) ** 2, np.maximum(d, 0.0) ** 2
    columns = [np.ones_like(d), below + above] if symmetric else [np.ones_like(d), below, above]
    basis = np.stack(columns, axis=2) * w[None, :, None]       # (grid, n, k)
    pinv = np.linalg.pinv(basis)                               # (grid, k, n)
    target = y * w[None, :]                                     # (rows, n)
    coef = np.einsum("gkn,rn->rgk", pinv, target)              # (rows, grid, k)
    fitted_values = np.einsum("gnk,rgk->rgn", basis, coef)
    rss = np.sum((target[:, None, :] - fitted_values) ** 2, axis=2)
    if symmetric:
        coef = np.concatenate([coef, coef[..., 1:2]], axis=2)
    low, high = coef[..., 1], coef[..., 2]
    # no valley ten times steeper on one side than the other: that is two neighbouring runs' noise
    # read as a wall, not a valley
    curvature_ok = (low >= 0) & (high >= 0) & (high <= MAX_ASYMMETRY * low) & (low <= MAX_ASYMMETRY * high)
    return np.where(curvature_ok, rss, np.inf), coef


def _polish(fitted: Groups, grid: np.ndarray, k: int, symmetric: bool) -> float:
    """The vertex between the grid points beside the best one, to the precision of the data."""
    from scipy.optimize import minimize_scalar

    low, high = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    if not high > low:
        return float(grid[k])

    def rss(v: float) -> float:
        value = _profile(fitted, np.array([v]), fitted.mean[None, :], symmetric)[0][0, 0]
        return float(value) if math.isfinite(value) else 1e300

    found = minimize_scalar(rss, bounds=(low, high), method="bounded", options={"xatol": 1e-10})
    return float(found.x) if found.fun <= rss(grid[k]) else float(grid[k])


def _between_grid_points(grid: np.ndarray, rss: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Each row's best vertex, refined between grid points by the parabola through the residual sums
    of squares at its best grid point and the two beside it."""
    rows = np.arange(len(k))
    inner = np.clip(k, 1, len(grid) - 2)
    left, middle, right = (rss[rows, inner + s] for s in (-1, 0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        curvature = left - 2 * middle + right
        shift = np.where(np.isfinite(curvature) & (curvature > 0), 0.5 * (left - right) / curvature, 0.0)
    step = grid[1] - grid[0] if len(grid) > 1 else 0.0
    refined = grid[inner] + np.clip(shift, -1.0, 1.0) * step
    return np.where((k == inner) & np.isfinite(refined), refined, grid[k])


def _valley_values(coef: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Rows of (a, c_low, c_high) evaluated at rows of offsets from their vertex."""
    return coef[:, :1] + coef[:, 1:2] * np.minimum(d, 0.0) ** 2 + coef[:, 2:3] * np.maximum(d, 0.0) ** 2


def _vertex_grid(fitted: Groups, limits: tuple[float, float]) -> np.ndarray:
    """Candidate vertices: where the vertex may go, and MARGIN beyond each end (a valley whose trials
    only descend puts its vertex past the limit, where ``LocalValley.agrees`` sees the model
    disagreeing with the trials, instead of on it)."""
    low, high = max(limits[0], fitted.x[0] - MARGIN), min(limits[1], fitted.x[-1] + MARGIN)
    if not high > low:
        return np.zeros(0)
    return np.linspace(low - MARGIN, high + MARGIN, VERTEX_GRID)


def _shape_fits(fitted: Groups, limits: tuple[float, float]) -> dict[bool, tuple[float, int]]:
    """Residual sum of squares and best grid vertex of the symmetric (True) and asymmetric (False)
    valley, each where it can be fitted (the asymmetric needs five trials)."""
    grid, fits = _vertex_grid(fitted, limits), {}
    if not len(grid):
        return fits
    for symmetric in (True, False):
        if not symmetric and len(fitted.x) < 5:
            break  # four parameters and a degree of freedom
        rss = _profile(fitted, grid, fitted.mean[None, :], symmetric)[0]
        if np.isfinite(rss[0]).any():
            k = int(np.nanargmin(rss[0]))
            fits[symmetric] = (float(rss[0, k]), k)
    return fits


def _asymmetry_pays(evidence: list[tuple[float, float, int]]) -> bool:
    """Does a second curvature fit better than the trials' scatter about it explains? An F-test at
    95% on the valleys' own residuals, pooled over the (symmetric rss, asymmetric rss, trials) given."""
    usable = [(sym, asym, n) for sym, asym, n in evidence if n >= 5 and math.isfinite(asym) and math.isfinite(sym)]
    if not usable:
        return False
    gain, rss, dof = (sum(sym - asym for sym, asym, _ in usable), sum(asym for _, asym, _ in usable),
                      sum(n - 4 for *_, n in usable))
    return gain / len(usable) > fdtri(len(usable), dof, 0.95) * max(rss, 1e-300) / dof


def clearly_worse(groups: Groups, best: int, noise: float | None) -> np.ndarray:
    """Which learning rates did worse than the best beyond noise (any worse one, without a noise estimate)."""
    gap = groups.mean - groups.mean[best]
    worse = gap > WORSE_Z * (noise or 0.0) * np.sqrt(1 / groups.count + 1 / groups.count[best])
    worse[best] = False
    return worse


def _not_ruled_out(interval: tuple[float, float], groups: Groups, best: int,
                   noise: float | None) -> tuple[float, float]:
    """The interval, widened to every learning rate whose runs did not do clearly worse than the best
    (the learning rates a test at WORSE_Z cannot rule out). The model's interval knows only the
    trials it was fitted to; a learning rate beyond them that did as well, within noise, may hold the
    optimum. Without it the intervals covered the grid's optimum in 80-85% of the real workloads'
    batch sizes (heavy-tailed runs: a lucky run among learning rates ×10 above the optimum bent a
    valley around itself), with it 97-98% (40 replayed studies each)."""
    if noise is None:
        return interval
    kept = groups.x[~clearly_worse(groups, best, noise)]
    return min(interval[0], float(kept.min())), max(interval[1], float(kept.max()))


def _bounds(groups: Groups, best: int, noise: float | None, cliff: float) -> tuple[float, float]:
    """The nearest learning rates either side of the best that did clearly worse (and the cliff)."""
    worse, x = clearly_worse(groups, best, noise), groups.x
    below, above = x[worse & (x < x[best])], x[worse & (x > x[best])]
    return (below.max() if len(below) else -math.inf), min(above.min() if len(above) else math.inf, cliff)


def _candidates(groups: Groups, best: int) -> np.ndarray:
    """The trials the local model may see: outward from the best while they stay in the lower part of
    the valley (within DEPTH of the height the trials within REACH reach above the best; for a positive
    metric, on a log scale). A chance
    plateau, a far outlier or a run over the cliff never enters: one such value would bend the model
    more than all the others."""
    x, y = groups.x, groups.mean
    near = np.abs(x - x[best]) <= REACH
    if np.all(y > 0):  # a loss: its height on a log scale, or a run a thousand times worse near a cliff
        ceiling = y[best] * (y[near].max() / y[best]) ** DEPTH  # would let every other trial in
    else:
        ceiling = y[best] + DEPTH * (y[near].max() - y[best])
    candidate = np.zeros(len(x), dtype=bool)
    candidate[best] = True
    for step in (-1, 1):
        i = best + step
        while 0 <= i < len(x) and near[i] and y[i] <= ceiling:
            candidate[i], i = True, i + step
    return candidate


def _window(groups: Groups, best: int, candidates: np.ndarray, noise: float | None,
            at_edge: bool, final: bool = False) -> np.ndarray:
    """Of the candidates, those out to the first learning rate on each side that did clearly worse
    than the best (it included: the valley's wall), and at least MIN_FIT nearest the best. Where the
    valley is flat within noise, the model must reach its walls to see where the bottom is; where
    trials crowd around the optimum, it need not stretch across the whole valley. ``at_edge``: the
    best is the last run that trained below a divergence (``_Batch.at_edge``); ``final`` (the study's
    fit): a coarse grid's best run and its neighbours make a parabola (``_Batch.final``)."""
    x = groups.x
    worse = clearly_worse(groups, best, noise)
    reachable = candidates
    if at_edge and np.count_nonzero(candidates) < MIN_COMPLETE:
        # the lower part of the valley is measured from the best, and a lucky best can leave too few
        # runs in it for a model, while runs that did as well within noise lie just below it. Next to
        # a divergence that matters most: the best alone is the last run that trained before the
        # runs start to blow up (held-out shape 125: ten runs ×0.5-×1.33 of the optimum, a flat
        # bottom, within noise of a lucky repeat at ×1.38, on a stability edge where some seeds blow
        # up; the estimate on that run alone lost 730%). Elsewhere a lone best between far worse runs
        # is flagged ``no-valley`` (taken into the model instead, the replayed CNN loss had 44
        # unflagged estimates over 30% in 120 seeds against 38)
        reachable = candidates | (~worse & (np.abs(x - x[best]) <= REACH))
    elif (final and np.count_nonzero(candidates) < MIN_COMPLETE and 0 < best < len(x) - 1
          and _one_valley(groups.mean, best)):
        # on a coarse grid (learning rates ×2 apart, as users sweep them) only the best run and one
        # neighbour can lie in the lower part of the valley, and the estimate was the best run itself:
        # ×1.47 off at worst without noise. Where the runs fall to it and climb away from it, the
        # parabola through it and its neighbours places the optimum between them (median regret 11% ->
        # 1%, tests); a lone best among runs that rise and fall again stays ``no-valley``
        sides = np.array([best - 1, best + 1])
        candidates = candidates.copy()
        candidates[sides] |= np.abs(x[sides] - x[best]) <= REACH
        reachable = candidates
    keep = np.zeros(len(x), dtype=bool)
    keep[best] = True
    for step in (-1, 1):
        i = best + step
        while 0 <= i < len(x) and reachable[i]:
            keep[i] = True
            if worse[i]:
                break
            i += step
    inside = np.flatnonzero(candidates)
    nearest = inside[np.argsort(np.abs(x[inside] - x[best]), kind="stable")[:MIN_FIT]]
    keep[nearest] = True
    return keep


def _limits(fitted: Groups, bounds: tuple[float, float], tried: np.ndarray,
            pruned: np.ndarray) -> tuple[float, float]:
    """Where the estimate may go: no further than MARGIN beyond the fitted trials, nor more than
    halfway to a pruned trial beyond them (it did worse there); strictly inside the bounds, at most
    halfway from the nearest trial inside to the bounding trial (or the cliff)."""
    low, high = bounds
    first, last = fitted.x[0], fitted.x[-1]
    below, above = pruned[pruned < first], pruned[pruned > last]
    lower = max(first - MARGIN, (first + below.max()) / 2 if len(below) else -math.inf)
    upper = min(last + MARGIN, (last + above.min()) / 2 if len(above) else math.inf)
    inside = tried[(tried > low) & (tried < high)]
    if math.isfinite(low) and len(inside):
        lower = max(lower, (low + inside.min()) / 2)
    if math.isfinite(high) and len(inside):
        upper = min(upper, (high + inside.max()) / 2)
    return lower, upper


def _short_of_cliff(limits: tuple[float, float], groups: Groups, cliff: float) -> tuple[float, float]:
    """No further than the highest learning rate that trained towards one that diverged. Somewhere
    between the two the metric climbs from the valley to a divergence, and nothing says where: a
    vertex carried into that gap risks a run that does not train at all for a few per cent of
    metric (the stiff quadratic, B=2048: ×1.08 past the last run that trained, halfway to the one
    that diverged, cost ×150 the metric; the last run that trained cost 1.4%)."""
    if not math.isfinite(cliff):
        return limits
    return limits[0], min(limits[1], float(groups.x.max()))


def _short_of_walls(limits: tuple[float, float], fitted: Groups, groups: Groups, valley: LocalValley | None,
                    noise: float | None) -> tuple[float, float]:
    """No further than the last fitted trial towards a wall: where the next learning rate tried
    beyond it did clearly worse than the fitted valley says it should (beyond WORSE_Z standard
    errors), the metric climbs there faster than the quadratic, which never saw that run, and its
    extrapolation past the last fitted trial is a gentle slope carried into a wall (on the noisy
    quadratic: a vertex ×1.04 past the best run, next to a run 200 times worse, where the loss was
    twice the optimum's)."""
    if valley is None:
        return limits
    lower, upper = limits
    below, above = np.flatnonzero(groups.x < fitted.x[0]), np.flatnonzero(groups.x > fitted.x[-1])

    def wall(i: int) -> bool:
        return groups.mean[i] - valley.at(groups.x[i])[0] > WORSE_Z * (noise or 0.0) / math.sqrt(groups.count[i])

    if len(below) and wall(below[-1]):
        lower = max(lower, fitted.x[0])
    if len(above) and wall(above[0]):
        upper = min(upper, fitted.x[-1])
    return lower, upper


# --- the fallback: the best trials' neighbourhood ----------------------------------------------------------

def _as_good_as_best(fitted: Groups, x_best: float | None, noise: float | None,
                     tried: np.ndarray) -> tuple[float, tuple[float, float]]:
    """The mean log learning rate of those next to the best that did as well as it (within noise),
    each weighted by how close it came to the best (a Gaussian in standard errors; one that did
    better counts fully), and an interval from the trial tried below them to the one tried above
    them. Two equally good trials either side of an untried gap put it in the gap; a gentle side of
    the valley, where trials within noise of the best reach far, does not drag it away from the
    best. No smoothing across the valley: a sharp valley between sparse trials would be blurred
    towards its gentle side.

    The best is the lowest mean, unless it stands alone (every neighbour did clearly worse) away
    from ``x_best``, the learning rate whose neighbourhood did best (``_robust_best``; None in the
    search's fit, see ``_Batch.final``), and the runs do not fall all the way to it (as they do to a
    wall, whose bad ranks push the neighbourhood's best away from it): a dip that its neighbours on
    both sides deny is a lucky run where the noise is largest, not a valley (held-out shape 237,
    B=128, noise that grows ×3 above the optimum: two lucky runs at ×1.85, among runs from ×0.36 to
    ×1.53 that did as well as one another, were read alone: 44% lost). From the neighbourhood's best
    where no dip stands alone, a gentle side weighed as much as the best and the estimate strayed:
    the MLP replayed, 40 seeds, estimates read so 0.2-2.4% -> 1.3-3.9% lost in five of its 30 cells."""
    best = int(np.argmin(fitted.mean))
    run, se = _good_run(fitted, best, noise)
    lone = run.stop - run.start == 1 and not _one_valley(fitted.mean, best)
    if lone and x_best is not None and fitted.x[best] != x_best:
        best = int(np.argmin(np.abs(fitted.x - x_best)))
        run, se = _good_run(fitted, best, noise)
    xs, gap = fitted.x[run], np.maximum(fitted.mean - fitted.mean[best], 0.0)[run]
    closeness = np.exp(-0.5 * (gap / np.maximum(se[run], 1e-300)) ** 2) if noise else (gap <= 0).astype(float)
    estimate = float(np.average(xs, weights=fitted.count[run] * closeness))
    below, above = tried[tried < xs[0]], tried[tried > xs[-1]]
    return estimate, (float(below.max()) if len(below) else float(xs[0]),
                      float(above.min()) if len(above) else float(xs[-1]))


def _good_run(fitted: Groups, best: int, noise: float | None) -> tuple[slice, np.ndarray]:
    """The learning rates either side of ``best``, unbroken, whose runs did not do clearly worse than
    it, and the standard error of each one's difference from it."""
    se = (noise or 0.0) * np.sqrt(1 / fitted.count + 1 / fitted.count[best])
    good = fitted.mean - fitted.mean[best] <= WORSE_Z * se
    first = last = best
    while first > 0 and good[first - 1]:
        first -= 1
    while last < len(good) - 1 and good[last + 1]:
        last += 1
    return slice(first, last + 1), se


# --- too few trials for a curve ------------------------------------------------------------------------------

def _best_trial(x_best, tried, cliff, lr_range):
    """The best one, and an interval reaching the trials either side of it."""
    below, above = tried[tried < x_best], tried[tried > x_best]
    low = below.max() if len(below) else math.log(lr_range[0])
    high = min(above.min() if len(above) else math.log(lr_range[1]), cliff)
    return float(x_best), (min(low, x_best), max(high, x_best)), BEST_TRIAL


def _interpolated(groups: Groups, noise: float | None, estimate: float, cliff: float) -> Valley:
    """A valley read off the trials alone (no model)."""
    grid = groups.x.copy()
    return Valley(groups, noise or 0.0, estimate, cliff, grid, groups.mean[None, :], (math.inf, -math.inf))


# --- 6. no signal --------------------------------------------------------------------------------------------

def _no_signal(groups: Groups, best: int, noise: float | None, baseline: float | None, cliff: float) -> bool:
    """The best run is no better than the untrained model, or the learning rates tried did no better
    than one another beyond noise (``_flat``) and no divergence lies close above the last of them. A
    flat valley that ends in a divergence within ×2 is a signal: the optimum lies below the cliff,
    somewhere on the flat. One further away leaves room for a valley no run reached: an accuracy
    flat at chance up to ×0.09 of the optimum and diverging at ×2.2 (the valley between them ×1.4
    wide) read as an optimum on the chance plateau, ×0.0004 of the truth (held-out shape 4)."""
    best_mean = groups.mean[best]
    if baseline is not None and best_mean > baseline - NO_SIGNAL_Z * (noise or 0.0):
        return True
    return cliff - groups.x[-1] > CLIFF_REACH and _flat(groups, noise)


def _flat(groups: Groups, noise: float | None) -> bool:
    """The learning rates tried (over at least ×4) did no better than one another beyond noise: their
    means are as consistent with one flat level as noise makes them (a chi-square test at 99%), and
    no smoother in learning rate than noise would leave them (``_smooth``)."""
    if not noise or len(groups.x) < MIN_COMPLETE or groups.x[-1] - groups.x[0] < MIN_SIGNAL_SPAN:
        return False
    level = np.average(groups.mean, weights=groups.count)
    chi2 = float(np.sum(groups.count * (groups.mean - level) ** 2)) / noise**2
    return chi2 <= chdtri(len(groups.x) - 1, 0.01) and not _smooth(groups.mean)


def _smooth(means: np.ndarray, permutations: int = 2000) -> bool:
    """Do the means, in order of learning rate, change more smoothly than noise would leave them (von
    Neumann's ratio of successive differences to spread, a permutation test at 99%)? Noise alone puts
    neighbours as far apart as any two runs; a valley puts them close. The test needs no noise
    estimate, so it holds where that estimate is too large: on the CNN with Adam (replayed, 40 seeds)
    the noise pooled over batch sizes put B=512's at 0.24-0.49 where its runs scatter 0.17, and a
    valley from 2.3 down to 1.5 read as flat in 22 seeds (its estimate median 3% off)."""
    def ratio(values: np.ndarray) -> np.ndarray:
        spread = np.sum((values - values.mean(axis=-1, keepdims=True)) ** 2, axis=-1)
        return np.sum(np.diff(values, axis=-1) ** 2, axis=-1) / np.maximum(spread, 1e-300)

    shuffled = np.argsort(np.random.default_rng(0).random((permutations, len(means))), axis=1)
    as_smooth = np.sum(ratio(means[shuffled]) <= ratio(means))
    return (1 + as_smooth) / (1 + permutations) < 0.01


def _lucky_at_edge(batch: _Batch, noise: float | None) -> bool:
    """Is the best one run, the last that trained below a divergence, that beat the line through the
    runs just below it beyond noise? On a stability edge some seeds blow up and the survivors scatter;
    a lucky survivor there looks like an optimum right below a cliff, but a valley that falls to a
    cliff falls towards it already in the runs below (a quadratic is convex: the line through its
    lower runs passes below its next one), where a lucky run drops out of the blue (held-out shape
    886, B=64: runs at ×1.2-×1.42 of the optimum scored 0.95-0.99 and one at ×1.60 scored 0.52, 4
    noise deviations below them, beside a run that diverged at ×1.75; 54% of runs there blow up, so
    the estimate on it lost 3,064%, unflagged)."""
    groups, best = batch.groups, batch.best
    if not batch.at_edge or groups.count[best] > 1 or not noise:
        return False
    below = np.flatnonzero(groups.x[best] - groups.x[:best] <= REACH)[-3:]
    if len(below) < 2:
        return False
    design = np.c_[np.ones(len(below)), groups.x[below] - groups.x[best]]
    weighted = design.T @ (groups.count[below, None] * design)
    line = np.linalg.solve(weighted, design.T @ (groups.count[below] * groups.mean[below]))
    spread = math.sqrt(1.0 + np.linalg.solve(weighted, [1.0, 0.0])[0])  # one run against the line's end
    return bool(groups.mean[best] < line[0] - WORSE_Z * noise * spread)


def _set_aside(trials: BatchTrials, x: float) -> BatchTrials:
    """The trials with the complete run at log-lr ``x`` counted as one that diverged."""
    keep = trials.x != x
    return replace(trials, x=trials.x[keep], value=trials.value[keep], diverged_x=np.r_[trials.diverged_x, x])


def _one_valley(mean: np.ndarray, best: int) -> bool:
    """Do the means fall all the way to ``best`` from one side and climb all the way from it on the other?"""
    return bool(np.all(np.diff(mean[:best + 1]) <= 0) and np.all(np.diff(mean[best:]) >= 0))


def _robust_best(groups: Groups) -> int:
    """The learning rate whose neighbourhood did best: each mean's rank averaged with its neighbours'
    within about ×1.16 (a Gaussian kernel in log-lr, weighted by runs). The single best run is often
    a lucky seed where the noise is largest, and everything else is built around this one; ranks,
    not values, so that a cliff next to the optimum (runs a hundred times worse) cannot push it away.
    Only a learning rate whose runs did better than half the others qualifies: among dense runs its
    own rank is one of dozens in its neighbourhood, and a run just past a stability edge, beside the
    runs that did best, took their ranks (the noisy quadratic at 240 trials, B=1024: a run that scored
    2.6 where its neighbours scored 1.3 was called the best, the batch size flagged on the edge of the
    search and left out of the rules, and the rule passed the edge: 16,398% lost)."""
    ranks = np.argsort(np.argsort(groups.mean, kind="stable"), kind="stable").astype(float)
    d = groups.x[:, None] - groups.x[None, :]
    weights = groups.count[None, :] * np.exp(-0.5 * (d / NEIGHBOURHOOD) ** 2)
    smoothed = weights @ ranks / weights.sum(axis=1)
    order = np.lexsort((ranks, smoothed))  # ties go to the better mean
    return int(order[ranks[order] <= (len(ranks) - 1) / 2][0])


def _cliff(diverged_x: np.ndarray, floor: float) -> float:
    """The lowest diverged log-lr above ``floor`` (the lowest complete trial): the optimum lies below
    it, even when a luckier run above it completed. Inf when none."""
    above = diverged_x[diverged_x > floor]
    return float(above.min()) if len(above) else math.inf


def _lrs(bracket: tuple[float, float]) -> tuple[float | None, float | None]:
    return tuple(math.exp(x) if math.isfinite(x) else None for x in bracket)


def _plain_noise(noise: float | None) -> float | None:
    return None if noise is None else float(noise)
