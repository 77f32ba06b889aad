"""The workload contract: what a trial records when a workload completes, is pruned, diverges or fails."""
import math
import textwrap

import numpy as np
import optuna
import pytest
from conftest import spec_dict
from optuna.trial import TrialState

from tuner.errors import InputError, WorkloadFailing
from tuner.runner import MAX_CONSECUTIVE_FAILURES, open_study, run_study
from tuner.spec import parse_spec
from tuner.storage import open_storage
from tuner.workload import Run, TrialDiverged, Workload, load_workload, trial_seed


@pytest.fixture
def storage(tmp_path):
    return open_storage(str(tmp_path / "studies.journal"), create=True)


def run_workload(train, storage, n_trials=8, **search):
    spec = parse_spec(spec_dict(study={"n_trials": n_trials},
                                search={"batch_sizes": [8, 16], "pruner": "none", **search},
                                workload={"target": "test:train"}))
    study = open_study(spec, storage)
    run_study(study, spec, Workload("test:train", train, spec.workload.options))
    return study


def test_run_report_counts_samples_and_checks_its_input():
    run = Run(lr=0.1, batch_size=8)
    run.report(80, 1.5)
    run.report(160.0, 1.2)  # an integral float is a sample count too
    assert run.samples_seen == 160 and run.reports == [(80, 1.5), (160, 1.2)]
    for bad_step in (-8, 8.5, True, "80"):
        with pytest.raises((ValueError, TypeError)):
            run.report(bad_step, 1.0)
    for bad_value in (math.nan, math.inf, -math.inf):
        with pytest.raises(TrialDiverged):
            run.report(240, bad_value)
    assert issubclass(TrialDiverged, optuna.TrialPruned)  # a diverged run stops like a pruned one


def test_run_options_are_read_only():
    run = Run(lr=0.1, batch_size=8, options={"epochs": 3})
    with pytest.raises(TypeError):
        run.options["epochs"] = 4


def test_complete_trials_record_value_samples_and_outcome(storage):
    def train(run):
        for k in range(1, 4):
            run.report(k * 10 * run.batch_size, 1.0 / k)
        return run.lr * run.batch_size

    study = run_workload(train, storage)
    trials = study.get_trials(states=[TrialState.COMPLETE])
    assert len(trials) == 8
    for t in trials:
        assert t.value == pytest.approx(t.params["lr"] * t.params["batch_size"])
        assert t.user_attrs == {"outcome": "complete", "samples": 30 * t.params["batch_size"],
                                "seed": trial_seed(0, t.number)}
        assert sorted(t.intermediate_values) == [10 * t.params["batch_size"] * k for k in (1, 2, 3)]


@pytest.mark.parametrize("how", ["report nan", "report inf", "return nan", "return inf", "FloatingPointError"])
def test_diverged_runs_are_kept_as_pruned_with_outcome_diverged(storage, how):
    def train(run):
        run.report(100, 2.0)
        if run.lr < 1e-2:
            return 1.0
        if how == "FloatingPointError":
            raise FloatingPointError("loss exploded")
        bad = math.nan if "nan" in how else math.inf
        if how.startswith("report"):
            run.report(200, bad)
        return bad

    study = run_workload(train, storage, n_trials=12, sampler="random")  # LRs all over the range
    diverged = [t for t in study.trials if t.user_attrs.get("outcome") == "diverged"]
    assert diverged, "the LR range reaches above 1e-2, so some trials must diverge"
    for t in diverged:
        assert t.state == TrialState.PRUNED and t.params["lr"] >= 1e-2
        assert t.user_attrs["samples"] == 100
        assert all(math.isfinite(v) for v in t.intermediate_values.values())  # no NaN stored
        assert t.value is None or abs(t.value) < 1e6  # never a sentinel
    assert all(t.state == TrialState.COMPLETE for t in study.trials if t.params["lr"] < 1e-2)


def test_pruned_trials_record_outcome_pruned(storage):
    def train(run):
        # within each batch size, high LRs are worse at every report: the median pruner stops them
        for k in range(1, 6):
            run.report(k * 100, run.lr + 1.0 / k)
        return run.lr

    study = run_workload(train, storage, n_trials=40, pruner="median", pruner_startup_trials=2)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.user_attrs["outcome"] == "pruned" for t in pruned)
    assert all(t.user_attrs["samples"] < 500 for t in pruned)
    assert len(study.get_trials(states=[TrialState.COMPLETE, TrialState.PRUNED])) == 40


def test_a_failing_trial_keeps_its_error_and_the_study_goes_on(storage):
    def train(run):
        if run.batch_size == 16 and run.lr > 0.1:
            raise ValueError("shapes do not match")
        return run.lr

    study = run_workload(train, storage, n_trials=16, sampler="random")  # LRs all over the range
    failed = study.get_trials(states=[TrialState.FAIL])
    assert failed, "some batch-16 trials have lr > 0.1"
    for t in failed:
        assert t.user_attrs["outcome"] == "failed"
        assert t.user_attrs["error"].startswith("ValueError: shapes do not match (test_workload.py:")
    assert len(study.get_trials(states=[TrialState.COMPLETE])) == 16


def test_a_workload_that_always_fails_stops_with_its_error(storage):
    def train(run):
        raise KeyError("no such column")

    with pytest.raises(WorkloadFailing, match=rf"last {MAX_CONSECUTIVE_FAILURES} trials failed.*KeyError"):
        run_workload(train, storage)


