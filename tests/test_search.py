"""Batch-aware search: trials balanced across batch sizes, LR proposed per batch size, fair pruning."""
import math
from collections import Counter

import numpy as np
import optuna
import pytest
from conftest import spec_dict
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.pruners import HyperbandPruner, MedianPruner
from optuna.trial import TrialState, create_trial

from tuner.errors import InputError
from tuner.fit import fit_study
from tuner.runner import open_study, run_study
from tuner.search import BatchSizePruner, BatchSizeSampler, BatchSizeView, ValleySampler
from tuner.search._hint import lr_hint
from tuner.spec import parse_spec
from tuner.storage import open_storage
from tuner.trials import OUTCOME, Outcome
from tuner.workload import Workload, load_workload

SIZES = [8, 32, 128, 512]
LR_DIST = FloatDistribution(1e-4, 1.0, log=True)
WIDE = FloatDistribution(1e-4, 4.0, log=True)


def true_optimum(batch_size):
    return 1e-3 * batch_size  # lr* = 1e-3 B: a ×64 spread over SIZES


def valley(run):
    """Loss with its optimum exactly at true_optimum(B); diverges 8x above it."""
    z = math.log(run.lr / true_optimum(run.batch_size))
    if z > math.log(8):
        return math.nan
    final = 1.0 + z * z
    for k in range(1, 5):
        run.report(k * 1000, final + (4 - k) * 0.1)
    return final


def run(storage, train=valley, **tables):
    spec = parse_spec(spec_dict(**{"workload": {"target": "t:valley"}, **tables}))
    study = open_study(spec, storage)
    run_study(study, spec, Workload("t:valley", train, spec.workload.options))
    return study


@pytest.fixture
def storage(tmp_path):
    return open_storage(str(tmp_path / "s.journal"), create=True)


@pytest.mark.parametrize("sampler", ["valley", "tpe", "random"])
def test_even_shares_give_every_batch_size_the_same_trials(storage, sampler):
    study = run(storage, study={"n_trials": 40}, search={"batch_sizes": SIZES, "sampler": sampler,
                                                          "shares": "even"})
    assert Counter(t.params["batch_size"] for t in study.trials) == {b: 10 for b in SIZES}


def test_a_batch_size_whose_runs_diverged_is_due_more_trials_than_a_settled_one():
    # bracketing a cliff took nine of B=8's twelve trials: its valley is still to be found, while
    # B=512's ten complete runs already fit a clean valley; B=8 is due the next trials (with equal
    # weights, B=512 would be)
    rng = np.random.default_rng(0)
    study = optuna.create_study()
    dists = {"batch_size": IntDistribution(8, 512, log=True), "lr": FloatDistribution(1e-4, 10.0, log=True)}
    for z in np.linspace(-1.0, 0.8, 10):
        value = (1.0 + z * z) * (1 + 0.01 * rng.standard_normal())
        params = {"batch_size": 512, "lr": float(true_optimum(512) * math.exp(z))}
        study.add_trial(create_trial(value=value, params=params, distributions=dists))
    for z in (-1.5, -0.5, 0.2, *np.linspace(0.7, 3.0, 9)):
        params = {"batch_size": 8, "lr": float(true_optimum(8) * math.exp(z))}
        if z < 0.5:
            study.add_trial(create_trial(value=1.0 + z * z, params=params, distributions=dists))
        else:
            study.add_trial(create_trial(state=TrialState.PRUNED, params=params, distributions=dists,
                                         user_attrs={"outcome": "diverged"}))
    sampler = BatchSizeSampler([8, 512], seed=0)
    picks = Counter(sampler.sample_independent(study, study.ask(), "batch_size", dists["batch_size"])
                    for _ in range(5))
    assert picks == {8: 5}


def test_below_ten_trials_per_batch_size_the_default_shares_are_even(storage):
    # every batch size needs its whole share to bracket its optimum: weighted, one was left with 6 of
    # 32 trials and the study could not be fitted
    study = run(storage, train=noisy_at_512, study={"n_trials": 32}, search={"batch_sizes": SIZES})
    assert Counter(t.params["batch_size"] for t in study.trials) == {b: 8 for b in SIZES}


def noisy_at_512(run):
    """The valley, with seed noise of 30% at B=512 and 0.3% elsewhere: only 512's optimum stays uncertain."""
    z = math.log(run.lr / true_optimum(run.batch_size))
    if z > math.log(8):
        return math.nan
    noise = 0.3 if run.batch_size == 512 else 0.003
    final = (1.0 + z * z) * (1.0 + noise * np.random.default_rng(run.seed).standard_normal())
    for k in range(1, 5):
        run.report(k * 1000, final + (4 - k) * 0.1)
    return final


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_batch_size_whose_optimum_is_uncertain_gets_more_trials_and_none_less_than_half(storage, seed):
    study = run(storage, train=noisy_at_512, study={"n_trials": 80, "seed": seed},
                search={"batch_sizes": SIZES, "pruner": "none"})
    counts = Counter(t.params["batch_size"] for t in study.trials)
    assert counts[512] > max(counts[b] for b in SIZES if b != 512)
    assert min(counts.values()) >= max(counts.values()) / 2 - 1


