from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.fit._data import batch_trials
from tuner.fit._optimum import (
    BEST_TRIALS,
    MIN_COMPLETE,
    MIN_FIT,
    MIN_SIGNAL_SPAN,
    NO_SIGNAL,
    QUADRATIC,
    TOLERATED,
    WORSE_Z,
    BatchOptimum,
    Groups,
    NoisePrior,
    clearly_worse,
    estimate_cached,
    replicate_noise,
)
from tuner.trials import LR, Outcome, by_batch_size, is_diverged, outcome_of

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_MIN_GAP = math.log(1.25)   # a gap towards the cliff narrower than this is closed
_MIN_REACH = math.log(1.5)  # refine at least this far either side of the best trial...
_MAX_REACH = math.log(4.0)  # ...and at most this far
# Given a hint, the first trial goes there and bracketing steps this far (or on to the hint, when
# the search started far from it). Measured on the noisy quadratic at 40-72 trials (30 seeds):
# against ×4 (often no bracket within a few trials) and ×12 or halfway to the range's end
# (overshoots: worst seed ×8 to ×33 off), ×8 gave the smallest worst-case error; it also beat
# starting with trials at ×4 above and below the hint.
_HINT_STEP = math.log(8.0)
MAX_RUNS = 4  # a learning rate is run at most this many times (with different seeds)
_REPLICATE_REACH = math.log(1.15)  # only a learning rate this close to the estimated optimum is repeated
_HINT_NEAR = math.log(2.0)  # a run this close to the neighbours' hint has looked there
_WALL_GAP = math.log(1.5)  # a valley's wall not found within this of the last run as good as the best is looked for


