"""Faults from outside: a journal cut off by a crash or a full disk, a file that is not a storage,
a password that breaks a URL, a workload that exits, an export that cannot be written. Each is
met with one line and an exit code, and loses nothing."""
from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import spec_dict, toml_text, tuner
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def journal(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def finished(path: Path, name: str = "test") -> list:
    return optuna.load_study(study_name=name, storage=journal(path)).get_trials(states=FINISHED)


def write(tmp_path: Path, **tables) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(toml_text(spec_dict(**tables)))
    return path


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a filesystem needs root (CI runs as root)")


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A small real filesystem mounted at ``folder`` (made here) for the test's duration."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def one_line_error(p: subprocess.CompletedProcess, code: int) -> str:
    assert p.returncode == code, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    return lines[0]


# --- 1. a torn journal ------------------------------------------------------------------------------

def test_a_journal_cut_off_mid_record_is_repaired_at_the_next_write_and_stays_readable(tmp_path):
    spec, store = write(tmp_path, study={"name": "test", "n_trials": 12}), tmp_path / "t.journal"
    assert tuner("run", str(spec), "--storage", str(store), "--no-fit", cwd=tmp_path).returncode == 0
    before = len(finished(store))
    data = store.read_bytes()
    store.write_bytes(data[:-40])  # a power cut: the last record's end never reached the disk
    torn = len(data) - 40 - (data[:-40].rfind(b"\n") + 1)

    p = tuner("run", str(spec), "--storage", str(store), "--no-fit", "--n-trials", "16", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    warning = [line for line in p.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warning) == 1 and f"cut off ({torn} bytes" in warning[0]
    aside = list(tmp_path.glob("t.journal.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == data[:-40][-torn:]
    assert tuner("studies", "--storage", str(store), cwd=tmp_path).returncode == 0  # readable from now on
    assert len(finished(store)) == 16 and before == 12  # by Optuna too: the records before the cut kept


def test_a_journal_broken_in_the_middle_is_refused_in_one_line(tmp_path):
    store = tmp_path / "t.journal"
    spec = write(tmp_path, study={"name": "test", "n_trials": 6})
    assert tuner("run", str(spec), "--storage", str(store), "--no-fit", cwd=tmp_path).returncode == 0
    lines = store.read_bytes().split(b"\n")
    lines[3] = lines[3][:20]  # what an older tuner left: a cut-off record with records after it
    store.write_bytes(b"\n".join(lines))
    kept = store.read_bytes()
    line = one_line_error(tuner("studies", "--storage", str(store), cwd=tmp_path), 2)
    assert "a record in the middle of the journal is broken" in line
    assert store.read_bytes() == kept


@needs_root
def test_a_full_disk_stops_the_run_in_one_line_and_the_journal_stays_whole(tmp_path):
    with tmpfs(tmp_path / "disk", "size=96k") as disk:
        spec, store = write(tmp_path, study={"name": "test", "n_trials": 400}), disk / "t.journal"
        p = tuner("run", str(spec), "--storage", str(store), "--no-fit", cwd=tmp_path)
        line = one_line_error(p, 1)
        assert "No space left on device" in line and "nothing of the last write was kept" in line
        assert store.read_bytes().endswith(b"\n")  # no record cut off, to be written after
        assert len(finished(store)) > 0  # and everything before it readable


@needs_root
def test_a_full_disk_under_sqlite_stops_the_run_saying_so(tmp_path):
    # Optuna wraps the database's words in "exceeding max length"; the trials after it failed as
    # "interrupted" and the run stopped five later "with unknown error"
    with tmpfs(tmp_path / "disk", "size=200k") as disk:
        spec, url = write(tmp_path, study={"name": "test", "n_trials": 400}), f"sqlite:///{disk / 's.db'}"
        p = tuner("run", str(spec), "--storage", url, "--no-fit", cwd=tmp_path)
        assert p.returncode == 1 and "Traceback" not in p.stderr
        last = p.stderr.strip().splitlines()[-1]
        assert last == "Error: the study's storage failed to write: database or disk is full; the trials " \
                       "finished before it are kept"
        storage = optuna.storages.RDBStorage(url)
        try:
            assert len(optuna.load_study(study_name="test", storage=storage).get_trials(states=FINISHED)) > 0
        finally:
            storage.engine.dispose()  # the file must be closed before its filesystem is unmounted


def test_a_connection_lost_inside_a_transaction_is_said_so_not_in_sqlalchemys_words():
    # a PostgreSQL server stopped mid-write: depending on the moment, SQLAlchemy's next use of the
    # session raises "Can't reconnect until invalid transaction is rolled back. Please rollback()..."
    from sqlalchemy.exc import PendingRollbackError

    from tuner.runner import _storage_failure

    try:
        try:
            raise PendingRollbackError("Can't reconnect until invalid transaction is rolled back.", None, None)
        except PendingRollbackError as lost:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from lost
    except optuna.exceptions.StorageInternalError as wrapped:
        failure = _storage_failure(wrapped)
    assert str(failure) == ("the study's storage failed to write: the connection to the database was lost "
                            "inside a transaction; the trials finished before it are kept")


# --- 2. a file that is not a storage -----------------------------------------------------------------

@pytest.mark.parametrize("content", [b"hello\n", b"my notes\nline two\n", bytes(range(256)) * 4])
def test_a_file_that_is_not_a_journal_is_refused_and_left_alone(tmp_path, content):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(content)
    spec = write(tmp_path)
    for command in (["run", str(spec)], ["studies"], ["fit", "test"]):
        line = one_line_error(tuner(*command, "--storage", str(notes), cwd=tmp_path), 2)
        assert "is not an Optuna journal" in line
    assert notes.read_bytes() == content


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_a_device_is_not_a_storage(tmp_path, device):
    line = one_line_error(tuner("run", str(write(tmp_path)), "--storage", device, cwd=tmp_path, timeout=60), 2)
    assert "is not a regular file" in line


# --- 3. a password that breaks the URL ---------------------------------------------------------------

@pytest.mark.parametrize(("url", "says"), [
    ("postgresql+psycopg://tuner:Tr0ub4dor@3xtraS3cret@127.0.0.1:9/studies", "percent-encode it"),
    ("postgresql+psycopg://tuner:Tr0ub/4dor@127.0.0.1:9/studies", "cannot open"),  # parsed right: tried
    ("postgresql+psycopg://tuner:Tr0ub4dor3xtraS3cret@127.0.0.1:notaport/studies", "malformed URL"),
    ("postgresql+psycopg://tuner:Tr0ub4dor3xtraS3cret@[::1/studies", "malformed URL"),
])
def test_a_url_whose_password_breaks_it_is_refused_without_showing_any_of_the_password(tmp_path, url, says):
    for command in (["studies"], ["fit", "test"], ["run", str(write(tmp_path))], ["dashboard", "--port", "1"]):
        line = one_line_error(tuner(*command, "--storage", url, cwd=tmp_path, timeout=60), 2)
        assert says in line and "Tr0ub" not in line and "3xtraS3cret" not in line


# --- 5. a workload that exits --------------------------------------------------------------------------

@pytest.mark.parametrize("body", ["sys.exit(0)", "sys.exit(3)", "raise GeneratorExit()", "raise BaseException('x')"])
def test_a_workload_that_exits_fails_its_trials_and_the_run_says_so(tmp_path, body):
    (tmp_path / "quits.py").write_text(f"import sys\n\n\ndef train(run):\n    {body}\n")
    spec = write(tmp_path, study={"name": "test", "n_trials": 8}, workload={"target": "quits:train"})
    store = tmp_path / "t.journal"
    p = tuner("run", str(spec), "--storage", str(store), cwd=tmp_path)
    *failed_trials, line = p.stderr.strip().splitlines()  # each failed trial reported as it happens, then why
    assert p.returncode == 1 and line.startswith("Error: stopped") and "not exit" in line
    assert all(report.startswith("trial ") for report in failed_trials) and "Traceback" not in p.stderr
    study = optuna.load_study(study_name="test", storage=journal(store))
    assert not study.get_trials(states=[TrialState.RUNNING])
    assert all(t.user_attrs["error"].endswith("not exit") for t in study.trials)


def test_a_huge_error_message_is_stored_cut_to_a_readable_length(tmp_path):
    (tmp_path / "loud.py").write_text("def train(run):\n    raise ValueError('x' * 2_000_000)\n")
    spec = write(tmp_path, study={"name": "test", "n_trials": 8}, workload={"target": "loud:train"})
    store = tmp_path / "t.journal"
    p = tuner("run", str(spec), "--storage", str(store), cwd=tmp_path)
    assert p.returncode == 1 and len(p.stderr) < 20_000
    errors = [t.user_attrs["error"] for t in optuna.load_study(study_name="test", storage=journal(store)).trials]
    assert all(len(e) < 1100 and "characters cut" in e for e in errors) and store.stat().st_size < 100_000


# --- 6. exports: atomic, and one line where they cannot be written ------------------------------------

@pytest.fixture
def fitted(tmp_path) -> Path:
    """A journal holding a study with a stored fit (tests/data/fit-before-typed.json)."""
    store = tmp_path / "fitted.journal"
    study = optuna.create_study(study_name="fixture", storage=journal(store))
    fit = Path(__file__).parent / "data" / "fit-before-typed.json"
    study.set_user_attr("lr_batch_fit", __import__("json").loads(fit.read_text()))
    return store


@needs_root
def test_an_export_on_a_full_disk_leaves_the_earlier_file_whole(tmp_path, fitted):
    with tmpfs(tmp_path / "disk", "size=64k") as disk:
        earlier = disk / "lr.json"
        earlier.write_text('{"earlier": true}\n')
        (disk / "filler").write_bytes(b"x" * (60 * 1024))  # a few KB left: less than the export
        for fmt, name in (("json", "lr.json"), ("markdown", "report.md")):
            line = one_line_error(tuner("export", "fixture", "--storage", str(fitted), "--format", fmt,
                                        "-o", str(disk / name), cwd=tmp_path), 2)
            assert "No space left on device" in line
        assert earlier.read_text() == '{"earlier": true}\n'
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "lr.json"]  # no temporary left behind


@needs_root
def test_an_export_to_a_read_only_folder_is_one_line(tmp_path, fitted):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as disk:
        line = one_line_error(tuner("export", "fixture", "--storage", str(fitted), "--format", "json",
                                    "-o", str(disk / "lr.json"), cwd=tmp_path), 2)
        assert "Read-only file system" in line


@needs_root
def test_a_journal_on_a_read_only_filesystem_is_read_and_refuses_writes_in_one_line(tmp_path):
    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        spec, store = write(tmp_path, study={"name": "test", "n_trials": 32}, search={"lr": [1e-4, 8.0]}), \
            disk / "t.journal"
        assert tuner("run", str(spec), "--storage", str(store), cwd=tmp_path).returncode == 0
        before = store.read_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        line = one_line_error(tuner("run", str(spec), "--n-trials", "40", "--storage", str(store), cwd=tmp_path), 2)
        assert "cannot be written" in line and "Read-only file system" in line
        for command in (["studies"], ["fit", "test"]):  # reading needs no lock; the same fit writes nothing
            assert tuner(*command, "--storage", str(store), cwd=tmp_path).returncode == 0
        assert store.read_bytes() == before


@pytest.mark.parametrize(("target", "says"), [
    ("/proc/lr.json", "cannot write /proc/lr.json"),
    ("/dev/full", "not a regular file"),
    ("no/such/folder/lr.json", "does not exist"),
])
def test_an_export_that_cannot_be_written_is_one_line(tmp_path, fitted, target, says):
    line = one_line_error(tuner("export", "fixture", "--storage", str(fitted), "--format", "json", "-o", target,
                                cwd=tmp_path), 2)
    assert says in line


def test_a_report_whose_figure_path_is_a_folder_writes_neither(tmp_path, fitted):
    (tmp_path / "report.png").mkdir()
    line = one_line_error(tuner("export", "fixture", "--storage", str(fitted), "--format", "markdown",
                                "-o", "report.md", cwd=tmp_path), 2)
    assert "report.png" in line and "not a regular file" in line
    assert not (tmp_path / "report.md").exists()