def test_each_batch_size_finds_its_own_optimum(storage):
    study = run(storage, study={"n_trials": 64}, search={"batch_sizes": SIZES, "lr": [1e-5, 10.0]})
    for b in SIZES:
        complete = [t for t in study.trials if t.params["batch_size"] == b and t.state == TrialState.COMPLETE]
        best = min(complete, key=lambda t: t.value)
        # neighbouring sizes' optima are ×4 apart: each batch size found its own
        assert abs(math.log(best.params["lr"] / true_optimum(b))) < math.log(2), b


def test_without_warm_start_startup_trials_spread_over_the_whole_range(storage):
    study = run(storage, study={"n_trials": 16}, search={"batch_sizes": SIZES, "lr": [1e-5, 10.0],
                                                          "startup_trials": 4, "pruner": "none",
                                                          "warm_start": False})
    for b in SIZES:
        positions = sorted(math.log(t.params["lr"] / 1e-5) / math.log(1e6)
                           for t in study.trials if t.params["batch_size"] == b)
        gaps = [b - a for a, b in zip([0.0, *positions], [*positions, 1.0])]
        assert len(positions) == 4 and max(gaps) < 0.45  # no quarter-wide hole in log-lr


def test_a_warm_started_batch_size_begins_where_its_neighbours_found_the_optimum(storage):
    run(storage, study={"n_trials": 40}, search={"batch_sizes": SIZES, "lr": [1e-5, 10.0]})
    # 64 and 2048 join on resume: between two searched sizes, and beyond the largest
    study = run(storage, study={"n_trials": 42}, search={"batch_sizes": [*SIZES, 64, 2048], "lr": [1e-5, 10.0],
                                                          "warm_start": True})
    for b in (64, 2048):
        first = min((t for t in study.trials if t.params["batch_size"] == b), key=lambda t: t.number)
        assert abs(math.log(first.params["lr"] / true_optimum(b))) < math.log(2), b  # range: ×10⁶


def test_the_search_closes_in_on_an_optimum_just_below_the_divergence_cliff(storage):
    def train(run):  # the loss falls all the way up to the cliff at lr = 0.5
        return math.nan if run.lr > 0.5 else 1.0 / run.lr

    study = run(storage, train, study={"n_trials": 10},
                search={"batch_sizes": [8], "lr": [1e-4, 10.0], "pruner": "none"})
    best = min(study.get_trials(states=[TrialState.COMPLETE]), key=lambda t: t.value)
    assert 0.5 / 1.25 < best.params["lr"] <= 0.5


def test_refining_keeps_trials_close_around_the_optimum(storage):
    study = run(storage, study={"n_trials": 80}, search={"batch_sizes": [8, 512], "lr": [1e-5, 10.0],
                                                          "pruner": "none"})
    later = [t for t in study.trials if t.number >= 40]  # after spreading and bracketing
    near = [t for t in later if abs(math.log(t.params["lr"] / true_optimum(t.params["batch_size"]))) < math.log(4)]
    assert len(near) >= 0.8 * len(later)


def test_a_trial_another_worker_is_running_is_not_proposed_again():
    study = optuna.create_study(sampler=ValleySampler(n_startup_trials=1, seed=0))
    study.add_trial(create_trial(value=1.0, params={"lr": 1e-3}, distributions={"lr": LR_DIST}))
    running = study.ask({"lr": LR_DIST})  # brackets upwards, and is still running
    again = study.ask({"lr": LR_DIST})
    assert running.params["lr"] > 1e-3 and again.params["lr"] < 1e-3  # the other side instead


def test_a_valley_without_a_wall_near_the_estimate_is_searched_towards_the_wall():
    # the synthetic sqrt valley at B=64: trials crowded just above the optimum (all as good as one
    # another within noise) and the nearest run that did clearly worse ×3 below them; refining around
    # the estimate alone never tried the gap, and the reported optimum stayed ×1.3 too high
    study = optuna.create_study(sampler=ValleySampler(n_startup_trials=1, seed=0))
    for lr, value in [(1e-4, 9.0), (0.0085, 0.64), (0.0257, 0.355), (0.027, 0.37), (0.0284, 0.38),
                      (0.0290, 0.36), (0.0344, 0.65), (0.0368, 0.72)]:
        study.add_trial(create_trial(value=value, params={"lr": lr}, distributions={"lr": LR_DIST}))
    rng = np.random.default_rng(0)
    for _ in range(6):
        trial = study.ask({"lr": LR_DIST})
        z = math.log(trial.params["lr"] / 0.02)  # the truth: lr* = 0.02, twice as steep above, 5% noise
        study.tell(trial, (0.3 + 0.5 * z * z * (2.0 if z > 0 else 1.0)) * (1 + 0.05 * rng.standard_normal()))
    found = [t.params["lr"] for t in study.trials[8:]]
    assert any(0.02 / 1.25 < lr < 0.02 * 1.25 for lr in found), found
    assert all(0.0085 < lr < 0.0368 for lr in found), found  # never past either wall