@pytest.mark.parametrize("value", [None, "0.5", True, np.bool_(False), [0.5]])
def test_a_return_that_is_not_a_number_fails_the_trial_with_a_clear_message(storage, value):
    # "0.5" and True were taken as 0.5 and 1.0: a bug in the workload read as a loss
    with pytest.raises(WorkloadFailing, match=r"train\(run\) returned .*; it must be a number"):
        run_workload(lambda run: value, storage)


@pytest.mark.parametrize("value", ["0.5", True])
def test_a_report_that_is_not_a_number_fails_the_trial_with_a_clear_message(storage, value):
    def train(run):
        run.report(100, value)
        return 0.5

    with pytest.raises(WorkloadFailing, match=r"run.report: the metric after 100 samples was .*; it must be a number"):
        run_workload(train, storage)


def test_numpy_scalars_and_one_element_tensors_are_metrics(storage):
    import torch

    study = run_workload(lambda run: np.float32(0.25) if run.seed % 2 else torch.tensor(0.25), storage)
    assert {t.value for t in study.get_trials(states=[TrialState.COMPLETE])} == {0.25}


def test_trial_seeds_are_reproducible_and_distinct():
    seeds = [trial_seed(0, n) for n in range(1000)]
    assert seeds == [trial_seed(0, n) for n in range(1000)]
    assert len(set(seeds)) == 1000 and trial_seed(1, 0) != seeds[0]
    assert all(0 <= s < 2**31 for s in seeds)


def test_workloads_see_their_seed_and_options(storage):
    seen = []

    def train(run):
        seen.append((run.seed, dict(run.options)))
        return 1.0

    spec = parse_spec(spec_dict(study={"n_trials": 3, "seed": 7}, workload={"target": "x:y", "depth": 2}))
    study = open_study(spec, storage)
    run_study(study, spec, Workload("x:y", train, spec.workload.options))
    assert seen == [(trial_seed(7, n), {"depth": 2}) for n in range(3)]


class TestLoadWorkload:
    def load(self, tmp_path, target, **options):
        return load_workload(parse_spec(spec_dict(workload={"target": target, **options})), tmp_path)

    def test_builtin_workload_with_validated_options(self, tmp_path):
        workload = self.load(tmp_path, "quadratic", samples=1024)
        assert workload.options["samples"] == 1024 and workload.options["reports"] == 8  # defaults filled
        assert workload.train(Run(lr=0.1, batch_size=8, options=workload.options)) > 0

    @pytest.mark.parametrize("options,words", [({"sample": 1}, "[workload] sample: unknown key (known keys: samples"),
                                               ({"samples": "many"}, "[workload] samples"),
                                               ({"samples": 0}, "[workload] samples")])
    def test_builtin_options_are_checked(self, tmp_path, options, words):
        with pytest.raises(InputError) as error:
            self.load(tmp_path, "quadratic", **options)
        assert words in str(error.value)

    def test_user_callable_beside_the_spec_file(self, tmp_path, monkeypatch):
        (tmp_path / "my_workload_a.py").write_text("def train(run):\n    return run.lr * 2\n")
        monkeypatch.chdir("/")
        workload = self.load(tmp_path, "my_workload_a:train", width=3)
        assert workload.train(Run(lr=0.25, batch_size=8)) == 0.5
        assert dict(workload.options) == {"width": 3}  # user options pass through

    @pytest.mark.parametrize("target,source,words", [
        ("nope", None, "unknown workload 'nope'"),
        ("no_such_module_xyz:train", None, "no module named 'no_such_module_xyz'"),
        ("my_workload_b:missing", "def train(run):\n    return 1.0\n", "has no attribute 'missing'"),
        ("my_workload_c:VALUE", "VALUE = 3\n", "VALUE is not callable"),
        ("my_workload_d:train", "import not_installed_dep\n", "importing my_workload_d failed"),
        ("my_workload_e:train", "raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ])
    def test_bad_targets_are_named(self, tmp_path, target, source, words):
        if source is not None:
            (tmp_path / f"{target.split(':')[0]}.py").write_text(textwrap.dedent(source))
        with pytest.raises(InputError) as error:
            self.load(tmp_path, target)
        assert words in str(error.value)


@pytest.mark.parametrize(("options", "says"), [
    ({"samples": 2**63 - 1}, "[workload] samples: input should be less than or equal to"),
    ({"dims": 10**9}, "[workload] dims: input should be less than or equal to"),
    ({"reports": 10**8}, "[workload] reports: input should be less than or equal to"),
    ({"samples": 1000}, "[workload] samples = 1000 is less than batch size 1024"),
])
def test_built_in_options_that_would_overflow_or_take_no_step_are_bad_input(options, says):
    # before: accepted, then an overflow, a hang past 60 s, or every trial at B=1024 failing
    spec = parse_spec(spec_dict(search={"batch_sizes": [8, 1024]}, workload={"target": "quadratic", **options}))
    with pytest.raises(InputError) as error:
        load_workload(spec)
    assert says in str(error.value)


def test_a_sampler_that_fails_is_named_in_each_trial_and_in_the_stop_line(storage):
    # failures before the workload ran were stored without an error: "interrupted", "unknown error"
    class Broken(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            raise RuntimeError("the sampler broke")

    spec = parse_spec(spec_dict(study={"n_trials": 8}, search={"batch_sizes": [8, 16], "pruner": "none"},
                                workload={"target": "test:train"}))
    study = open_study(spec, storage)
    study.sampler = Broken()
    with pytest.raises(WorkloadFailing, match=r"the latest with RuntimeError: the sampler broke \(test_workload.py:"):
        run_study(study, spec, Workload("test:train", lambda run: 1.0, spec.workload.options))
    assert all(t.user_attrs["error"].startswith("RuntimeError: the sampler broke") for t in study.trials)
