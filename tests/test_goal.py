"""A study scored by the steps to a goal (``[study] goal``, Shallue et al. 2019's protocol): every batch
size tuned for the fewest steps to a metric value, runs stopped where they reach it. Against the noisy
quadratic's closed form (``quadratic.steps_to_target``: the fewest steps whose expected loss reaches
the goal, the learning rate tuned for it)."""
from __future__ import annotations

import json
import math
import sys
import textwrap

import optuna
import pytest
from conftest import spec_dict, toml_text, tuner
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from tuner.fit import FitResult, fit_study, format_fit, to_python
from tuner.runner import run
from tuner.search import GoalPruner
from tuner.spec import parse_spec
from tuner.trials import OUTCOME, SAMPLES, Outcome, samples_to_reach
from tuner.workload import Goal, load_workload, run_trial
from tuner.workloads import quadratic

SIZES = [8, 32, 128, 512]
GOAL = 1.0
# reports on a log scale: a run reaches the goal anywhere from a few dozen steps to a few thousand
OPTIONS = {"samples": 2**19, "dims": 1024, "reports": 64, "spacing": "log"}


def study_file(folder, *, goal=GOAL, n_trials: int = 64, seed: int = 0, options=OPTIONS, **search):
    spec = spec_dict(study={"n_trials": n_trials, "seed": seed, "goal": goal},
                     search={"batch_sizes": SIZES, **search}, workload=options)
    path = folder / "study.toml"
    path.write_text(toml_text(spec))
    return path


@pytest.fixture(scope="module")
def goal_study(tmp_path_factory) -> optuna.Study:
    folder = tmp_path_factory.mktemp("goal")
    return run(study_file(folder), str(folder / "study.journal"), fit=False, quiet=True).study


def test_each_batch_size_reads_the_steps_to_the_goal_within_10_percent_of_the_closed_form(goal_study):
    critical = fit_study(goal_study).critical
    assert critical.target == GOAL and [r.batch_size for r in critical.batches] == SIZES
    for reading in critical.batches:
        exact = quadratic.steps_to_target(GOAL, reading.batch_size, **OPTIONS)
        assert reading.reached and reading.steps == pytest.approx(exact, rel=0.10), (reading, exact)
        assert reading.steps_ci[0] < reading.steps < reading.steps_ci[1]


def test_the_critical_batch_size_is_within_x1_5_of_e_min_over_s_min(goal_study):
    unlimited = {**OPTIONS, "samples": 2**40}
    truth = (quadratic.steps_to_target(GOAL, 1, **unlimited) / quadratic.steps_to_target(GOAL, 2**20, **unlimited))
    critical = fit_study(goal_study).critical
    assert math.exp(abs(math.log(critical.b_crit / truth))) < 1.5, (critical.b_crit, truth)