def test_refining_fills_the_gap_between_the_best_runs_and_the_wall_and_goes_no_further():
    # the noisy quadratic at B=1024 (seed 7 of the panel): the best runs at ×0.87 of the exact
    # optimum, the next one above at ×1.20 and 300 times worse; a gap ×1.37 wide, too narrow to
    # count as a valley without a wall. Drawn uniformly around the estimate (×0.58 to ×1.31),
    # nine refining trials in a row landed below ×0.76, and the optimum, in the gap, was missed
    from tuner.workloads import quadratic

    optimum = quadratic.optimal_lr(1024, samples=16384)
    study = optuna.create_study(sampler=ValleySampler(n_startup_trials=1, seed=0))
    for multiple, value in [(0.003, 67.0), (0.2, 6.05), (0.659, 1.857), (0.778, 1.582), (0.79, 1.56),
                            (0.819, 1.506), (0.827, 1.489), (0.827, 1.512), (0.827, 1.482), (0.874, 1.439),
                            (0.874, 1.474), (1.197, 477.9)]:
        study.add_trial(create_trial(value=value, params={"lr": multiple * optimum}, distributions={"lr": WIDE}))
    found = []
    for _ in range(3):
        trial = study.ask({"lr": WIDE})
        found.append(trial.params["lr"] / optimum)
        study.tell(trial, quadratic.expected_loss(trial.params["lr"], 1024, samples=16384))
    gap = math.log(1.197 / 0.874)
    assert 0.874 * math.exp(gap / 4) <= found[0] <= 1.197 * math.exp(-gap / 4), found  # the gap's middle half
    assert all(0.874 < multiple < 1.197 for multiple in found), found  # never past the wall's run


def test_a_repeat_runs_again_the_best_run_near_the_estimate_not_the_nearest():
    # a lucky run looks best, and only its repeat says so: on the stiff quadratic the run nearest
    # the estimate was repeated three times while one lucky run beside the wall pulled the
    # estimate to ×1.44 of the truth
    study = optuna.create_study(sampler=ValleySampler(n_startup_trials=1, replicates=1.0, seed=0))
    for lr, value in [(1e-4, 9.0), (0.01, 0.52), (0.01, 0.51), (0.014, 0.41), (0.018, 0.36), (0.02, 0.35),
                      (0.022, 0.33), (0.026, 0.37), (0.03, 0.45), (0.5, 4.0)]:  # the noise's repeat is done
        study.add_trial(create_trial(value=value, params={"lr": lr}, distributions={"lr": LR_DIST}))
    trial = study.ask({"lr": LR_DIST})
    assert trial.params["lr"] == 0.022  # the best; the estimate lies nearer 0.02


def test_a_run_luckier_than_its_close_neighbours_is_repeated_at_once():
    # steps to a goal on the noisy quadratic (B=32): one run at 0.5253 took 139 steps where runs at
    # ×0.94 and ×1.06 took 182 and 199, far below the line through them for the noise the repeats
    # measure (about 2%); read as the optimum it was 16% short of the closed form, and only its
    # repeat says it was luck
    study = optuna.create_study(sampler=BatchSizeSampler([32], seed=0))
    distributions = {"batch_size": IntDistribution(8, 512, log=True), "lr": LR_DIST}
    for lr, steps in [(0.0673, 558.1), (0.1632, 256.0), (0.1861, 239.7), (0.1861, 235.1), (0.2052, 222.3),
                      (0.2052, 226.0), (0.2747, 194.3), (0.2747, 187.9), (0.3429, 176.4), (0.3429, 179.5),
                      (0.3873, 166.0), (0.3873, 171.2), (0.4950, 181.8), (0.5253, 139.5), (0.5552, 198.7),
                      (0.6245, 259.9), (0.6245, 253.0)]:
        study.add_trial(create_trial(value=steps, params={"batch_size": 32, "lr": lr}, distributions=distributions))
    assert study.ask(distributions).params["lr"] == 0.5253
    study.add_trial(create_trial(value=183.0, params={"batch_size": 32, "lr": 0.5253}, distributions=distributions))
    assert study.ask(distributions).params["lr"] != 0.5253  # repeated once, its mean stands


