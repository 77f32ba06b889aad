"""Optuna's contracts for samplers and pruners, checked against ours: what Optuna's own sampler and
pruner tests exercise (changing ranges, odd earlier parameters, reseeding, pickling, n_jobs,
enqueued trials, multi-objective refusal, NaN reports), and the view's best trial."""
import math
import pickle
import socket

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import MedianPruner
from optuna.trial import TrialState, create_trial

from tuner.search import BatchSizePruner, BatchSizeSampler, BatchSizeView, SameStepMedianPruner, ValleySampler
from tuner.spec import PRUNER_STARTUP_TRIALS, parse_spec

SIZES = [16, 64, 256]


def valley(trial: optuna.Trial, low: float = 1e-4, high: float = 1.0) -> float:
    batch_size = trial.suggest_int("batch_size", SIZES[0], SIZES[-1], log=True)
    lr = trial.suggest_float("lr", low, high, log=True)
    z = math.log(lr / (1e-3 * batch_size))
    return 1.0 + z * z


SAMPLERS = [lambda: BatchSizeSampler(SIZES, seed=0), lambda: ValleySampler(seed=0)]


def diverging(trial: optuna.Trial, low: float = 1e-4, high: float = 1.0) -> float:
    """The valley, diverging (as the tuner records it) above lr = 4e-3: its optimum lies below."""
    value = valley(trial, low, high)
    if trial.params["lr"] > 4e-3:
        trial.set_user_attr("outcome", "diverged")
        raise optuna.TrialPruned()
    return value


@pytest.mark.parametrize("make", SAMPLERS)
def test_a_range_that_narrows_after_some_trials(make):
    study = optuna.create_study(sampler=make())
    study.optimize(diverging, n_trials=12)
    study.optimize(lambda t: diverging(t, low=1e-2), n_trials=12)  # [1e-4, 1] then [1e-2, 1]
    assert all(1e-2 <= t.params["lr"] <= 1.0 for t in study.trials[12:])
    assert all(t.state != TrialState.FAIL for t in study.trials)


@pytest.mark.parametrize("make", SAMPLERS)
def test_earlier_trials_with_odd_learning_rates_are_set_aside(make):
    study = optuna.create_study(sampler=make())
    for b in SIZES:  # legal in Optuna once distributions change: lr <= 0, lr a category
        study.add_trial(create_trial(value=3.0, params={"batch_size": b, "lr": -0.5},
                                     distributions={"batch_size": IntDistribution(1, 4096, log=True),
                                                    "lr": FloatDistribution(-1.0, 1.0)}))
        study.add_trial(create_trial(value=2.0, params={"batch_size": b, "lr": "fast"},
                                     distributions={"batch_size": IntDistribution(1, 4096, log=True),
                                                    "lr": CategoricalDistribution(["fast", "slow"])}))
    study.optimize(valley, n_trials=15)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


@pytest.mark.parametrize("make", SAMPLERS)
def test_reseeding_pickling_and_parallel_workers(make):
    sampler = make()
    sampler.reseed_rng()
    study = optuna.create_study(sampler=pickle.loads(pickle.dumps(sampler)))
    study.optimize(valley, n_trials=16, n_jobs=2)
    assert len(study.trials) == 16 and all(t.state == TrialState.COMPLETE for t in study.trials)
    again = optuna.create_study(sampler=pickle.loads(pickle.dumps(study.sampler)))  # after use, too
    again.optimize(valley, n_trials=4)


@pytest.mark.parametrize("make", SAMPLERS)
def test_an_enqueued_trial_runs_as_enqueued(make):
    study = optuna.create_study(sampler=make())
    study.enqueue_trial({"batch_size": 64, "lr": 0.0123})
    study.optimize(valley, n_trials=3)
    assert study.trials[0].params == {"batch_size": 64, "lr": 0.0123}


@pytest.mark.parametrize("make", SAMPLERS)
def test_a_multi_objective_study_is_refused_with_a_clear_error(make):
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make())
    with pytest.raises(ValueError, match="one metric's optimum; this study has 2 objectives"):
        study.optimize(lambda t: (valley(t), 0.0), n_trials=1, catch=())


