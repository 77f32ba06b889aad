"""`tuner verify`: the rules' learning rates trained at held-out batch sizes, against ground truth.

The noisy quadratic prices every learning rate in closed form, so the measured regret of each rule
is checked against the exact one; synthetic valleys whose optimum follows lr ∝ B^α exactly check
that verify ranks the rules as the truth does; real subprocesses are killed to check the resume.
"""
import itertools
import math
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import spec_dict, toml_text, tuner
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState
from scipy.stats import t as student

from tuner import runner
from tuner import verify as verification
from tuner.fit import FIT_ATTR, load_fit
from tuner.fit._report import format_verification
from tuner.fit._verification import RULE_CHOICES, beyond_the_best, default_batch_sizes, plan, summarize
from tuner.storage import open_storage
from tuner.trials import PURPOSE, SEED, VERIFY, WORKER_ATTR, is_verification
from tuner.workloads.quadratic import expected_loss

# lr* = 0.01 (B/16)^alpha exactly; twice as steep above the optimum, diverging past ×4.5. Each seed
# shifts the whole valley by ~2% (data order, initialisation: shared by every learning rate) and
# each run adds 0.3% of its own.
SYNTHETIC = '''
import math, random, time

def train(run):
    z = math.log(run.lr / (0.01 * (run.batch_size / 16) ** run.options["alpha"]))
    if z > 1.5:
        return float("nan")
    if run.batch_size not in (16, 32, 64, 128, 256, 512):
        time.sleep(run.options.get("held_out_sleep", 0.0))  # only verification trainings are slow
    score = (lambda v: 1.0 - v) if run.direction == "maximize" else (lambda v: v)  # an accuracy-like metric
    loss = 0.3 + 0.2 * z * z * (2.0 if z > 0 else 1.0)
    for k in range(1, 4):
        run.report(k * 100 * run.batch_size, score(loss * (1 + 0.2 * (3 - k))))
    shared = random.Random(run.seed).gauss(0.0, 0.02)
    own = random.Random(f"{run.seed}:{run.lr}").gauss(0.0, 0.003)
    return score(loss * (1 + shared) + 0.3 * own)
'''
SIZES = [16, 32, 64, 128, 256, 512]


def synthetic_study(folder: Path, alpha: float, held_out_sleep: float = 0.0,
                    direction: str = "minimize") -> tuple[Path, str]:
    (folder / "valley.py").write_text(SYNTHETIC)
    spec = spec_dict(study={"name": "valley", "n_trials": 72, "seed": 0, "direction": direction},
                     search={"lr": [1e-4, 1.0], "batch_sizes": SIZES},
                     workload={"target": "valley:train", "alpha": alpha, "held_out_sleep": held_out_sleep})
    (folder / "valley.toml").write_text(toml_text(spec))
    return folder / "valley.toml", str(folder / "valley.journal")


def test_the_measured_regret_of_every_rule_agrees_with_the_closed_form(tmp_path):
    spec = spec_dict(study={"name": "q", "n_trials": 48, "seed": 0}, search={"batch_sizes": [8, 32, 128, 512]})
    (tmp_path / "q.toml").write_text(toml_text(spec))
    store = str(tmp_path / "q.journal")
    runner.run(tmp_path / "q.toml", store, quiet=True)
    fit = verification.run(verification.prepare("q", store, seeds=5, rules=RULE_CHOICES), quiet=True)
    options = {k: v for k, v in spec["workload"].items() if k != "target"}
    checked = 0
    for batch in fit.verify.batches:
        best = expected_loss(batch.best_lr, batch.batch_size, **options)
        for rate in batch.rates:
            exact = expected_loss(rate.lr, batch.batch_size, **options) - best
            if rate.diverged:
                assert exact > 10 * best, (batch.batch_size, rate)  # it diverges in expectation too
                continue
            # the measured regret's 95% interval (Student's t over paired seeds), or 1% of the metric
            allowed = max(student.ppf(0.975, len(rate.values) - 1) * (rate.regret_se or 0.0), 0.01 * best)
            assert abs(rate.regret - exact) <= allowed, (batch.batch_size, rate.lr, rate.labels, rate.regret, exact)
            checked += 1
    assert len(fit.verify.batches) == 3 and checked >= 15


def true_loss(lr: float, batch_size: int, alpha: float) -> float:
    """SYNTHETIC's expected final loss (its noise has mean zero); inf where it diverges."""
    z = math.log(lr / (0.01 * (batch_size / 16) ** alpha))
    return math.inf if z > 1.5 else 0.3 + 0.2 * z * z * (2.0 if z > 0 else 1.0)