class ValleySampler(BaseSampler):
    """Searches one log-scale parameter (the learning rate) for the bottom of a noisy valley that
    ends in a divergence cliff, putting few trials where they say most about the optimum.

    1. **Spread**: the first ``n_startup_trials`` cover the range: the first at random, each next
       one in the widest gap left (golden-ratio steps). Given a hint instead (the study handed in
       has an ``lr_hint``, as the ``BatchSizeView`` of a warm-starting ``BatchSizeSampler`` does),
       one trial at the hint.
    2. **Bracket**: while nothing that ran lies beyond the best trial on one side (only diverged
       trials, or the end of the range), the next trial bisects that gap (with a hint: ×8 away, or
       as far as the hint). The optimum often sits just below the cliff, where TPE, counting
       diverged trials as bad, rarely looks.
    3. **Measure the noise**: once MIN_FIT trials completed, the next trial repeats with another
       seed the learning rate that did best within ×1.15 of the estimate (``study``'s
       ``repeats_wanted`` times, once by default; ``BatchSizeSampler`` asks as many as make six
       degrees of freedom over its batch sizes): residuals about a curve through sparse trials
       next to a sharp bottom are its curvature, not the noise, and the fit takes the noise no
       larger than the repeats allow (the study's, which ``BatchSizeSampler`` hands over as
       ``noise_prior``). Not before MIN_FIT: on a budget of six trials a batch size, a repeat in
       their place took a learning rate from the valley (on the noisy quadratic at 48 trials, the
       worst batch size ×1.51 -> ×1.96, 10 seeds). Whenever a single run is the best and did better
       than its neighbours within ×1.15 either side by more than the noise explains, it is repeated
       at once (a lucky seed looks like that; on the stiff quadratic, 40 seeds, the rule's worst
       regret 13.8% -> 2.8%); where the runs are heavy-tailed (one did clearly worse than the runs
       either side of it), so is a lone best between neighbours at any distance. Both off with
       ``replicates=0``.
    4. **Look for the valley** (before bracketing) where no run did better than the others
       (``tuner.fit`` flags ``no-signal``, or every learning rate run over ×4 did within 2% of the
       metric at an optimum, as this batch size's best or the study's ``best_value_anywhere`` puts
       it: an accuracy on its chance plateau): the best run is the luckiest of the noise, so the
       next trial goes where the neighbouring batch sizes found their optimum (the study's
       ``neighbours_lr``, as ``BatchSizeSampler`` hands it over) unless a run lies within ×2 of it,
       else into the widest stretch not yet run below the lowest divergence.
    5. **Refine**: fill the widest gap between the runs around the optimum as ``tuner.fit``
       estimates it from the trials so far (until it can, the learning rate whose runs did best on
       average), out to its nearest neighbours that ran and as far as the estimate's interval
       reaches (at least ×1.5 and at most ×4 away, never past a diverged value or a run that did
       clearly worse: the valley's fit ends there), so the trials bracket the optimum closely on
       both sides: what a local fit of the valley needs. First, where the valley has no wall near
       the estimate on one side (the nearest run that did clearly worse lies more than ×1.5 beyond
       the last one as good as the best), the next trial goes into the half of that gap next to the
       good runs: until both walls are found, the bottom may lie anywhere on the flat. And a gap
       wider than ×4 between two runs as good as the best, or between one and a spike (a run that
       did clearly worse than the runs either side of it: a valley with one bottom cannot rise and
       fall again), is filled wherever it lies: a heavy-tailed run, or a second valley, must not
       hide the stretch that may hold the optimum.

    Measured on the noisy quadratic (benchmarks/fit_accuracy.py), one search per batch size: 74% of
    trials land within ×2 of the optimum, against 27% for TPE, and the fitted optimum is closer.
    ``BatchSizeSampler`` runs one such search per batch size. Other parameters are sampled at random.

    Args:
        n_startup_trials: trials spread over the range before bracketing and refining.
        replicates: share of the refining trials that run again (with another seed) the learning
            rate that did best within ×1.15 of the estimated optimum, or "auto": a quarter where the
            noise is large against the valley's depth, none otherwise; 0 also skips the repeat of
            step 3.
        seed: makes the proposals reproducible.
    """

    def __init__(self, *, n_startup_trials: int = 4, replicates: float | str = "auto",
                 seed: int | None = None) -> None:
        if replicates != "auto" and not (isinstance(replicates, (int, float)) and 0 <= replicates <= 1):
            raise ValueError(f"replicates must be 'auto' or a share in [0, 1], got {replicates!r}")
        self._replicates = replicates
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be >= 1, got {n_startup_trials}")
        self._n_startup_trials = n_startup_trials
        self._rng = np.random.default_rng(seed)
        self._fallback = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        _single_objective(study, self)
        if not (isinstance(param_distribution, FloatDistribution) and param_distribution.log):
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)
        low, high = math.log(param_distribution.low), math.log(param_distribution.high)
        # the trials inside today's range: a range that narrowed leaves earlier ones outside it (and
        # a parameter once another kind, or not positive, says nothing about this one)
        earlier = [t for t in study._get_trials(deepcopy=False, use_cache=True)
                   if t.number != trial.number and t.state != TrialState.FAIL
                   and _within(t.params.get(param_name), param_distribution)]
        earlier.sort(key=lambda t: t.number)
        hint = getattr(study, "lr_hint", None)
        if hint is not None and not earlier:
            x = math.log(hint)
        elif hint is None and len(earlier) < self._n_startup_trials:
            x = self._spread(earlier, param_name, low, high)
        else:
            x = self._bracket_or_refine(study, earlier, param_name, low, high, hint)
        return float(min(max(math.exp(x), param_distribution.low), param_distribution.high))

    def _spread(self, earlier: Sequence[FrozenTrial], name: str, low: float, high: float) -> float:
        first = (math.log(earlier[0].params[name]) - low) / (high - low) if earlier else self._rng.uniform()
        return low + (first + len(earlier) * _GOLDEN) % 1.0 * (high - low)

    def _bracket_or_refine(self, study: optuna.Study, earlier: Sequence[FrozenTrial], name: str,
                           low: float, high: float, hint: float | None) -> float:
        direction = study.direction
        complete = [t for t in earlier if outcome_of(t) == Outcome.COMPLETE]
        if not complete:  # every run so far diverged, fell short (or still runs): below the lowest divergence
            return self._short_of_the_cliff(earlier, name, low, high)
        sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
        x_best = _best_on_average(complete, name, sign)
        # a trial another worker is running counts as run: its result is coming, so don't propose it again
        ran = [math.log(t.params[name]) for t in earlier if not is_diverged(t)
               and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
        cliff = min([math.log(t.params[name]) for t in earlier if is_diverged(t)
                     and math.log(t.params[name]) > x_best] + [high])
        above = min([x for x in ran if x > x_best] + [math.inf])
        below = max([x for x in ran if x < x_best] + [-math.inf])
        fit = fit_of(earlier, sign < 0, name, replicated=getattr(study, "noise_prior", None))
        no_signal = ((fit is not None and NO_SIGNAL in fit.flags)
                     or _indistinct(complete, name, sign, getattr(study, "best_value_anywhere", None)))
        # where the trials so far put the optimum (``tuner.fit``'s estimate): with noise, the best single
        # trial is often a lucky one, and refining around it keeps the search on one side
        fit = fit if fit is not None and fit.lr is not None and fit.method in (QUADRATIC, BEST_TRIALS) else None
        if no_signal:  # refining around the luckiest of the noise measures noise
            return self._where_the_valley_may_be(earlier, ran, name, low, high, getattr(study, "neighbours_lr", hint))
        if above > cliff and cliff - x_best > _MIN_GAP:
            return _bracket(x_best, cliff, hint)
        if below == -math.inf and x_best - low > _MIN_GAP:
            return _bracket(x_best, low, hint)
        # the noise measured, not guessed: repeats owed near the optimum once the valley has its trials
        owed = len(complete) >= MIN_FIT and _repeats(earlier, name) < getattr(study, "repeats_wanted", 1)
        center = x_best if fit is None else math.log(fit.lr)
        # a pruned run did worse than its neighbours promised; a running one will say: both close a gap
        stopped = [math.log(t.params[name]) for t in earlier
                   if t.state == TrialState.RUNNING or outcome_of(t) == Outcome.PRUNED]
        lone = _lone_best(fit) if self._replicates != 0 else None
        for proposal in (lone, self._unmeasured_stretch(fit, stopped),
                         self._toward_a_wall(fit, center, cliff, stopped), self._replicate(fit, center, owed)):
            if proposal is not None:
                return proposal
        above = min([x for x in ran if x > center] + [math.inf])
        below = max([x for x in ran if x < center] + [-math.inf])
        # out to the nearest trials either side, and as far as the optimum's interval reaches: the
        # less certain the estimate, the wider the search around it
        up, down = ((math.log(fit.ci[1]) - center, center - math.log(fit.ci[0])) if fit is not None else (0.0, 0.0))
        reach_up = min(max(min(above, cliff) - center, up, _MIN_REACH), _MAX_REACH, cliff - center)
        reach_down = min(max(center - below, down, _MIN_REACH), _MAX_REACH, center - low)
        # never past the nearest run either side that did clearly worse: the valley's fit ends there
        worse = _clearly_worse_x(fit)
        start = max([center - reach_down, *worse[worse < center]])
        end = min([center + reach_up, *worse[worse > center]])
        return self._into_widest_gap([x_best, *ran], start, end)

    def _where_the_valley_may_be(self, earlier: Sequence[FrozenTrial], ran: Sequence[float], name: str,
                                 low: float, high: float, neighbours: float | None) -> float:
        """Where no run did better than the others (``no-signal``, or all within 2%: ``_indistinct``),
        the best run is the luckiest of the noise: the next trial goes where the valley may be. At
        ``neighbours`` (log: where the other batch sizes found their optimum) while no run lies within
        ×2 of it; then into the middle of the widest stretch not yet run below the lowest divergence.
        (An accuracy flat at chance save within ×1.4 of the optimum, held-out shape 4: three of five
        batch sizes refined around their luckiest chance-level run, ×0.0005 of the optimum, for 14 of
        their 16 trials while both neighbours had found theirs, and no rule could be fitted.)"""
        cliff = min([math.log(t.params[name]) for t in earlier if is_diverged(t)] + [high])
        if neighbours is not None:
            x = math.log(neighbours)
            if x < cliff and all(abs(x - math.log(t.params[name])) > _HINT_NEAR for t in earlier):
                return x
        return self._into_widest_gap(ran, low, cliff if cliff > low else high)  # a divergence at the range's end

    def _short_of_the_cliff(self, earlier: Sequence[FrozenTrial], name: str, low: float, high: float) -> float:
        """With no run complete: below the lowest divergence, and above the highest run that stopped
        short below it (bisecting that gap), or anywhere below it where none did. In a study scored by
        the steps to a goal a run too slow to reach it is stopped, not complete: drawn over the whole
        range below the cliff instead, eight runs at B=1024 on Zhang's quadratic all landed too low
        and the batch size was left without an estimate."""
        cliff = min([math.log(t.params[name]) for t in earlier if is_diverged(t)] + [high])
        short = [math.log(t.params[name]) for t in earlier if outcome_of(t) == Outcome.PRUNED]
        short = [x for x in short if x < cliff]
        return (max(short) + cliff) / 2 if short else self._rng.uniform(low, cliff)

    def _into_widest_gap(self, ran: Sequence[float], start: float, end: float) -> float:
        """A point in the middle half of the widest gap between the learning rates run in
        [start, end] (its ends count as run): drawn uniformly instead, trials left a stretch ×1.37
        wide between the best run and the wall unmeasured for nine trials in a row, and the
        optimum lay in it (noisy quadratic, B=1024, ×0.87 of the truth, 11% lost)."""
        points = np.unique([start, end, *(x for x in ran if start < x < end)])
        widest = int(np.argmax(np.diff(points)))
        quarter = (points[widest + 1] - points[widest]) / 4
        return float(self._rng.uniform(points[widest] + quarter, points[widest + 1] - quarter))

    def _unmeasured_stretch(self, fit: BatchOptimum | None, stopped: Sequence[float]) -> float | None:
        """A trial in the middle half of the widest gap wider than ×4 (more than refining reaches
        from the estimate) between neighbouring learning rates run, where both did as well as the
        best (within noise), or one did and the other is a spike: a run that did clearly worse than
        the runs either side of it. Between two runs as good as the best the optimum may lie,
        however far from the estimate they are; and a valley with one bottom cannot rise and fall
        again, so a spike is an unlucky run (runs near a stability edge are heavy-tailed) or a
        second valley, and the stretch it stands for is unmeasured either way. (CNN with Adam,
        B=128: one run at chance level between runs ×11 below and ×1.5 above that both learned kept
        the search among heavy-tailed runs above it; the optimum lay in the stretch below it, and
        the estimate was ×9.7 off, 52% lost.) Not where a run between them was pruned (it did worse
        than its neighbours promised) or still runs. Narrower gaps are refining's: on the noisy
        quadratics, filling every gap over ×1.5 between runs as good as the best sent trials to the
        valley's flanks, ×1.4 to ×1.7 from the optimum, and cost the trials near it."""
        if fit is None or fit.valley is None or not fit.noise:
            return None
        g, noise = fit.valley.groups, fit.noise
        good = ~clearly_worse(g, int(np.argmin(g.mean)), noise)
        ends = good | _spikes(g, noise)  # a gap between two of these, one of them as good as the best
        gaps = [(g.x[i + 1] - g.x[i], g.x[i]) for i in range(len(g.x) - 1)
                if ends[i] and ends[i + 1] and (good[i] or good[i + 1])
                and not any(g.x[i] < x < g.x[i + 1] for x in stopped)]
        width, left = max(gaps, default=(0.0, 0.0))
        if width <= _MAX_REACH:
            return None
        return float(self._rng.uniform(left + width / 4, left + 3 * width / 4))

    def _toward_a_wall(self, fit: BatchOptimum | None, center: float, cliff: float,
                       stopped: list[float]) -> float | None:
        """A trial between the last learning rate that did as well as the best (within noise) and the
        first beyond it that did clearly worse (or diverged, or was pruned, or still runs: ``stopped``),
        on the side of the estimate where they lie more than ×1.5 apart: until the valley has a wall
        on both sides, its bottom can lie anywhere on the flat, and trials near the estimate alone
        never say so."""
        if fit is None or fit.valley is None:
            return None
        groups = fit.valley.groups
        worse = np.isin(groups.x, _clearly_worse_x(fit))
        gaps = []
        for way in (-1.0, 1.0):
            beyond = way * (groups.x - center) > 0
            walls = [*groups.x[beyond & worse], *(x for x in stopped if way * (x - center) > 0),
                     *([cliff] if way > 0 else [])]
            if not walls:
                continue  # no wall at all: bracketing looks for one
            wall = min(walls, key=lambda x: abs(x - center))
            good = groups.x[beyond & ~worse & (way * (groups.x - wall) < 0)]
            edge = max(good, key=lambda x: abs(x - center)) if len(good) else center
            if abs(wall - edge) > _WALL_GAP:
                gaps.append((abs(wall - edge), edge, wall))
        if not gaps:
            return None
        _, edge, wall = max(gaps)  # the half next to the edge: each trial at least halves the gap
        return float(self._rng.uniform(min(edge, (edge + wall) / 2), max(edge, (edge + wall) / 2)))

    def _replicate(self, fit: BatchOptimum | None, center: float, owed: bool = False) -> float | None:
        """The learning rate that did best within ×1.15 of the estimated optimum again (another seed),
        among those run fewer than MAX_RUNS times: always while repeats are ``owed`` (the noise is
        measured there), then now and then where the noise is large against the valley's depth, so
        that the optimum and its cost do not rest on one seed's luck. The best, not the nearest: a
        lucky run looks best, and only its repeat says so (the nearest, repeated three times on the
        stiff quadratic, left a lucky run next to the wall to pull the estimate ×1.44 of the truth)."""
        if fit is None or fit.valley is None or fit.noise is None or self._replicates == 0:
            return None
        share = 1.0 if owed else self._replicates if self._replicates != "auto" else _auto_share(fit)
        if share <= 0 or self._rng.uniform() >= share:
            return None
        groups = fit.valley.groups
        # the best run near the optimum: a lucky seed looks best, and its repeat says so
        near = (np.abs(groups.x - center) <= _REPLICATE_REACH) & (groups.count < MAX_RUNS)
        if not near.any():
            return None  # no run close to the optimum yet: a new learning rate says more
        return float(groups.x[near][np.argmin(groups.mean[near])])


def _lone_best(fit: BatchOptimum | None) -> float | None:
    """The best learning rate again, where one run alone makes it the best and it did better than the
    line through its neighbours either side by more than the noise explains: a lucky seed looks
    exactly like this, and only a repeat says so. Once repeated, its mean stands. Only between
    neighbours within ×1.15 (too close for the valley's curvature to explain a dip), unless the runs
    are heavy-tailed: a spike (a run clearly worse than the runs either side of it) says that one run
    can land far from its learning rate's mean, and a lucky one as far below it as a spike above.
    (Noisy quadratic tuned for the steps to a goal, B=32: one run took 139 steps between runs at
    ×0.99 and ×1.06 that took 182 and 199; read as the optimum, 16% too few. The CNN with Adam,
    replayed, 40 seeds: unflagged estimates over 30% lost 22 -> 15 on its loss, 3 -> 0 on its
    accuracy, where a lucky run between neighbours ×1.2 to ×1.6 away drew the valley to itself.)"""
    if fit is None or fit.valley is None or not fit.noise:
        return None
    g = fit.valley.groups
    best = int(np.argmin(g.mean))
    if g.count[best] > 1 or not 0 < best < len(g.x) - 1:
        return None
    left, right = best - 1, best + 1
    if g.x[right] - g.x[left] > 2 * _REPLICATE_REACH and not _spikes(g, fit.noise).any():
        return None
    a = (g.x[right] - g.x[best]) / (g.x[right] - g.x[left])
    line = a * g.mean[left] + (1 - a) * g.mean[right]
    scale = fit.noise * math.sqrt(1 + a**2 / g.count[left] + (1 - a) ** 2 / g.count[right])
    return float(g.x[best]) if line - g.mean[best] > WORSE_Z * scale else None


def _spikes(g: Groups, noise: float) -> np.ndarray:
    """Which learning rates did clearly worse than the runs either side of them (beyond noise)."""
    spike = np.zeros(len(g.x), dtype=bool)
    spike[1:-1] = [clearly_worse(g, i - 1, noise)[i] and clearly_worse(g, i + 1, noise)[i]
                   for i in range(1, len(g.x) - 1)]
    return spike


def _indistinct(complete: Sequence[FrozenTrial], name: str, sign: float, anywhere: float | None = None) -> bool:
    """Every learning rate run so far, over at least ×4, did within TOLERATED (2%) of the metric at
    an optimum: as good as one another for any rule, and perhaps all on a plateau. An accuracy at
    chance varies little from run to run, so the noise measured there calls every difference real,
    and the search refined around the luckiest of them (held-out shape 4: 0.5015 against 0.499);
    the valley, wherever it is, lies where nothing ran yet. The metric at an optimum is the larger
    (in size) of this batch size's best and the best ``anywhere`` in the study: runs stuck at
    chance have not seen their optimum's level, their neighbours have. (Held-out shapes 228, 299,
    370, 404, accuracies at chance 0.1 that varied by 0.005-0.02 where others reached 0.9: judged
    against 0.1 they looked apart, and a batch size refined at chance for 11-25 trials, ×0.0002 to
    ×0.03 of the optimum, 33-82% lost.) A positive loss's best anywhere is never larger than its own."""
    means = _mean_by_lr(complete, name, sign)
    if len(means) < MIN_COMPLETE or max(means) - min(means) < MIN_SIGNAL_SPAN:
        return False
    best, worst = min(means.values()), max(means.values())
    return worst - best <= TOLERATED * max(abs(best), abs(anywhere or 0.0))


def _best_on_average(complete: Sequence[FrozenTrial], name: str, sign: float) -> float:
    """The learning rate (log) whose runs did best on average: a lucky run beside a repeated
    learning rate that did better on average is not the best. (Until the fit has a valley, the search
    refines around it: after a run below a spike measured 0.72, it stayed around a run of 0.68
    whose repeat made 0.96, among heavy-tailed runs ×9 from the optimum.)"""
    means = _mean_by_lr(complete, name, sign)
    return min(means, key=means.__getitem__)


def _mean_by_lr(complete: Sequence[FrozenTrial], name: str, sign: float) -> dict[float, float]:
    """Each learning rate run (log) and the mean of its runs (times ``sign``: lower is better)."""
    runs: dict[float, list[float]] = {}
    for t in complete:
        runs.setdefault(math.log(t.params[name]), []).append(sign * t.value)
    return {x: sum(values) / len(values) for x, values in runs.items()}


def _clearly_worse_x(fit: BatchOptimum | None) -> np.ndarray:
    """The learning rates (log) whose runs did clearly worse than the best (beyond noise)."""
    if fit is None or fit.valley is None:
        return np.zeros(0)
    groups = fit.valley.groups
    return groups.x[clearly_worse(groups, int(np.argmin(groups.mean)), fit.noise)]


def fit_of(trials: Sequence[FrozenTrial], maximize: bool, param: str = LR,
           least: int = MIN_COMPLETE, replicated: NoisePrior | None = None) -> BatchOptimum | None:
    """``tuner.fit``'s estimate of the optimum from one batch size's trials (remembered between calls:
    the samplers and the pruner ask again and again); None with fewer than ``least`` complete. The
    range tried stands for the search's: it only bounds the interval of an estimate on one trial."""
    found = batch_trials(trials, param=param)
    if len(found.x) < max(least, 1):
        return None
    tried = np.concatenate([found.x, found.pruned_x, found.diverged_x])
    lr_range = (math.exp(tried.min()), math.exp(tried.max()))
    return estimate_cached(tuple(found.x), tuple(found.value), tuple(found.pruned_x), tuple(found.diverged_x),
                           maximize, lr_range, replicated)


def study_noise(trials: Sequence[FrozenTrial], maximize: bool) -> NoisePrior | None:
    """The noise the study's repeated learning rates measure, over all its batch sizes."""
    return replicate_noise([batch_trials(group) for group in by_batch_size(trials).values()], maximize)


def _repeats(trials: Sequence[FrozenTrial], name: str) -> int:
    """How many of the complete (or running) runs repeat a learning rate run before: the
    replicates' degrees of freedom, those still to report included."""
    values = [t.params[name] for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING)
              and not is_diverged(t)]
    return len(values) - len(set(values))


