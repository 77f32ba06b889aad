"""`tuner dashboard` as a user runs it: a real server on a fitted study, read through its REST API."""
import json
import shutil
import signal
import socket

import pytest
from conftest import tuner
from dashboard_server import (
    STUDY_NAME,
    first_sentence,
    free_port,
    launch,
    load_study,
    start_dashboard,
    stop_process,
    wait_for_stderr,
)

pytest_plugins = ["dashboard_server"]  # fixtures: fitted_storage, dashboard

FIGURE_ID = "lr-batch-fit"
CRITICAL_FIGURE_ID = "lr-batch-critical"
MAX_ATTR_LENGTH = 1024  # optuna-dashboard's REST API cuts a non-string user attribute's JSON to this


def figures(study_json: dict) -> dict:
    """The study's plotly figures by id, each parsed from the JSON string the API returns."""
    return {g["id"]: json.loads(g["graph_object"]) for g in study_json["plotly_graph_objects"]}


def test_the_api_serves_the_fit_as_note_user_attribute_and_figure(dashboard, fitted_storage):
    fit = load_study(fitted_storage).user_attrs["lr_batch_fit"]
    study = dashboard.study()

    note = study["note"]["body"]
    assert first_sentence(fit["verdict"]) in note
    assert fit["verdict"] in note

    attrs = {a["key"]: a["value"] for a in study["user_attrs"]}
    shown = json.dumps(fit)
    # The whole fit when it is short; optuna-dashboard shows (and serves) only its first 1024 characters.
    assert attrs["lr_batch_fit"] == shown[:MAX_ATTR_LENGTH]
    if len(shown) <= MAX_ATTR_LENGTH:
        assert json.loads(attrs["lr_batch_fit"]) == fit
    # ...so the recommended rule is served whole in a short attribute of its own
    rule = load_study(fitted_storage).user_attrs["lr_batch_rule"]
    assert attrs["lr_batch_rule"] == rule and rule.startswith("lr = ") and fit["recommended"] in rule

    assert sorted(figures(study)) == sorted([FIGURE_ID, CRITICAL_FIGURE_ID])
    figure = figures(study)[FIGURE_ID]
    assert figure["layout"]["title"]["text"] == f"Optimal learning rate vs batch size: {STUDY_NAME}"
    assert figure["layout"]["xaxis"]["type"] == figure["layout"]["yaxis"]["type"] == "log"
    optima = [t for t in figure["data"] if t["name"].startswith("optimum")]
    assert sorted(b for t in optima for b in t["x"]) == [o["batch_size"] for o in fit["optimal_lr"]
                                                         if o["lr"] is not None]
    assert any(t["name"].startswith(f"{fit['recommended']} (recommended)") for t in figure["data"])
    # each batch size's own optimum beside the one averaged with the rule
    own = [(b, lr) for t in figure["data"] if t["name"].startswith("its trials alone") for b, lr in zip(t["x"], t["y"])]
    stored = [(o["batch_size"], o["own_lr"]) for o in fit["optimal_lr"] if o.get("own_lr") is not None]
    assert stored and [b for b, _ in own] == [b for b, _ in stored]
    assert [lr for _, lr in own] == pytest.approx([lr for _, lr in stored])


def test_the_api_serves_the_steps_against_samples_figure(dashboard, fitted_storage):
    critical = load_study(fitted_storage).user_attrs["lr_batch_fit"]["critical"]
    figure = figures(dashboard.study())[CRITICAL_FIGURE_ID]
    assert figure["layout"]["title"]["text"] == f"Steps vs samples to reach {critical['target']:.4g}: {STUDY_NAME}"
    points = next(t for t in figure["data"] if t["name"].startswith("per batch size"))
    reached = [r for r in critical["batches"] if r["reached"]]
    assert points["x"] == [r["steps"] for r in reached] and points["text"] == [f"B={r['batch_size']}" for r in reached]
    assert any(t["name"].startswith("critical batch size B≈") for t in figure["data"])


def test_the_server_says_where_it_listens(dashboard):
    assert f"on {dashboard.url}/dashboard/" in dashboard.stderr()
    assert "Warning" not in dashboard.stderr()  # loopback: no warning about the missing login


def test_a_refit_replaces_note_and_figure_while_the_server_runs(fitted_storage, tmp_path):
    storage = tmp_path / "tuner.journal"
    shutil.copy(fitted_storage, storage)
    server = start_dashboard(storage, tmp_path)
    try:
        p = tuner("fit", STUDY_NAME, "--storage", str(storage), cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        study = server.study()
        fit = load_study(storage).user_attrs["lr_batch_fit"]
        assert sorted(figures(study)) == sorted([FIGURE_ID, CRITICAL_FIGURE_ID])
        assert fit["verdict"] in study["note"]["body"]
        assert study["note"]["body"].count("## Learning rate × batch size") == 1
    finally:
        server.process.send_signal(signal.SIGINT)  # Ctrl+C: a clean stop, no traceback
        try:
            assert server.process.wait(timeout=10) == 0, server.stderr()
        finally:
            server.stop()
    assert "Traceback" not in server.stderr()


def test_listening_beyond_loopback_warns_that_there_is_no_login(fitted_storage, tmp_path):
    process, stderr_path, port = launch(fitted_storage, tmp_path, host="0.0.0.0")
    try:
        written = wait_for_stderr(process, stderr_path, "on http://")
    finally:
        stop_process(process)  # at once: nothing should stay reachable from outside
    assert f"Warning: optuna-dashboard has no login; anyone who can reach 0.0.0.0:{port}" in written


def busy_port_error(fitted_storage, tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        p = tuner("dashboard", "--storage", str(fitted_storage), "--port", str(port), cwd=tmp_path, timeout=60)
    return p, port


def test_a_port_in_use_exits_2(fitted_storage, tmp_path):
    p, port = busy_port_error(fitted_storage, tmp_path)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_missing_storage_exits_2_and_creates_nothing(tmp_path):
    missing = [tmp_path / "missing.journal", f"sqlite:///{tmp_path / 'missing.db'}"]
    for storage in missing:
        p = tuner("dashboard", "--storage", str(storage), "--port", str(free_port()), cwd=tmp_path, timeout=60)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr
        assert p.stderr.strip().splitlines()[-1].startswith("Error: no study storage at ")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_one_line_on_stderr(fitted_storage, tmp_path):
    p, _ = busy_port_error(fitted_storage, tmp_path)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = tuner("dashboard", "--storage", str(tmp_path / "missing.journal"), "--port", str(free_port()),
              cwd=tmp_path, timeout=60)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