@pytest.mark.parametrize("alpha, wrong, direction", [(0.5, "linear", "minimize"), (1.0, "sqrt", "maximize")])
def test_verify_ranks_the_rules_as_the_truth_does(tmp_path, alpha, wrong, direction):
    spec, store = synthetic_study(tmp_path, alpha, direction=direction)
    runner.run(spec, store, quiet=True)
    fit = verification.run(verification.prepare("valley", store, seeds=3), quiet=True)
    largest = max(fit.verify.batches, key=lambda b: b.batch_size)
    rates = {label: rate for rate in largest.rates for label in rate.labels}
    truth = {label: true_loss(rate.lr, largest.batch_size, alpha) for label, rate in rates.items()}
    assert all(rate.regret >= 0 for rate in rates.values())  # worse than the best, whichever way the metric goes
    # every two rules whose true losses differ by more than 0.5% of the metric are ordered as the truth orders them
    for a, b in itertools.combinations(["recommended", "linear", "sqrt"], 2):
        if abs(truth[a] - truth[b]) > 0.005 * 0.3:
            assert (rates[a].regret < rates[b].regret) == (truth[a] < truth[b]), (a, b, rates, truth)
    assert rates[wrong].regret == max(rates[name].regret for name in ("recommended", "linear", "sqrt"))
    assert f"the {'linear' if wrong == 'linear' else 'square-root'} rule" in fit.verify.summary


def test_verification_trials_stay_out_of_the_search_and_the_fit(tmp_path):
    spec, store = synthetic_study(tmp_path, 0.5)
    runner.run(spec, store, quiet=True)
    before = load_fit(optuna.load_study(study_name="valley", storage=open_storage(store, create=False)))
    fit = verification.run(verification.prepare("valley", store, batch_sizes=[90, 1024], seeds=2), quiet=True)
    study = optuna.load_study(study_name="valley", storage=open_storage(store, create=False))
    held_out = [t for t in study.trials if is_verification(t)]
    assert len(held_out) == fit.verify.trainings and all(t.state == TrialState.COMPLETE or t.state ==
                                                         TrialState.PRUNED for t in held_out)
    assert [b.extrapolated for b in fit.verify.batches] == [False, True]
    # tuner run on the finished study trains nothing more; a refit is the same fit, verification kept
    runner.run(spec, store, quiet=True, fit=False)
    assert len(optuna.load_study(study_name="valley", storage=open_storage(store, create=False)).trials) \
        == len(study.trials)
    refit = runner.fit_and_save(study)
    assert all(refit.to_dict()[key] == before.to_dict()[key] for key in ("optimal_lr", "rules", "recommended"))
    assert refit.verify == fit.verify and refit.verdict.endswith(fit.verify.summary)


def test_a_training_running_on_another_machine_is_not_waited_for(tmp_path):
    # on a journal file nothing can tell whether a process on another machine is alive
    spec, store = synthetic_study(tmp_path, 1.0)
    runner.run(spec, store, quiet=True)
    plan = verification.prepare("valley", store, batch_sizes=[90], seeds=1)
    point, seed = plan.missing[0]
    study = optuna.load_study(study_name="valley", storage=open_storage(store, create=False))
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.RUNNING, params={"batch_size": point.batch_size, "lr": point.lr},
        distributions={"batch_size": IntDistribution(16, 512, log=True), "lr": FloatDistribution(1e-4, 1.0, log=True)},
        user_attrs={PURPOSE: VERIFY, SEED: seed}, system_attrs={WORKER_ATTR: "elsewhere:4242"}))
    fit = verification.run(verification.prepare("valley", store, batch_sizes=[90], seeds=1), quiet=True)
    assert fit.verify.finished == fit.verify.trainings - 1
    assert "run `tuner verify` again to include them" in format_verification(fit)


def test_where_the_best_measured_is_an_end_verify_steps_beyond_it(tmp_path):
    # the truth's optimum at B=90 lies ×5 above the rate a (deliberately wrong) rule gives: the rates
    # ×0.5 … ×2 around it have their best at ×2, and the rules' regrets would be measured against too
    # poor a best
    spec, store = synthetic_study(tmp_path, 1.0)
    runner.run(spec, store, quiet=True)
    fit = load_fit(optuna.load_study(study_name="valley", storage=open_storage(store, create=False)))
    rule = fit.rules[fit.recommended]
    low = rule.model_copy(update={"lr_ref": (rule.lr_ref or 0) / 5, "lr_max": (rule.lr_max or 0) / 5})
    wrong = fit.model_copy(update={"rules": {**fit.rules, fit.recommended: low}})
    points = plan(wrong, [90], ["recommended"])
    seeds = [1, 2]

    def measured(points):
        return [optuna.trial.create_trial(
            value=true_loss(p.lr, 90, 1.0) + 0.001 * s, params={"batch_size": 90, "lr": p.lr},
            distributions={"batch_size": IntDistribution(1, 4096), "lr": FloatDistribution(1e-6, 100.0, log=True)},
            user_attrs={PURPOSE: VERIFY, SEED: s}) for p in points for s in seeds]

    steps = []
    while extra := beyond_the_best(wrong, points, seeds, measured(points)):
        steps += extra
        points += extra
    assert [p.labels for p in steps] == [("×4",), ("×8",)]  # up to the truth (×5), then past it: bracketed
    best = summarize(wrong, points, seeds, measured(points)).batches[0].best_lr
    assert best == pytest.approx(wrong.predict(90) * 4) and true_loss(best, 90, 1.0) < true_loss(best / 2, 90, 1.0)