def _auto_share(fit: BatchOptimum) -> float:
    """A quarter of the refining trials, where one run's noise is more than a quarter of how much
    worse the trials near the optimum (within ×4) did than the best; none otherwise."""
    groups = fit.valley.groups
    near = np.abs(groups.x - math.log(fit.lr)) <= math.log(4.0)
    depth = float(np.median(groups.mean[near] - groups.mean.min())) if near.sum() > 1 else 0.0
    return 0.25 if fit.noise > 0.25 * depth else 0.0


def _within(value: Any, distribution: FloatDistribution) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and distribution.low <= value <= distribution.high)


def _single_objective(study: optuna.Study, sampler: BaseSampler) -> None:
    if len(study.directions) != 1:
        raise ValueError(f"{type(sampler).__name__} searches for one metric's optimum; this study has "
                         f"{len(study.directions)} objectives")


def _bracket(x_best: float, end: float, hint: float | None) -> float:
    """The next trial between the best one and ``end`` (the cliff, or the range's end), where
    nothing has run: halfway; with a hint, ×8 away or on to the hint, but no further than halfway."""
    halfway = (x_best + end) / 2
    if hint is None:
        return halfway
    way = 1.0 if end > x_best else -1.0
    reach = max(_HINT_STEP, way * (math.log(hint) - x_best))
    return x_best + way * min(reach, way * (halfway - x_best))