@pytest.mark.parametrize("spike_loss, repeated", [(0.598, True), (0.30, False)])
def test_among_heavy_tailed_runs_a_lone_best_is_repeated_however_far_its_neighbours(spike_loss, repeated):
    # the digits CNN with Adam replayed from its grid (B=16, seed 0): the run at 0.0106 scored 0.232
    # between runs ×0.61 and ×1.57 away that scored 0.60 and 0.34, and the run at 0.0064 did clearly
    # worse than both its neighbours: heavy tails, so the best may be one lucky seed (its repeat
    # scored 0.306). Where no run spikes, a dip between distant neighbours is the valley's curvature
    trials = [(0.00081, 1.507), (0.00478, 0.359), (0.0064, spike_loss), (0.01057, 0.232), (0.01661, 0.343),
              (0.02732, 0.316), (0.2403, 1.941), (0.92117, 2.443)]
    for seed in range(4):
        study = optuna.create_study(sampler=ValleySampler(n_startup_trials=1, seed=seed))
        for lr, loss in trials:
            study.add_trial(create_trial(value=loss, params={"lr": lr}, distributions={"lr": LR_DIST}))
        assert (study.ask({"lr": LR_DIST}).params["lr"] == 0.01057) == repeated


def test_a_run_worse_than_the_runs_either_side_of_it_sends_the_search_into_the_wider_gap_beside_it():
    # the digits CNN with Adam at B=128 (the panel's seed 2): one run at chance level (2.31) between
    # runs ×11 below and ×1.5 above that both learned; refining stayed above it, among heavy-tailed
    # runs, and reported lr 0.25 where the 24-seed grid puts the optimum at 0.026 (52% lost). A
    # valley with one bottom cannot rise and fall again like that: the stretch below it is unmeasured
    study = optuna.create_study(sampler=ValleySampler(n_startup_trials=1, seed=0))
    for lr, loss in [(0.000256, 2.289), (0.000981, 2.199), (0.00863, 1.161), (0.0945, 2.308), (0.1386, 1.409),
                     (0.1476, 1.297), (0.1678, 1.093), (0.1851, 0.957), (0.2105, 1.274), (0.2487, 0.742),
                     (0.2487, 1.059), (0.2909, 1.032), (0.2926, 0.676), (0.2926, 0.956), (0.3521, 1.241),
                     (0.3592, 1.652), (0.5394, 1.832)]:
        study.add_trial(create_trial(value=loss, params={"lr": lr}, distributions={"lr": LR_DIST}))
    gap = math.log(0.0945 / 0.00863)
    lr = study.ask({"lr": LR_DIST}).params["lr"]
    assert 0.00863 * math.exp(gap / 4) <= lr <= 0.0945 * math.exp(-gap / 4), lr  # the gap's middle half
    study.add_trial(create_trial(value=0.72, params={"lr": lr}, distributions={"lr": LR_DIST}))
    assert 0.00863 < study.ask({"lr": LR_DIST}).params["lr"] < 0.0945  # the new best: refined around


@pytest.mark.parametrize("trials, refined", [
    # noise alone: no run did clearly worse than both its neighbours
    ([(0.001, 2.0), (0.004, 0.9), (0.01, 0.52), (0.014, 0.41), (0.018, 0.36), (0.018, 0.37), (0.022, 0.33),
      (0.03, 0.45), (0.06, 0.9), (0.5, 4.0)], (0.01, 0.06)),
    # the same CNN at B=64 (seed 1): a run at chance level at 0.0897, and the next run above it, at
    # 0.38, did clearly worse than the best too; filling that gap sent six runs to 0.13-0.26
    ([(0.000335, 2.258), (0.00128, 1.937), (0.00629, 1.069), (0.00686, 0.862), (0.00694, 0.824), (0.0103, 0.520),
      (0.0113, 0.745), (0.0209, 0.501), (0.0286, 0.713), (0.044, 0.343), (0.044, 0.525), (0.0674, 0.538),
      (0.0897, 2.311), (0.381, 1.470)], (0.006, 0.0897)),
])
def test_no_trial_goes_beside_a_spike_unless_toward_a_run_as_good_as_the_best(trials, refined):
    study = optuna.create_study(sampler=ValleySampler(n_startup_trials=1, seed=0))
    for lr, loss in trials:
        study.add_trial(create_trial(value=loss, params={"lr": lr}, distributions={"lr": LR_DIST}))
    assert refined[0] < study.ask({"lr": LR_DIST}).params["lr"] < refined[1]