def test_default_held_out_batch_sizes_lie_between_the_studied_ones():
    assert default_batch_sizes([16, 32, 64, 128, 256, 512]) == [23, 91, 362]
    assert default_batch_sizes([8, 64]) == [23]
    assert default_batch_sizes([32]) == []


def test_a_killed_verification_resumes_without_losing_or_repeating_a_training(tmp_path):
    spec, store = synthetic_study(tmp_path, 1.0, held_out_sleep=0.4)
    assert tuner("run", str(spec), "--storage", store, cwd=tmp_path).returncode == 0
    args = ["verify", "valley", "--storage", store, "--batch-sizes", "90", "--seeds", "2"]
    process = start(args, tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _finished_verifications(store) < 3:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 3 <= _finished_verifications(store)
    p = tuner(*args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    study = optuna.load_study(study_name="valley", storage=open_storage(store, create=False))
    trials = [t for t in study.trials if is_verification(t)]
    finished = Counter((t.params["lr"], t.user_attrs[SEED]) for t in trials if t.state != TrialState.FAIL)
    fit = load_fit(study)
    assert set(finished.values()) == {1} and len(finished) == fit.verify.trainings == fit.verify.finished
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)
    assert sum(t.state == TrialState.FAIL for t in trials) <= 1  # the one the kill interrupted, retried
    listed = tuner("studies", "--storage", store, cwd=tmp_path).stdout
    assert f"verification (tuner verify): {len(finished)} trainings finished\n" in listed


def test_tuner_worker_runs_the_trainings_verify_queued(tmp_path):
    spec, store = synthetic_study(tmp_path, 1.0, held_out_sleep=0.4)
    assert tuner("run", str(spec), "--storage", store, cwd=tmp_path).returncode == 0
    verify = start(["verify", "valley", "--storage", store, "--batch-sizes", "90", "--seeds", "2"], tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _finished_verifications(store) < 1:
        time.sleep(0.1)
    worker = start(["worker", "valley", "--storage", store, "--quiet"], tmp_path)
    assert worker.wait(timeout=120) == 0 and verify.wait(timeout=120) == 0, worker.stderr.read()
    study = optuna.load_study(study_name="valley", storage=open_storage(store, create=False))
    processes = Counter(t.system_attrs[WORKER_ATTR] for t in study.trials if is_verification(t))
    assert len(processes) == 2 and min(processes.values()) >= 2  # both trained some
    assert load_fit(study).verify.finished == load_fit(study).verify.trainings == sum(processes.values())


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "tuner"), *args], cwd=cwd, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finished_verifications(store: str) -> int:
    try:
        study = optuna.load_study(study_name="valley", storage=open_storage(store, create=False))
    except KeyError:
        return 0
    return sum(is_verification(t) and t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


@pytest.mark.parametrize("args, says", [
    (["verify", "nosuch"], "no study named 'nosuch'"),
    (["verify", "valley", "--batch-sizes", "0,64"], "batch sizes must be positive integers"),
    (["verify", "valley", "--batch-sizes", "64,abc"], "batch sizes must be positive integers"),
    (["verify", "valley", "--seeds", "0"], "--seeds"),
    (["verify", "valley", "--rules", "recommended,cubic"], "unknown rule cubic"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, says):
    spec, store = synthetic_study(tmp_path, 0.5)
    assert tuner("run", str(spec), "--storage", store, "--n-trials", "24", cwd=tmp_path).returncode == 0
    before = Path(store).read_bytes()
    p = tuner(*args, "--storage", store, cwd=tmp_path)
    assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert Path(store).read_bytes() == before


def test_a_study_with_no_fit_says_to_fit_it_first(tmp_path):
    spec, store = synthetic_study(tmp_path, 0.5)
    assert tuner("run", str(spec), "--storage", store, "--n-trials", "24", "--no-fit", cwd=tmp_path).returncode == 0
    before = Path(store).read_bytes()
    p = tuner("verify", "valley", "--storage", store, cwd=tmp_path)
    assert p.returncode == 2 and "run `tuner fit valley` first" in p.stderr, p.stderr
    assert Path(store).read_bytes() == before


def test_a_fit_stored_before_a_rule_existed_says_to_fit_again(tmp_path):
    spec, store = synthetic_study(tmp_path, 0.5)
    assert tuner("run", str(spec), "--storage", store, "--n-trials", "24", cwd=tmp_path).returncode == 0
    study = optuna.load_study(study_name="valley", storage=open_storage(store, create=False))
    old = study.user_attrs[FIT_ATTR]
    del old["rules"]["surge"]  # as versions before the surge rule stored it
    study.set_user_attr(FIT_ATTR, old)
    before = Path(store).read_bytes()
    p = tuner("verify", "valley", "--rules", "surge", "--storage", store, cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "has no surge rule" in p.stderr and "run `tuner fit valley` again" in p.stderr
    assert Path(store).read_bytes() == before