def test_a_run_stops_where_it_reaches_the_goal_and_scores_the_steps_it_took(goal_study):
    complete = [t for t in goal_study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 20
    for t in complete:
        samples, values = zip(*sorted(t.intermediate_values.items()))
        assert values[-1] <= GOAL < min(values[:-1]), t.number  # stopped at the first report that reached it
        assert t.user_attrs[SAMPLES] == samples[-1] < OPTIONS["samples"]
        batch_size = t.params["batch_size"]
        assert t.value == pytest.approx(samples_to_reach(samples, values, GOAL, maximize=False) / batch_size)
        assert samples[-2] / batch_size < t.value <= samples[-1] / batch_size


def test_a_run_that_does_not_reach_the_goal_is_pruned_not_scored(goal_study):
    stopped = [t for t in goal_study.trials if t.user_attrs.get(OUTCOME) == Outcome.PRUNED]
    assert stopped
    for t in stopped:  # (Optuna gives a pruned trial its last report as value: a metric, not steps)
        assert t.state == TrialState.PRUNED and min(t.intermediate_values.values()) > GOAL
    # the ones that trained to the end of their budget, and the ones the pruner stopped before it
    assert {t.user_attrs[SAMPLES] == OPTIONS["samples"] for t in stopped} == {True, False}


@pytest.mark.parametrize(("batch_size", "bound"), [
    (32, 2 * 20 * 128),   # B=128's fastest needed fewer samples than B=32's (100 steps of 32): it bounds
    (128, 2 * 20 * 128),
    (8, 2 * 10 * 8),      # its own fastest
    (512, None),          # no run at this batch size or above reached the goal yet: never pruned
])
def test_the_pruner_stops_a_run_past_twice_the_samples_of_the_fastest_at_its_batch_size_or_above(batch_size, bound):
    study = optuna.create_study()
    distributions = {"batch_size": IntDistribution(8, 512, log=True), "lr": FloatDistribution(1e-4, 4.0, log=True)}
    for b, steps in ((32, 100.0), (128, 20.0), (8, 10.0)):
        study.add_trial(create_trial(value=steps, params={"batch_size": b, "lr": 0.1}, distributions=distributions))
    pruner = GoalPruner()
    for samples in (100, 159, 161, 5119, 5121, 10**6):
        running = create_trial(state=TrialState.RUNNING, params={"batch_size": batch_size, "lr": 0.1},
                               distributions=distributions, intermediate_values={samples: 50.0})
        assert pruner.prune(study, running) == (bound is not None and samples > bound), (batch_size, samples)


def test_the_fit_says_it_counts_steps_and_stores_its_goal(goal_study):
    result = fit_study(goal_study)
    assert result.goal == GOAL and result.direction == "minimize"
    assert result.verdict.startswith("Each batch size was tuned for the fewest steps to reach 1 in the metric")
    assert "study 'test' (steps to reach 1 minimized): optimal learning rate" in format_fit(result)
    assert "'test' (steps to reach 1 minimized)" in to_python(result)  # the exported rule says what it is for
    data = result.to_dict()
    assert data["goal"] == GOAL
    assert FitResult.model_validate(json.loads(json.dumps(data))).to_dict() == data


# --- a metric to maximize, and a training script ------------------------------------------------------

ACCURACY = '''
import math

def curve(lr, batch_size):
    """Accuracy rising towards 0.9 at a rate that peaks at lr = 0.01 (B/32)^0.5: closed form."""
    rate = math.exp(-math.log(lr / (0.01 * (batch_size / 32) ** 0.5)) ** 2)
    return [(k * batch_size, 0.9 * (1 - math.exp(-rate * k / 50))) for k in range(1, 2001)]

def train(run):
    for samples, accuracy in curve(run.lr, run.batch_size):
        run.report(samples, accuracy)
    return accuracy
'''


def test_a_maximized_metric_reaches_its_goal_from_below(tmp_path):
    (tmp_path / "accuracy.py").write_text(ACCURACY)
    spec = spec_dict(study={"n_trials": 1, "direction": "maximize", "goal": 0.5},
                     workload={"target": "accuracy:train"})
    workload = load_workload(parse_spec(spec), tmp_path)
    sys.path.insert(0, str(tmp_path))
    from accuracy import curve

    study = optuna.create_study()  # the steps are minimized, whichever way the metric goes
    trial = study.ask()
    steps = run_trial(workload, trial, 32, 0.01, seed=0, goal=Goal(0.5, maximize=True))
    samples, values = zip(*curve(0.01, 32))
    first = next(k for k, v in enumerate(values) if v >= 0.5)
    assert samples[first - 1] / 32 < steps <= samples[first] / 32  # k/50 = ln(1.8/0.8): k = 40.5
    assert steps == pytest.approx(50 * math.log(0.9 / 0.4), rel=0.01)
    assert max(trial.storage.get_trial(trial._trial_id).intermediate_values) == samples[first]


SCRIPT = '''
import argparse, json, time
p = argparse.ArgumentParser(); p.add_argument("--lr", type=float); p.add_argument("--batch-size", type=int)
a = p.parse_args()
for k in range(1, 101):
    print(json.dumps({"tuner_report": {"step": k * a.batch_size, "value": 10.0 / k}}), flush=True)
    if k == 20:
        time.sleep(60)  # a script that is not stopped at the goal (loss 0.5 at k = 20) takes a minute
print(json.dumps({"tuner_result": 0.1}))
'''


def test_a_training_script_is_stopped_at_the_goal_and_scored_by_its_steps(tmp_path):
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    command = [sys.executable, "script.py", "--lr", "{lr}", "--batch-size", "{batch_size}"]
    spec = parse_spec(spec_dict(study={"goal": 0.5}, workload={"target": None, "command": command}))
    study = optuna.create_study()
    trial = study.ask()
    steps = run_trial(load_workload(spec, tmp_path), trial, 16, 0.01, seed=0, goal=Goal(0.5, maximize=False))
    assert steps == pytest.approx(20.0)  # 10/k <= 0.5 first at k = 20; k = 19 gave 0.526
    study.tell(trial, steps)
    frozen = study.trials[0]
    assert frozen.user_attrs[OUTCOME] == Outcome.COMPLETE and frozen.user_attrs[SAMPLES] == 20 * 16
    assert frozen.duration.total_seconds() < 30


def test_a_goal_the_untrained_model_already_reaches_stops_the_study_and_says_why(tmp_path):
    # the digits MLP reports its untrained loss (about 2.3) at step 0: no steps to count
    spec = spec_dict(study={"goal": 100.0, "n_trials": 8}, workload={"target": "digits-mlp", "epochs": 1})
    (tmp_path / "study.toml").write_text(toml_text(spec))
    p = tuner("run", "study.toml", "--storage", str(tmp_path / "j.log"), cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "already reaches the goal 100: choose a goal that training has to work for" in p.stderr


# --- bad input: one line, exit 2, nothing written -------------------------------------------------------

@pytest.mark.parametrize(("study", "search", "says"), [
    ({"goal": "nan"}, {}, "[study] goal: input should be a finite number"),
    ({"goal": 1.0}, {"pruner": "median"}, 'pruner = "median" compares the metric'),
])
def test_a_bad_goal_is_one_line_and_exit_2(tmp_path, study, search, says):
    spec = spec_dict(study=study, search=search)
    text = toml_text(spec).replace('goal = "nan"', "goal = nan")
    (tmp_path / "study.toml").write_text(text)
    p = tuner("run", "study.toml", "--storage", str(tmp_path / "j.log"), cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert says in p.stderr and not (tmp_path / "j.log").exists()


def test_a_study_is_not_resumed_for_another_goal(tmp_path):
    first = study_file(tmp_path, n_trials=4, options={"samples": 4096, "dims": 256, "reports": 8})
    storage = str(tmp_path / "j.log")
    assert tuner("run", str(first), "--storage", storage, "--no-fit", cwd=tmp_path).returncode == 0
    listed = tuner("studies", "--storage", storage, cwd=tmp_path).stdout
    assert "test  (steps to 1, minimize, 4 of 4 finished trials)" in listed  # what the study scores
    before = (tmp_path / "j.log").read_bytes()
    again = study_file(tmp_path, goal=2.0, n_trials=8, options={"samples": 4096, "dims": 256, "reports": 8})
    p = tuner("run", str(again), "--storage", storage, cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "was run for the fewest steps to goal = 1, this spec for the fewest steps to goal = 2" in p.stderr
    assert (tmp_path / "j.log").read_bytes() == before