def test_with_no_run_complete_the_search_bisects_between_the_runs_that_fell_short_and_the_cliff():
    # tuned for the steps to a goal, runs too slow to reach it are stopped (pruned), not complete:
    # drawn anywhere below the divergence instead, eight runs at B=1024 on Zhang's quadratic all
    # landed too low and the batch size was left without an estimate
    study = optuna.create_study(sampler=ValleySampler(seed=0))
    for lr, outcome in [(0.001, Outcome.PRUNED), (0.01, Outcome.PRUNED), (0.03, Outcome.PRUNED),
                        (0.3, Outcome.DIVERGED)]:
        study.add_trial(create_trial(state=TrialState.PRUNED, params={"lr": lr}, distributions={"lr": LR_DIST},
                                     user_attrs={OUTCOME: outcome}))
    assert study.ask({"lr": LR_DIST}).params["lr"] == pytest.approx(math.sqrt(0.03 * 0.3))
    only_diverged = optuna.create_study(sampler=ValleySampler(seed=0))
    only_diverged.add_trial(create_trial(state=TrialState.PRUNED, params={"lr": 0.3}, distributions={"lr": LR_DIST},
                                         user_attrs={OUTCOME: Outcome.DIVERGED}))
    assert LR_DIST.low <= only_diverged.ask({"lr": LR_DIST}).params["lr"] < 0.3  # anywhere below it


def test_a_search_far_below_its_hint_climbs_to_it():
    study = optuna.create_study()
    for lr, value in [(1e-4, 9.0), (8e-4, 5.0)]:  # the best is the highest tried: bracket upwards
        study.add_trial(create_trial(value=value, params={"batch_size": 64, "lr": lr},
                                     distributions={"batch_size": IntDistribution(8, 512, log=True), "lr": LR_DIST}))
    trial = study.ask({"batch_size": IntDistribution(8, 512, log=True)})
    sampler = ValleySampler(seed=0)
    near = sampler.sample_independent(BatchSizeView(study, 64, lr_hint=3e-3), trial, "lr", LR_DIST)
    far = sampler.sample_independent(BatchSizeView(study, 64, lr_hint=0.02), trial, "lr", LR_DIST)
    beyond = sampler.sample_independent(BatchSizeView(study, 64, lr_hint=0.5), trial, "lr", LR_DIST)
    assert near == pytest.approx(8e-4 * 8)  # a step of ×8 past a hint close by
    assert far == pytest.approx(0.02)  # on to a hint further away...
    assert beyond == pytest.approx(math.sqrt(8e-4 * 1.0))  # ...but no further than halfway to the range's end


def test_local_workers_draw_different_random_numbers(storage, monkeypatch):
    spec = parse_spec(spec_dict(search={"batch_sizes": [8]}))

    def first_lr(worker):
        monkeypatch.setenv("TUNER_WORKER_INDEX", str(worker))
        study = optuna.create_study(sampler=open_study(spec, optuna.storages.InMemoryStorage()).sampler)
        return study.ask({"batch_size": IntDistribution(8, 8), "lr": LR_DIST}).params["lr"]

    assert len({first_lr(0), first_lr(1), first_lr(2)}) == 3
    assert first_lr(1) == first_lr(1)  # still reproducible per worker


def test_the_same_seed_gives_the_same_study(tmp_path):
    def params(name, seed):
        st = open_storage(str(tmp_path / f"{name}.journal"), create=True)
        return [t.params for t in run(st, study={"n_trials": 30, "seed": seed}).trials]

    assert params("a", 1) == params("b", 1)
    assert params("a2", 1) != params("c", 2)


def completed(study, batch_size, lr, value):
    study.add_trial(create_trial(
        value=value, params={"batch_size": batch_size, "lr": lr},
        distributions={"batch_size": IntDistribution(1, 4096, log=True), "lr": FloatDistribution(1e-6, 10, log=True)}))


def hint(study, batch_size):
    # a fresh Study object: the hint reads Optuna's snapshot of the trials, taken once per trial
    return lr_hint(optuna.load_study(study_name=study.study_name, storage=study._storage), batch_size)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_hint_follows_the_best_trial_of_each_other_batch_size(direction):
    study = optuna.create_study(direction=direction)
    good, bad = (1.0, 9.0) if direction == "minimize" else (9.0, 1.0)
    assert hint(study, 64) is None  # nothing to go by
    completed(study, 16, 0.01, good)
    completed(study, 16, 0.5, bad)
    assert hint(study, 16) is None  # its own trials are not a hint
    assert hint(study, 64) == pytest.approx(0.01 * 2.0)  # one neighbour: slope 1/2 (×4 in B -> ×2)
    completed(study, 256, 0.16, good)  # lr* ∝ B between 16 and 256
    assert hint(study, 64) == pytest.approx(0.04)
    assert hint(study, 4) == pytest.approx(0.0025)  # beyond: the neighbours' slope
    completed(study, 1024, 0.16 * 8, good)  # slope 1.5 above 256: kept to 1, as theory allows
    assert hint(study, 4096) == pytest.approx(0.16 * 8 * 4)


def study_with(trials):
    study = optuna.create_study()
    for batch_size, values, state, *attrs in trials:
        study.add_trial(create_trial(
            state=state, value=values[max(values)] if state == TrialState.COMPLETE else None,
            params={"batch_size": batch_size, "lr": 0.1}, user_attrs=attrs[0] if attrs else None,
            distributions={"batch_size": IntDistribution(8, 512, log=True), "lr": FloatDistribution(1e-4, 1, log=True)},
            intermediate_values=values))
    return study