def test_the_view_s_best_trial_is_its_batch_size_s():
    study = optuna.create_study()
    for b, lr, value in [(32, 0.01, 0.1), (64, 0.02, 0.5), (64, 0.05, 0.4)]:
        study.add_trial(create_trial(value=value, params={"batch_size": b, "lr": lr},
                                     distributions={"batch_size": IntDistribution(1, 4096, log=True),
                                                    "lr": FloatDistribution(1e-4, 1.0, log=True)}))
    view = BatchSizeView(study, 64)
    assert view.best_trial.params == {"batch_size": 64, "lr": 0.05}
    assert (view.best_value, view.best_params) == (0.4, {"batch_size": 64, "lr": 0.05})
    with pytest.raises(ValueError, match="no complete trials at batch size 128"):
        _ = BatchSizeView(study, 128).best_trial


def test_the_plain_python_median_prunes_a_trial_whose_reports_are_all_nan_as_optuna_does():
    study = optuna.create_study()
    for i in range(5):
        study.add_trial(create_trial(value=1.0, params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)},
                                     intermediate_values={1: 1.0 + i}))
    trial = study.ask({"x": FloatDistribution(0, 1)})
    trial.report(math.nan, 1)
    frozen = study._storage.get_trial(trial._trial_id)
    assert MedianPruner(n_startup_trials=3).prune(study, frozen)
    assert SameStepMedianPruner(n_startup_trials=3).prune(study, frozen)


def test_the_pruners_and_the_study_file_start_pruning_after_the_same_number_of_trials():
    spec = parse_spec({"study": {"name": "s", "n_trials": 4}, "search": {"lr": [1e-3, 1.0], "batch_sizes": [8]},
                       "workload": {"target": "quadratic"}})
    import inspect

    from tuner.search import ValleyPruner

    for pruner in (SameStepMedianPruner, ValleyPruner):
        default = inspect.signature(pruner).parameters["n_startup_trials"].default
        assert default == spec.search.pruner_startup_trials == PRUNER_STARTUP_TRIALS


def test_a_wrapped_pruner_that_reads_the_best_trial_sees_only_the_batch_size():
    from optuna.pruners import WilcoxonPruner

    study = optuna.create_study()
    dist = {"batch_size": IntDistribution(1, 4096, log=True), "lr": FloatDistribution(1e-4, 1.0, log=True)}
    steps = {s: 0.1 for s in range(10)}  # batch 32: far better than batch 64 can be
    study.add_trial(create_trial(value=0.1, params={"batch_size": 32, "lr": 0.01}, distributions=dist,
                                 intermediate_values=steps))
    study.add_trial(create_trial(value=1.0, params={"batch_size": 64, "lr": 0.02}, distributions=dist,
                                 intermediate_values={s: 1.0 for s in range(10)}))
    trial = study.ask(dist)
    study._storage.set_trial_param(trial._trial_id, "batch_size", 64, dist["batch_size"])
    for s in range(10):
        trial.report(0.9, s)  # better than every batch-64 trial at every step
    frozen = study._storage.get_trial(trial._trial_id)
    assert WilcoxonPruner(p_threshold=0.1).prune(study, frozen)  # unfair: it compares with batch 32
    assert not BatchSizePruner(WilcoxonPruner(p_threshold=0.1)).prune(study, frozen)


def test_a_busy_dashboard_port_or_a_served_storage_leaves_no_folder_behind(tmp_path):
    from tuner.dashboard import make_server
    from tuner.storage import open_storage

    journal = tmp_path / "s.journal"
    optuna.create_study(study_name="s", storage=open_storage(str(journal), create=True))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(OSError):
            make_server(str(journal), "127.0.0.1", busy.getsockname()[1])
    finally:
        busy.close()
    server = make_server(str(journal), "127.0.0.1", 0)
    server.server_close()
    assert not (tmp_path / "s-artifacts").exists()
