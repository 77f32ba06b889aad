"""Command workloads: a training script run as one real process per trial (tuner.command, tuner.client)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from conftest import spec_dict, toml_text, tuner

from tuner.errors import InputError
from tuner.runner import run
from tuner.spec import parse_spec
from tuner.trials import ERROR, LOG, OUT_OF_MEMORY, OUTCOME, Outcome
from tuner.workload import Run, load_workload, run_trial

PYTHON = sys.executable

# One training, three ways: a callable, a script reporting through tuner.client, a script printing
# JSON lines. Deterministic given (lr, batch size, seed), with a valley in lr and some seed noise.
CURVE = '''
import math, random

def curve(lr, batch_size, seed):
    best = 0.01 * (batch_size / 32) ** 0.75
    z = math.log(lr / best)
    final = float("nan") if z > 1.0 else 0.2 + 0.5 * z * z * (2.0 if z > 0 else 1.0)
    final *= 1.0 + 0.05 * random.Random(seed).gauss(0.0, 1.0)
    return [(k * 4096, final * (1.0 + 0.5 * (4 - k))) for k in range(1, 5)], final

def train(run):
    for step, value in curve(run.lr, run.batch_size, run.seed)[0]:
        run.report(step, value)
    return curve(run.lr, run.batch_size, run.seed)[1]
'''

ARGS = '''
import argparse, json, sys
from curve import curve
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float); p.add_argument("--batch-size", type=int); p.add_argument("--seed", type=int)
a = p.parse_args()
reports, final = curve(a.lr, a.batch_size, a.seed)
'''

CLIENT_SCRIPT = ARGS + '''
from tuner import client
for step, value in reports:
    print("epoch done", file=sys.stderr)
    client.report(step, value)
client.result(final)
'''

JSON_SCRIPT = ARGS + '''
for step, value in reports:
    print("garbage {not json", flush=True)
    print(json.dumps({"tuner_report": {"step": step, "value": value}}), flush=True)
    print("12% |###   | progress bar", flush=True)
print(json.dumps({"tuner_result": final}))
'''

COMMAND = [PYTHON, "script.py", "--lr", "{lr}", "--batch-size", "{batch_size}", "--seed", "{seed}"]


def _study_file(folder: Path, workload: dict, n_trials: int = 20) -> Path:
    # Optuna's median pruner: it prunes this valley's worse half, so the comparison covers pruning
    spec = spec_dict(study={"n_trials": n_trials, "seed": 3},
                     search={"lr": [1e-4, 1.0], "batch_sizes": [16, 128], "pruner": "median"})
    spec["workload"] = workload
    path = folder / "study.toml"
    path.write_text(toml_text(spec))
    return path


def _trials(folder: Path, workload: dict, script: str | None = None) -> list[optuna.trial.FrozenTrial]:
    folder.mkdir()
    (folder / "curve.py").write_text(CURVE)
    if script:
        (folder / "script.py").write_text(script)
    report = run(_study_file(folder, workload), str(folder / "study.journal"), fit=False, quiet=True)
    return report.study.trials


def test_a_script_reporting_either_way_stores_the_same_trials_as_the_callable(tmp_path):
    called = _trials(tmp_path / "callable", {"target": "curve:train"})
    by_client = _trials(tmp_path / "client", {"command": COMMAND}, CLIENT_SCRIPT)
    by_lines = _trials(tmp_path / "lines", {"command": COMMAND}, JSON_SCRIPT)
    outcomes = {t.user_attrs[OUTCOME] for t in called}
    assert {Outcome.COMPLETE, Outcome.PRUNED, Outcome.DIVERGED} <= outcomes, outcomes
    for script in (by_client, by_lines):
        assert len(script) == len(called) == 20
        for mine, theirs in zip(script, called):
            assert mine.params == theirs.params
            assert mine.state == theirs.state
            assert mine.user_attrs[OUTCOME] == theirs.user_attrs[OUTCOME]
            assert mine.value == theirs.value
            assert mine.intermediate_values == theirs.intermediate_values
            log = Path(mine.user_attrs[LOG])
            assert log.is_file() and log.parent.name == "test"
    client_log = Path(by_client[0].user_attrs[LOG]).read_text()
    assert "epoch done" in client_log  # standard error goes to the trial's log too
    assert "progress bar" in Path(by_lines[0].user_attrs[LOG]).read_text()


# --- one trial at a time, against a real study -------------------------------------------------------------

def _one_trial(tmp_path: Path, script: str, *, pruner=None, lr: float = 0.01, **workload):
    """Run ``script`` as one trial of a real study; the frozen trial and how long the run took."""
    (tmp_path / "script.py").write_text(textwrap.dedent(script))
    table = {"command": [PYTHON, "script.py", "--lr", "{lr}"], **workload}
    spec = parse_spec({**spec_dict(), "workload": table})
    study = optuna.create_study(storage=_journal(tmp_path / "j.journal"), pruner=pruner or optuna.pruners.NopPruner())
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)})
    workload = load_workload(spec, tmp_path)
    start = time.monotonic()
    try:
        value = run_trial(workload, trial, 32, lr, seed=1)
        study.tell(trial, value)
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    except Exception:  # noqa: BLE001 - the outcome is what is checked
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return study.trials[0], time.monotonic() - start


def _journal(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _gone(pid: int) -> bool:
    """No such process, or a zombie (dead, and waiting for whoever adopted it to read its status)."""
    if not Path("/proc").is_dir():  # not Linux: a zombie counts as alive here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


GROUP = '''
import json, os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a script that will not stop when asked
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
child = subprocess.Popen([sys.executable, "-c", stubborn])
open("pids", "w").write(f"{os.getpid()} {child.pid}")
'''


def _pids(tmp_path: Path) -> list[int]:
    return [int(p) for p in (tmp_path / "pids").read_text().split()]


def test_a_pruned_script_that_ignores_sigterm_is_killed_after_the_grace_period_with_its_group(tmp_path):
    script = GROUP + '''
print(json.dumps({"tuner_report": {"step": 100, "value": 5.0}}), flush=True)
time.sleep(60)
'''
    trial, took = _one_trial(tmp_path, script, grace="1s", pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs[OUTCOME] == Outcome.PRUNED
    assert took < 1.0 + 3.0  # the grace period, and the interpreter's start
    assert all(_gone(pid) for pid in _pids(tmp_path)), "a process of the trial outlived it"


def test_a_script_pruned_through_the_client_exits_within_a_second_of_the_decision(tmp_path):
    script = GROUP + '''
from tuner import client
start = time.monotonic()
try:
    client.report(100, 5.0)
except Exception as e:
    open("pruned", "w").write(f"{type(e).__module__}.{type(e).__name__} {time.time()}")
    raise
'''
    trial, _ = _one_trial(tmp_path, script, grace="30s", pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    ended = time.time()
    kind, decided = (tmp_path / "pruned").read_text().split()
    assert kind == "optuna.exceptions.TrialPruned"
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert ended - float(decided) < 1.0
    assert all(_gone(pid) for pid in _pids(tmp_path)), "a process of the trial outlived it"


OUTCOMES = {
    "nan reported": ('print(\'{"tuner_report": {"step": 10, "value": NaN}}\')', Outcome.DIVERGED, None),
    "nan from the client": ("from tuner import client; client.report(10, float('inf'))", Outcome.DIVERGED, None),
    "out of memory": ("import sys; print('RuntimeError: CUDA out of memory. Tried to allocate 2 GiB', "
                      "file=sys.stderr); sys.exit(1)", Outcome.FAILED, "out of memory"),
    "killed by the kernel": ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", Outcome.FAILED,
                             "out of memory"),
    "a crash": ("import sys; print('Traceback: ValueError: boom', file=sys.stderr); sys.exit(3)", Outcome.FAILED,
                "exited with code 3: Traceback: ValueError: boom"),
    "never reports": ("print('training...')", Outcome.FAILED, "exited without a metric"),
    "a bad report": ('print(\'{"tuner_report": {"step": -1, "value": 1.0}}\')', Outcome.FAILED, "a report needs"),
}


@pytest.mark.parametrize("name", OUTCOMES)
def test_what_the_script_did_is_the_trials_outcome(tmp_path, name):
    script, outcome, error = OUTCOMES[name]
    trial, _ = _one_trial(tmp_path, script)
    assert trial.user_attrs[OUTCOME] == outcome
    if error:
        assert error in trial.user_attrs[ERROR]
    assert trial.user_attrs.get(OUT_OF_MEMORY, False) == (error == "out of memory")
    if outcome == Outcome.DIVERGED:
        assert trial.intermediate_values == {}  # no NaN stored, as for a callable


def test_a_script_past_its_timeout_fails_the_trial_and_leaves_no_process(tmp_path):
    script = GROUP + 'print(\'{"tuner_report": {"step": 10, "value": 1.0}}\', flush=True); time.sleep(60)'
    trial, took = _one_trial(tmp_path, script, timeout="2s", grace="1s")
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "timeout after 2s" in trial.user_attrs[ERROR]
    assert trial.intermediate_values == {10: 1.0}
    assert took < 2.0 + 1.0 + 2.0
    assert all(_gone(pid) for pid in _pids(tmp_path))


def test_the_client_does_nothing_outside_the_tuner(tmp_path):
    script = "from tuner import client; client.report(10, 1.0); client.result(0.5); print(client.should_prune())"
    env = {k: v for k, v in os.environ.items() if k != "TUNER_SOCKET_FD"}
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_placeholders_take_the_workloads_own_keys(tmp_path):
    script = '''
import json, sys
print(json.dumps({"tuner_result": float(sys.argv[2]) * int(sys.argv[3])}))
'''
    (tmp_path / "script.py").write_text(script)
    spec = parse_spec({**spec_dict(), "workload": {"command": [PYTHON, "script.py", "{lr}", "{scale}", "{epochs}"],
                                                   "scale": 0.5, "epochs": 4}})
    assert load_workload(spec, tmp_path).train(Run(lr=0.01, batch_size=8)) == 2.0


# --- bad input: one line, exit 2, nothing written ----------------------------------------------------------

BAD = {
    "unknown placeholder": ({"command": [PYTHON, "x.py", "{learning_rate}"]}, "unknown placeholder {learning_rate}"),
    "bad format": ({"command": [PYTHON, "{lr:d}"]}, "command[1] '{lr:d}': cannot fill it in"),
    "empty command": ({"command": []}, "[workload] command"),
    "blank program": ({"command": [" "]}, "must not be blank"),
    "missing program": ({"command": ["no-such-program-xyz", "{lr}"]}, "program 'no-such-program-xyz' not found"),
    "placeholder as the program": ({"command": ["{lr}"]}, "no placeholder but {python}"),
    "missing script path": ({"command": ["./train.sh"]}, "program './train.sh' not found"),
    "missing folder": ({"command": [PYTHON], "cwd": "nowhere"}, "[workload] cwd: no such folder"),
    "bad timeout": ({"command": [PYTHON], "timeout": "30 minutes"}, "[workload] timeout"),
    "timeout for a callable": ({"target": "quadratic", "timeout": "1m"}, "only for a command workload"),
    "both": ({"target": "quadratic", "command": [PYTHON]}, "not both"),
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_command_is_one_line_and_exit_2_with_nothing_written(tmp_path, name):
    workload, words = BAD[name]
    spec = spec_dict()
    spec["workload"] = workload
    (tmp_path / "study.toml").write_text(toml_text(spec))
    done = tuner("run", "study.toml", "--storage", "j.journal", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "j.journal").exists()


def test_a_command_workload_runs_in_local_workers_from_the_study_files_folder(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "curve.py").write_text(CURVE)
    (folder / "script.py").write_text(JSON_SCRIPT)
    study = _study_file(folder, {"command": COMMAND}, n_trials=10)
    done = tuner("run", str(study), "--workers", "2", "--no-fit", "--storage", "j.journal",
                 cwd=tmp_path)  # not the study file's folder: the command still runs there
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="test", storage=_journal(tmp_path / "j.journal")).trials
    finished = [t for t in trials if t.state.is_finished()]
    assert len(finished) >= 10 and all(t.user_attrs[OUTCOME] != Outcome.FAILED for t in finished)
    assert {Path(t.user_attrs[LOG]).parent.parent.parent for t in finished} == {folder}


def test_a_study_resumes_with_a_longer_timeout_but_not_with_another_command():
    first = parse_spec({**spec_dict(), "workload": {"command": [PYTHON, "{lr}"], "timeout": "30m"}})
    longer = parse_spec({**spec_dict(), "workload": {"command": [PYTHON, "{lr}"], "timeout": "2h", "grace": "1m"}})
    longer.check_continues(first)
    other = parse_spec({**spec_dict(), "workload": {"command": [PYTHON, "{lr}", "--fast"], "timeout": "30m"}})
    with pytest.raises(InputError, match="was run with workload"):
        other.check_continues(first)


def test_a_command_workload_table_is_stored_with_the_keys_given(tmp_path):
    spec = parse_spec({**spec_dict(), "workload": {"command": [PYTHON, "{lr}"], "timeout": "30m"}})
    assert spec.to_stored()["workload"] == {"command": [PYTHON, "{lr}"], "timeout": "30m"}
    with pytest.raises(InputError, match="target: required key is missing"):
        parse_spec({**spec_dict(), "workload": {"epochs": 3}})
    assert json.dumps(spec.to_stored())


def test_the_example_script_runs_as_a_study(tmp_path):
    examples = Path(__file__).resolve().parents[1] / "examples"
    for name in ("train_script.py", "script-study.toml"):
        (tmp_path / name).write_text((examples / name).read_text())
    done = tuner("run", "script-study.toml", "--n-trials", "3", "--no-fit", "--storage", "s.journal", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="digits-script", storage=_journal(tmp_path / "s.journal")).trials
    assert len(trials) == 3 and all(t.user_attrs[OUTCOME] == Outcome.COMPLETE for t in trials)
    assert all(len(t.intermediate_values) == 4 for t in trials)  # one report per epoch
    assert "validation loss" in Path(trials[0].user_attrs[LOG]).read_text()


def test_tuner_verify_trains_a_command_workload_too(tmp_path):
    (tmp_path / "curve.py").write_text(CURVE)
    (tmp_path / "script.py").write_text(JSON_SCRIPT)
    spec = spec_dict(study={"n_trials": 30, "seed": 1}, search={"lr": [1e-4, 1.0], "batch_sizes": [16, 64, 256]})
    spec["workload"] = {"command": COMMAND}
    (tmp_path / "study.toml").write_text(toml_text(spec))
    assert tuner("run", "study.toml", "--storage", "s.journal", cwd=tmp_path).returncode == 0
    done = tuner("verify", "test", "--storage", "s.journal", "--batch-sizes", "32", "--seeds", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="test", storage=_journal(tmp_path / "s.journal")).trials
    verified = [t for t in trials if t.user_attrs.get("purpose") == "verify"]
    assert verified and all(t.params["batch_size"] == 32 and LOG in t.user_attrs for t in verified)
    assert all(t.user_attrs[OUTCOME] in (Outcome.COMPLETE, Outcome.DIVERGED) for t in verified)


def test_a_killed_worker_leaves_no_script_running_and_the_rerun_retries_its_trial(tmp_path):
    (tmp_path / "script.py").write_text(textwrap.dedent('''
        import os, sys, time
        from tuner import client
        open(f"pid-{os.getpid()}", "w").close()
        for k in range(1, 41):
            time.sleep(0.25)
            client.report(k * 100, 1.0 + float(sys.argv[1]))
        client.result(1.0 + float(sys.argv[1]))
    '''))
    spec = spec_dict(study={"n_trials": 2})
    spec["workload"] = {"command": [PYTHON, "script.py", "{lr}"]}
    (tmp_path / "study.toml").write_text(toml_text(spec))
    command = [str(Path(sys.executable).parent / "tuner"), "run", "study.toml", "--storage", "s.journal", "--no-fit"]
    worker = subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("pid-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.kill()
    worker.wait()
    script = int(next(tmp_path.glob("pid-*")).name.removeprefix("pid-"))
    end = time.monotonic() + 5  # its next report finds the tuner gone
    while not _gone(script) and time.monotonic() < end:
        time.sleep(0.05)
    assert _gone(script), "the script of a killed worker kept running"
    done = tuner("run", "study.toml", "--storage", "s.journal", "--no-fit", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="test", storage=_journal(tmp_path / "s.journal")).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].params == trials[0].params
    assert retried[0].state == optuna.trial.TrialState.COMPLETE