def running_trial(study, batch_size, values):
    trial = study.ask({"batch_size": IntDistribution(8, 512, log=True), "lr": FloatDistribution(1e-4, 1, log=True)})
    trial.storage.set_trial_param(trial._trial_id, "batch_size", batch_size, IntDistribution(8, 512, log=True))
    for step, value in values.items():
        trial.report(value, step)
    return study._storage.get_trial(trial._trial_id)


def test_pruning_compares_only_within_the_batch_size():
    # batch 8 reaches a far lower loss at 1000 samples than batch 512 ever can
    small = [(8, {1000: 0.1 + i * 0.01, 2000: 0.05}, TrialState.COMPLETE) for i in range(5)]
    study = study_with(small)
    large = running_trial(study, 512, {1000: 2.0})
    median = MedianPruner(n_startup_trials=4)
    assert median.prune(study, large), "plain MedianPruner compares across batch sizes"
    assert not BatchSizePruner(median).prune(study, large), "no batch-512 trials to compare with yet"

    peers = [(512, {1000: 1.0 + i * 0.1, 2000: 0.9}, TrialState.COMPLETE) for i in range(5)]
    study = study_with(small + peers)
    assert BatchSizePruner(median).prune(study, running_trial(study, 512, {1000: 2.0}))
    assert not BatchSizePruner(median).prune(study, running_trial(study, 512, {1000: 1.05}))


def test_the_view_holds_one_batch_size_and_hides_diverged_reports():
    study = study_with([(8, {100: 1.0}, TrialState.COMPLETE), (16, {100: 1.0}, TrialState.COMPLETE),
                        (8, {100: 0.5}, TrialState.PRUNED, {"outcome": "diverged"})])
    study.set_user_attr("x", 1)
    view = BatchSizeView(study, 8)
    assert [t.number for t in view.trials] == [0, 2]
    assert view.trials[1].intermediate_values == {}  # TPE ranks it below every trial that ran
    assert view.user_attrs == {"x": 1} and view.direction == study.direction


def test_hyperband_cannot_be_restricted_to_a_batch_size():
    with pytest.raises(ValueError, match="HyperbandPruner"):
        BatchSizePruner(HyperbandPruner())


def test_sampler_checks_its_arguments():
    with pytest.raises(ValueError, match="positive integers"):
        BatchSizeSampler([8, 0])
    with pytest.raises(ValueError, match="positive integers"):
        BatchSizeSampler([])


class TestResume:
    def test_a_rerun_continues_to_n_trials_and_keeps_finished_trials(self, storage):
        first = run(storage, study={"n_trials": 12})
        before = [(t.number, t.params, t.state, t.value) for t in first.trials]
        again = run(storage, study={"n_trials": 12})
        assert len(again.trials) == 12  # nothing left to do
        more = run(storage, study={"n_trials": 20})
        finished = more.get_trials(states=[TrialState.COMPLETE, TrialState.PRUNED])
        assert len(finished) == 20
        assert [(t.number, t.params, t.state, t.value) for t in more.trials[:12]] == before

    def test_batch_sizes_and_lr_range_can_grow(self, storage):
        run(storage, study={"n_trials": 8}, search={"batch_sizes": [8, 32], "lr": [1e-4, 1.0]})
        study = run(storage, study={"n_trials": 20}, search={"batch_sizes": [8, 32, 128], "lr": [1e-5, 2.0]})
        counts = Counter(t.params["batch_size"] for t in study.trials)
        assert counts[128] >= 6  # the new batch size catches up first
        assert study.user_attrs["tuner_spec"]["search"]["batch_sizes"] == [8, 32, 128]

    def test_a_different_workload_is_refused_and_nothing_changes(self, storage):
        run(storage, study={"n_trials": 4})
        spec = parse_spec(spec_dict(workload={"target": "quadratic"}))
        with pytest.raises(InputError, match="was run with workload 't:valley'"):
            open_study(spec, storage)
        study = optuna.load_study(study_name="test", storage=storage)
        assert study.user_attrs["tuner_spec"]["workload"] == {"target": "t:valley"}


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_plain_python_median_pruner_decides_as_optunas_median_pruner(direction):
    import random

    from tuner.search import SameStepMedianPruner

    rng = random.Random(0)
    study = optuna.create_study(direction=direction)
    steps = [100, 200, 300, 400]
    for _ in range(15):
        values = {s: rng.random() for s in steps[:rng.randint(1, 4)]}
        if rng.random() < 0.1:
            values[steps[0]] = math.nan
        study.add_trial(create_trial(value=values[max(values)], params={"x": 0.0},
                                     distributions={"x": FloatDistribution(0, 1)}, intermediate_values=values))
    decisions = []
    for _ in range(200):
        trial = study.ask({"x": FloatDistribution(0, 1)})
        for step in steps[:rng.randint(1, 4)]:
            trial.report(rng.random(), step)
        frozen = study._storage.get_trial(trial._trial_id)
        for startup, warmup in ((0, 0), (4, 0), (20, 0), (4, 250)):
            ours = SameStepMedianPruner(n_startup_trials=startup, n_warmup_steps=warmup).prune(study, frozen)
            theirs = MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup).prune(study, frozen)
            assert ours == theirs
            decisions.append(ours)
        study.tell(trial, state=TrialState.FAIL)
    assert 0.05 < sum(decisions) / len(decisions) < 0.95  # both outcomes exercised


