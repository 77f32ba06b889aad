"""Report from a training script that the tuner runs as a command workload (standard library only).

    from tuner import client

    for epoch in range(epochs):
        train_one_epoch()
        client.report(samples_seen, validation_loss)  # raises optuna.TrialPruned when it should stop
    client.result(validation_loss)                    # the final metric

``report(step, value)``: the metric after ``step`` training samples (so that batch sizes compare at
equal data); it waits for the tuner's decision and raises ``optuna.TrialPruned`` when the trial
should stop (catch it to clean up, then exit). ``should_prune()``: that decision again, for a loop
that checks it elsewhere. ``result(value)``: the final metric (without it, the last report is).
NaN or inf means the run diverged. Outside the tuner every call does nothing, so the same script
runs on its own.

The tuner hands the trial one end of a local socket (its file descriptor in ``TUNER_SOCKET_FD``);
one JSON object per line goes each way. The script needs no database and no credentials.
"""
from __future__ import annotations

import json
import math
import os
import socket

SOCKET_ENV = "TUNER_SOCKET_FD"

_channel: tuple[socket.socket, object] | None = None
_pruned = False


def report(step: int, value: float) -> None:
    """The metric after ``step`` training samples; raises ``optuna.TrialPruned`` when the trial
    should stop. A no-op outside the tuner."""
    global _pruned
    answer = _ask({"tuner_report": {"step": int(step), "value": _finite_or_text(value)}})
    _pruned = bool(answer and answer.get("prune"))
    if _pruned:
        raise _trial_pruned()(f"pruned by the tuner after {int(step)} samples")


def should_prune() -> bool:
    """Whether the tuner decided, at the last report, that this trial should stop."""
    return _pruned


def result(value: float) -> None:
    """The final metric. A no-op outside the tuner."""
    _ask({"tuner_result": _finite_or_text(value)})


def _ask(message: dict) -> dict | None:
    channel = _connect()
    if channel is None:
        return None
    sock, reader = channel
    sock.sendall((json.dumps(message) + "\n").encode())
    line = reader.readline()
    if not line:  # the tuner is gone (its worker was stopped): nothing will record this run
        raise SystemExit("tuner.client: the tuner that runs this trial went away")
    return json.loads(line)


def _connect() -> tuple[socket.socket, object] | None:
    global _channel
    if _channel is None and os.environ.get(SOCKET_ENV):
        sock = socket.socket(fileno=int(os.environ[SOCKET_ENV]))
        _channel = (sock, sock.makefile("r", encoding="utf-8"))
    return _channel


def _finite_or_text(value: float) -> float | str:
    """JSON has no NaN or inf: they travel as text ("nan", "inf"), which the tuner reads as diverged."""
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _trial_pruned() -> type[Exception]:
    """optuna.TrialPruned, imported only when a trial is pruned (the client itself starts fast)."""
    try:
        from optuna import TrialPruned
    except ImportError:  # the script runs where optuna is not installed
        return RuntimeError
    return TrialPruned
