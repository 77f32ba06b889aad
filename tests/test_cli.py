"""The `tuner` command end to end, as a user runs it: real files, real subprocesses."""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import spec_dict, toml_text, tuner
from optuna.trial import TrialState

from tuner.storage import open_storage


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished(study):
    return study.get_trials(states=[TrialState.COMPLETE, TrialState.PRUNED])


def test_run_on_a_sqlite_file_then_list_studies(tmp_path, write_spec):
    spec = write_spec(spec_dict(study={"name": "quad", "n_trials": 24}))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    p = tuner("run", str(spec), "--storage", url, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "study 'quad' in sqlite:///" in p.stdout
    for b in (8, 32, 128, 512):
        assert f"\n{b:>7} " in p.stdout  # a row per batch size
    study = optuna.load_study(study_name="quad", storage=url)
    assert len(finished(study)) == 24
    assert study.user_attrs["tuner_spec"]["study"]["n_trials"] == 24

    p = tuner("studies", "--storage", url, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("quad  (minimize, 24 of 24 finished trials)")
    assert "complete" in p.stdout and "diverged" in p.stdout


def test_studies_shows_trials_still_running_with_their_age_and_process(tmp_path, write_spec):
    # a worker killed on another machine leaves its journal trial RUNNING: it was in no column
    spec = write_spec(spec_dict(study={"name": "quad", "n_trials": 8}))
    store = tmp_path / "t.journal"
    assert tuner("run", str(spec), "--storage", str(store), "--no-fit", cwd=tmp_path).returncode == 0
    study = optuna.load_study(study_name="quad", storage=open_storage(str(store), create=False))
    orphan = study.ask({"batch_size": optuna.distributions.IntDistribution(8, 512, log=True),
                        "lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)})
    study._storage.set_trial_system_attr(orphan._trial_id, "tuner:worker", "gpu-box-7:4242")
    p = tuner("studies", "--storage", str(store), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    header, *rows = p.stdout.split("\n\n")[0].splitlines()[1:]
    assert header.split()[5] == "running"
    batch = orphan.params["batch_size"]
    assert [row.split()[5] for row in rows if row.split()[0] == str(batch)] == ["1"]
    assert f"trial {orphan.number} running (batch {batch}): started " in p.stdout
    assert "ago, process gpu-box-7:4242" in p.stdout


def test_the_default_storage_is_a_journal_file_in_the_working_directory(tmp_path, write_spec):
    spec = write_spec(spec_dict(study={"n_trials": 8}))
    p = tuner("run", str(spec), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    journal = tmp_path / "tuner.journal"
    assert journal.exists()
    assert len(finished(optuna.load_study(study_name="test", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))))) == 8
    other = tmp_path / "elsewhere.journal"
    p = tuner("run", str(spec), "--n-trials", "4", cwd=tmp_path, env={"TUNER_STORAGE": str(other)})
    assert p.returncode == 0 and other.exists()


def test_resume_and_overrides_from_the_command_line(tmp_path, write_spec):
    spec = write_spec(spec_dict(study={"n_trials": 8}))
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert tuner("run", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    p = tuner("run", str(spec), "--storage", url, "--n-trials", "16", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(finished(optuna.load_study(study_name="test", storage=url))) == 16
    p = tuner("run", str(spec), "--storage", url, "--study-name", "copy", "--n-trials", "4", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(finished(optuna.load_study(study_name="copy", storage=url))) == 4


def test_a_user_workload_module_beside_the_study_file(tmp_path, write_spec):
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_train.py").write_text(
        "import math\n"
        "def train(run):\n"
        "    best = run.options['scale'] * run.batch_size\n"
        "    loss = 1 + math.log(run.lr / best) ** 2\n"
        "    for k in (1, 2, 3):\n"
        "        run.report(k * 100 * run.batch_size, loss + (3 - k))\n"
        "    return loss\n")
    spec = project / "study.toml"
    spec.write_text(toml_text(spec_dict(study={"n_trials": 16},
                                        workload={"target": "my_train:train", "scale": 1e-3})))
    url = f"sqlite:///{tmp_path / 's.db'}"
    p = tuner("run", str(spec), "--storage", url, cwd=tmp_path)  # cwd is not the module's folder
    assert p.returncode == 0, p.stderr
    study = optuna.load_study(study_name="test", storage=url)
    assert len(study.get_trials(states=[TrialState.COMPLETE])) >= 8
    assert all(t.user_attrs["samples"] % t.params["batch_size"] == 0 for t in finished(study))


def test_help_is_fast_to_import_and_has_examples(tmp_path):
    code = ("import sys; from tuner.cli import cli\n"
            "for args in (['--help'], ['run', '--help'], ['studies', '--help']):\n"
            "    cli.main(args, standalone_mode=False)\n"
            "assert 'torch' not in sys.modules, 'tuner --help imported torch'\n"
            "assert 'optuna' not in sys.modules, 'tuner --help imported optuna'\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Examples:" in p.stdout and "tuner run studies/quadratic.toml" in p.stdout


def good_spec():
    return spec_dict(study={"n_trials": 4})


BAD_INPUTS = {
    "unknown key": (lambda s: s["search"].update(batch_size=[8]), [], "[search] batch_size: unknown key"),
    "reversed lr": (lambda s: s["search"].update(lr=[1.0, 1e-3]), [], "needs low < high"),
    "zero batch size": (lambda s: s["search"].update(batch_sizes=[0, 8]), [], "batch_sizes[0]"),
    "fractional batch size": (lambda s: s["search"].update(batch_sizes=[8, 12.5]), [], "batch_sizes[1]"),
    "n_trials 0": (lambda s: s["study"].update(n_trials=0), [], "[study] n_trials"),
    "unknown workload": (lambda s: s["workload"].update(target="resnet"), [], "unknown workload 'resnet'"),
    "missing module": (lambda s: s.update(workload={"target": "nowhere_mod:train"}), [],
                       "no module named 'nowhere_mod'"),
    "bad option": (lambda s: s["workload"].update(samples="all"), [], "[workload] samples"),
    "other workload for the study": (lambda s: s["workload"].update(samples=999), [], "was run with workload"),
    "dropped batch size": (lambda s: s["search"].update(batch_sizes=[8, 32]), [], "drops"),
    "unknown scheme": (None, ["--storage", "mongo://localhost/x"], "unknown or malformed URL"),
    "missing folder": (None, ["--storage", "/no/such/folder/s.journal"], "folder /no/such/folder does not exist"),
    "missing sqlite folder": (None, ["--storage", "sqlite:////no/such/folder/s.db"], "does not exist"),
    "n-trials option": (None, ["--n-trials", "0"], "--n-trials"),
    "no such spec file": ("missing", [], "no such study file"),
}


@pytest.fixture(scope="module")
def studied_db(tmp_path_factory):
    """A database holding the good spec's study, made once and copied by each test."""
    folder = tmp_path_factory.mktemp("good")
    (folder / "good.toml").write_text(toml_text(good_spec()))
    p = tuner("run", "good.toml", "--storage", "sqlite:///s.db", cwd=folder)
    assert p.returncode == 0, p.stderr
    return folder / "s.db"


@pytest.mark.parametrize("case", ["other workload for the study", "dropped batch size"])
def test_a_refused_resume_leaves_a_journal_byte_for_byte_unchanged(tmp_path, write_spec, case):
    # the attempt to create the study again appended a 123-byte record each time
    write_spec(good_spec(), "good.toml")
    assert tuner("run", "good.toml", "--storage", "s.journal", cwd=tmp_path).returncode == 0
    before = sha(tmp_path / "s.journal")
    spec = good_spec()
    BAD_INPUTS[case][0](spec)
    p = tuner("run", str(write_spec(spec, "bad.toml")), "--storage", "s.journal", cwd=tmp_path)
    assert p.returncode == 2 and BAD_INPUTS[case][2] in p.stderr
    assert sha(tmp_path / "s.journal") == before


def test_fitting_the_same_trials_again_writes_nothing(tmp_path, write_spec):
    # each `tuner fit`, or a rerun of a finished study, appended the same fit again: ~40 KB a time
    write_spec(spec_dict(study={"name": "quad", "n_trials": 32}, search={"lr": [1e-4, 8.0]}), "good.toml")
    assert tuner("run", "good.toml", "--storage", "s.journal", cwd=tmp_path).returncode == 0
    before = sha(tmp_path / "s.journal")
    for command in (["fit", "quad"], ["run", "good.toml"]):
        p = tuner(*command, "--storage", "s.journal", cwd=tmp_path)
        assert p.returncode == 0 and "Use the " in p.stdout, p.stderr
        assert sha(tmp_path / "s.journal") == before


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, write_spec, studied_db, case):
    change, args, words = BAD_INPUTS[case]
    db = tmp_path / "s.db"
    shutil.copy(studied_db, db)
    url = f"sqlite:///{db}"
    write_spec(good_spec(), "good.toml")
    before = sha(db)
    spec = good_spec()
    if callable(change):
        change(spec)
    path = tmp_path / "missing.toml" if change == "missing" else write_spec(spec, "bad.toml")
    p = tuner("run", str(path), "--storage", url, *args, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("Error: "), p.stderr
    assert words in p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert sha(db) == before
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(["good.toml", "s.db"] + (
        ["bad.toml"] if change != "missing" else []))


def test_read_only_commands_never_create_a_storage(tmp_path):
    for args in (["studies"], ["studies", "--storage", "sqlite:///nothing.db"]):
        p = tuner(*args, cwd=tmp_path)
        assert p.returncode == 2 and "no study storage at" in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_password_in_a_storage_url_is_never_shown(tmp_path, write_spec):
    spec = write_spec(good_spec())
    url = "postgresql+psycopg://tuner:hunter2secret@127.0.0.1:9/studies"  # nothing listens on port 9
    p = tuner("run", str(spec), "--storage", url, cwd=tmp_path, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "hunter2secret" not in p.stdout + p.stderr
    assert "postgresql+psycopg://tuner:***@127.0.0.1:9/studies" in p.stderr