# --- the valley pruner: short horizons, chance levels, the optimum's interval ------------------------------

def curve(z: float, step: int, noise: float = 0.0) -> float:
    """A run at log(lr / lr*) = z: it ends at 0.3 + 0.5 z^2 (twice as steep above), and a lower
    learning rate is slower early on (the short-horizon bias)."""
    final = 0.3 + 0.5 * z * z * (2.0 if z > 0 else 1.0)
    return final + (1 - step / 4) * 1.5 * math.exp(-z) + noise


def valley_study(zs, noise_seed=0, direction="minimize"):
    rng = np.random.default_rng(noise_seed)
    study = optuna.create_study(direction=direction)
    sign = -1.0 if direction == "maximize" else 1.0
    for z in zs:
        values = {step * 100: sign * curve(z, step, 0.01 * rng.standard_normal()) for step in range(1, 5)}
        study.add_trial(create_trial(value=values[400], params={"batch_size": 64, "lr": 0.1 * math.exp(z)},
                                     distributions={"batch_size": IntDistribution(8, 512, log=True), "lr": LR_DIST},
                                     intermediate_values=values))
    return study


def reporting(study, z, values):
    trial = study.ask({"batch_size": IntDistribution(8, 512, log=True), "lr": LR_DIST})
    study._storage.set_trial_param(trial._trial_id, "batch_size", 64, IntDistribution(8, 512, log=True))
    study._storage.set_trial_param(trial._trial_id, "lr", 0.1 * math.exp(z), LR_DIST)
    for step, value in values.items():
        trial.report(value, step)
    return study._storage.get_trial(trial._trial_id)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_a_slow_start_just_below_the_optimum_is_not_pruned(direction):
    from tuner.search import ValleyPruner

    sign = -1.0 if direction == "maximize" else 1.0
    study = valley_study([-2.0, -1.0, -0.1, 0.2, 0.4, 0.6, 1.0, 1.6], direction=direction)
    slow = reporting(study, -0.4, {100: sign * curve(-0.4, 1)})  # behind the faster, higher learning rates
    assert BatchSizePruner(MedianPruner(n_startup_trials=3)).prune(study, slow)
    assert not BatchSizePruner(ValleyPruner()).prune(study, slow)
    hopeless = reporting(study, 2.5, {100: sign * (curve(2.5, 1) + 2.0)})  # far above, and far behind
    assert BatchSizePruner(ValleyPruner()).prune(study, hopeless)
    lowest = reporting(study, -3.0, {100: sign * (curve(-3.0, 1) + 2.0)})  # nobody slower to bound its finish
    assert not BatchSizePruner(ValleyPruner()).prune(study, lowest)


def test_nothing_is_pruned_while_every_run_is_still_at_chance_level():
    from tuner.search import ValleyPruner

    rng = np.random.default_rng(0)
    study = optuna.create_study()
    for z in (-1.5, -0.7, -0.2, 0.3, 0.8):  # at chance (2.302) at the first report; apart by the end
        values = {100: 2.302 + 0.001 * rng.standard_normal(), 200: curve(z, 2), 400: curve(z, 4)}
        study.add_trial(create_trial(value=values[400], params={"batch_size": 64, "lr": 0.1 * math.exp(z)},
                                     distributions={"batch_size": IntDistribution(8, 512, log=True), "lr": LR_DIST},
                                     intermediate_values=values))
    laggard = reporting(study, 0.0, {100: 2.3045})  # a whisker behind them all: noise, not a course
    assert BatchSizePruner(MedianPruner(n_startup_trials=3)).prune(study, laggard)
    assert not BatchSizePruner(ValleyPruner()).prune(study, laggard)


def test_a_trial_that_has_not_trained_is_never_pruned():
    study = valley_study([-1.0, -0.1, 0.2, 0.6])
    untrained = reporting(study, 3.0, {0: 50.0})
    assert not BatchSizePruner(MedianPruner(n_startup_trials=1)).prune(study, untrained)


def chance_plateau(at_chance=0.001):
    """An accuracy at chance (0.1, varying by ``at_chance``) except within about ×2 of 1e-3 B, where it
    climbs to 0.9 (3% noise); diverges ×2.5 above the optimum."""
    def train(run):
        z = math.log(run.lr / true_optimum(run.batch_size))
        if z > math.log(2.5):
            return math.nan
        score = 0.1 + 0.8 * math.exp(-4 * z * z)
        value = score + (at_chance + 0.03 * (score - 0.1)) * np.random.default_rng(run.seed).standard_normal()
        run.report(1000, value)
        return value

    return train


@pytest.mark.parametrize(("seed", "at_chance"), [(1, 0.001), (2, 0.001), (1, 0.004), (3, 0.004)])
def test_a_batch_size_whose_runs_all_scored_chance_looks_where_the_valley_may_be(storage, seed, at_chance):
    # the valley spans a ninth of the range (log): a batch size's first runs often all miss it, and
    # refining around the luckiest chance-level run measured noise for the rest of the study (one or
    # two of the six batch sizes in five of six seeds, before): it must look where its neighbours
    # found theirs, or where nothing ran. Chance-level runs that vary by 4% of chance (0.5% of the
    # score's range) are as flat as any rule cares: judged against chance alone, they looked apart
    sizes = [8, 16, 32, 64, 128, 256]
    study = run(storage, chance_plateau(at_chance), study={"n_trials": 96, "direction": "maximize", "seed": seed},
                search={"batch_sizes": sizes, "lr": [1e-5, 10.0]})
    result = fit_study(study)
    for b in sizes:
        complete = [t for t in study.trials if t.params["batch_size"] == b and t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value)
        assert abs(math.log(best.params["lr"] / true_optimum(b))) < math.log(2), b
        optimum = next(o for o in result.optima if o.batch_size == b)
        assert optimum.usable and abs(math.log(optimum.lr / true_optimum(b))) < math.log(1.25), b


def test_the_default_search_leaves_no_batch_size_with_a_one_sided_valley(storage):
    from tuner.workloads import quadratic

    spec = parse_spec(spec_dict(study={"n_trials": 64}, search={"batch_sizes": SIZES}))
    study = open_study(spec, storage)
    run_study(study, spec, load_workload(spec))
    options = spec.workload.options
    for b in SIZES:
        truth = quadratic.optimal_lr(b, **options)
        near = [t.params["lr"] / truth for t in study.trials if t.params["batch_size"] == b
                and t.state == TrialState.COMPLETE and 0.5 <= t.params["lr"] / truth <= 2.0]
        assert min(near) < 1.0 < max(near), (b, sorted(near))  # complete trials either side of the optimum


def test_every_batch_size_repeats_its_best_run_once_so_the_noise_is_measured_not_guessed(storage):
    # 2% noise on a valley far sharper than the trials' spacing: the residuals about any curve
    # through them are mostly curvature (the old estimate put the noise at ×10 to ×40 its size);
    # one repeated run per batch size measures it
    def sharp(run):
        z = math.log(run.lr / (1e-3 * run.batch_size))
        value = (1.0 + 40 * z * z) * (1 + 0.02 * np.random.default_rng(run.seed).standard_normal())
        run.report(1000, value)
        return value

    study = run(storage, sharp, study={"n_trials": 72}, search={"batch_sizes": SIZES})
    for b in SIZES:  # four batch sizes: each repeats twice, for six degrees of freedom
        runs = Counter(t.params["lr"] for t in study.trials if t.params["batch_size"] == b
                       and t.state == TrialState.COMPLETE)
        assert sum(n - 1 for n in runs.values()) >= 2, (b, runs)
    for optimum in fit_study(study).optima:
        assert 0.4 < optimum.noise / 0.02 < 3.0, (optimum.batch_size, optimum.noise)


def test_replicates_repeat_a_learning_rate_near_the_optimum_with_another_seed(storage, tmp_path):
    def noisy(run):  # 20% noise on a valley around 1e-3 B: a seed's luck is as deep as the valley near its bottom
        z = math.log(run.lr / (1e-3 * run.batch_size))
        rng = np.random.default_rng(run.seed)
        value = (0.3 + 0.5 * z * z) * (1 + 0.2 * rng.standard_normal())
        run.report(1000, value)
        return value

    def repeated(study):
        seen = Counter((t.params["batch_size"], t.params["lr"]) for t in study.trials)
        return [key for key, n in seen.items() if n > 1]

    study = run(storage, noisy, study={"n_trials": 64}, search={"batch_sizes": [8, 512]})
    again = repeated(study)
    assert again
    for b, lr in again:
        seeds = [t.user_attrs["seed"] for t in study.trials if (t.params["batch_size"], t.params["lr"]) == (b, lr)]
        assert len(set(seeds)) == len(seeds)
    none = run(open_storage(str(tmp_path / "other.journal"), create=True), noisy, study={"n_trials": 64},
               search={"batch_sizes": [8, 512], "replicates": 0})
    assert not repeated(none)
