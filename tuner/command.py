"""Command workloads: a training script run as one process per trial.

    [workload]
    command = ["python", "train.py", "--lr", "{lr}", "--batch-size", "{batch_size}", "--seed", "{seed}"]
    epochs = 10        # any other key fills the {placeholder} of its name; {python} is the tuner's interpreter
    timeout = "30m"    # per trial (optional)

The script reports through ``tuner.client`` (a local socket whose descriptor it inherits) or with
one JSON object per line on standard output, ``{"tuner_report": {"step": 1024, "value": 0.53}}``
and, last, ``{"tuner_result": 0.51}``; other lines only go to the trial's log. Each report reaches
``Run.report`` exactly as a callable's would, so the pruner, divergence and the trial's records are
the same. A trial the pruner stops, a timeout or an interrupted worker end the script's whole
process group (SIGTERM, then SIGKILL after ``grace``): a launcher's children die with it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import optuna

from tuner.client import SOCKET_ENV
from tuner.errors import InputError
from tuner.spec import WorkloadTable, seconds
from tuner.trials import LOG

PLACEHOLDERS = ("lr", "batch_size", "seed", "trial", "python")  # besides the workload's own keys
LOGS = "tuner-logs"  # per-trial logs go to <cwd>/tuner-logs/<study>/trial-<number>.log
TAIL_LINES = 20  # the end of standard error a failed trial keeps
# a process stopped by a signal nobody here sent, or with one of these in its last words, ran out of memory
OUT_OF_MEMORY_WORDS = ("out of memory", "MemoryError", "OutOfMemoryError", "Cannot allocate memory")


class CommandFailed(Exception):
    """The script exited with an error (or reported nothing); the message ends with its standard error."""


class CommandOutOfMemory(MemoryError):
    """The script ran out of memory (its batch size is then infeasible, as for a callable)."""


class CommandTimeout(Exception):
    """The script ran longer than the workload's timeout."""


class Command:
    """``train(run)`` for a command workload: start the script, relay its reports, return its metric."""

    def __init__(self, table: WorkloadTable, spec_dir: str | Path | None = None) -> None:
        self.argv = list(table.command)
        self.options = table.options
        self.cwd = (Path(spec_dir or Path.cwd()) / (table.cwd or ".")).resolve()
        self.env = dict(table.env or {})
        self.timeout_text = table.timeout
        self.timeout = seconds(table.timeout) if table.timeout else math.inf
        self.grace = seconds(table.grace)
        self._check()

    def _check(self) -> None:
        """Bad input before anything is written: an unknown placeholder, a missing folder or program."""
        known = {*PLACEHOLDERS, *self.options}
        example = self._values(lr=0.01, batch_size=32, seed=0, trial=0)
        for i, arg in enumerate(self.argv):
            try:
                arg.format(**example)
            except KeyError as e:
                raise InputError(f"[workload] command[{i}]: unknown placeholder {{{e.args[0]}}} (known: "
                                 f"{', '.join(sorted(known))}; a [workload] key fills the placeholder of its "
                                 "name)") from None
            except (ValueError, IndexError, TypeError, AttributeError) as e:
                raise InputError(f"[workload] command[{i}] {arg!r}: cannot fill it in: {e} (write {{{{ and }}}} for "
                                 "a literal brace)") from None
        if not self.cwd.is_dir():
            raise InputError(f"[workload] cwd: no such folder {self.cwd}")
        program = self.argv[0].replace("{python}", sys.executable)
        if "{" in program:
            raise InputError("[workload] command[0]: the program may hold no placeholder but {python} (the "
                             "tuner's own interpreter)")
        path = {**os.environ, **self.env}.get("PATH")
        found = (self.cwd / program) if os.sep in program else shutil.which(program, path=path)
        if found is None or not Path(found).is_file() or not os.access(found, os.X_OK):
            where = f"in {self.cwd}" if os.sep in program else "on PATH"
            raise InputError(f"[workload] command: program {program!r} not found {where} (or not executable)")

    def _values(self, **trial) -> dict[str, Any]:
        return {**self.options, **trial, "python": sys.executable}

    def __call__(self, run) -> float:
        values = self._values(lr=run.lr, batch_size=run.batch_size, seed=run.seed,
                              trial=run.trial.number if run.trial is not None else 0)
        argv = [arg.format(**values) for arg in self.argv]
        log = self._log_path(run)
        if run.trial is not None:
            run.trial.set_user_attr(LOG, str(log))
        with _Process(argv, self.cwd, self.env, log) as process:
            return process.follow(run, self.timeout, self.timeout_text, self.grace)

    def _log_path(self, run) -> Path:
        study = run.trial.study.study_name if run.trial is not None else "no-study"
        number = run.trial.number if run.trial is not None else os.getpid()
        folder = self.cwd / LOGS / "".join(c if c.isalnum() or c in "-_." else "_" for c in study)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"trial-{number}.log"


class _Process:
    """One running script: its output copied to the log, its reports in order on one queue."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self._ours, theirs = socket.socketpair()
        self._log = log.open("w", encoding="utf-8", errors="replace")
        self._log_lock = threading.Lock()
        self._events: queue.Queue = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._signalled = False
        try:
            self._popen = subprocess.Popen(
                argv, cwd=cwd, env={**os.environ, **env, SOCKET_ENV: str(theirs.fileno())},
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(theirs.fileno(),), start_new_session=True)  # its own group: stopped as one
        except OSError as e:
            self._ours.close()
            self._log.close()
            raise CommandFailed(f"could not start {argv[0]!r}: {e}") from None
        finally:
            theirs.close()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._read_stdout, self._read_stderr,
                                                                           self._read_client, self._wait)]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> _Process:
        return self

    def __exit__(self, *exc) -> None:
        self.stop(grace=0.0 if self._popen.poll() is not None else 1.0)
        for thread in self._threads:
            thread.join(timeout=1.0)  # a grandchild that left the group may hold a pipe: do not wait on it
        self._ours.close()
        self._log.close()

    def follow(self, run, timeout: float, timeout_text: str | None, grace: float) -> float:
        """Relay reports to ``run`` until the script exits; its final metric. The pruner's decision
        (``optuna.TrialPruned`` from ``run.report``) stops the script and propagates."""
        deadline, final = time.monotonic() + timeout, None
        while True:
            try:
                wait = max(0.0, deadline - time.monotonic()) if math.isfinite(deadline) else None
                kind, payload, answer = self._events.get(timeout=wait)
            except queue.Empty:
                self.stop(grace)
                raise CommandTimeout(f"timeout after {timeout_text}") from None
            if kind == "report":
                try:
                    run.report(*payload)
                except optuna.TrialPruned:
                    self._stop_pruned(answer, grace)
                    raise
                if answer:
                    answer({"prune": False})
            elif kind == "result":
                final = payload
                if answer:
                    answer({})
            elif kind == "bad":
                self.stop(grace)
                raise CommandFailed(payload)
            else:  # exited
                return self._outcome(payload, final, run)

    def _outcome(self, code: int, final: float | None, run) -> float:
        tail = "".join(self._stderr_tail).strip()
        if code != 0:
            killed = code == -signal.SIGKILL and not self._signalled  # the kernel's OOM killer
            if killed or any(words in tail for words in OUT_OF_MEMORY_WORDS):
                raise CommandOutOfMemory(f"the script ran out of memory (exit {code}): {tail[-500:]}")
            raise CommandFailed(f"the script exited with code {code}: {tail[-800:] or '(no standard error)'}")
        if final is not None:
            return final
        if run.reports:
            return run.reports[-1][1]
        raise CommandFailed('the script exited without a metric: print {"tuner_result": value} or call '
                            "tuner.client.result(value)")

    def _stop_pruned(self, answer, grace: float) -> None:
        """A client-reporting script is told and raises; a JSON-lines one gets SIGTERM at once."""
        if answer:  # it raises optuna.TrialPruned; one that carries on is stopped after ``grace``
            answer({"prune": True})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=grace)
            grace = 0.0
        self.stop(grace)

    def stop(self, grace: float) -> None:
        """SIGTERM to the script's process group, SIGKILL to what is left after ``grace`` seconds."""
        self._signal(signal.SIGTERM)
        end = time.monotonic() + grace
        while self._popen.poll() is None and time.monotonic() < end:
            time.sleep(0.02)
        self._signal(signal.SIGKILL)  # the leader, and any child still in its group
        self._popen.wait()

    def _signal(self, signum: int) -> None:
        self._signalled = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signum)

    # --- the reading threads -------------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        for line in _lines(self._popen.stdout):
            self._write(line)
            message = _message(line)
            if message is not None:
                self._events.put((*_event(message), None))

    def _read_stderr(self) -> None:
        for line in _lines(self._popen.stderr):
            self._write(line)
            self._stderr_tail.append(line)

    def _read_client(self) -> None:
        reader = self._ours.makefile("r", encoding="utf-8")

        def answer(reply: dict) -> None:
            with contextlib.suppress(OSError):
                self._ours.sendall((json.dumps(reply) + "\n").encode())

        with contextlib.suppress(OSError, ValueError):
            for line in reader:
                message = _message(line)
                self._events.put((*_event(message), answer) if message is not None
                                 else ("bad", f"tuner.client sent {line.strip()[:200]!r}", None))

    def _wait(self) -> None:
        code = self._popen.wait()
        for thread in self._threads[:2]:  # what the script printed last comes before its exit
            thread.join(timeout=5.0)
        self._events.put(("exit", code, None))

    def _write(self, line: str) -> None:
        with self._log_lock:
            self._log.write(line)
            self._log.flush()


def _lines(stream):
    return iter(lambda: stream.readline().decode("utf-8", errors="replace"), "")


def _message(line: str) -> dict | None:
    """A line's report or result; None for any other line (a log line, a progress bar, garbage)."""
    if "tuner_" not in line:
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) and ("tuner_report" in message or "tuner_result" in message) else None


def _event(message: dict) -> tuple[str, Any]:
    """("report", (step, value)), ("result", value), or ("bad", why) for a report the tuner cannot read."""
    if "tuner_result" in message:
        value = _number(message["tuner_result"])
        return ("result", value) if value is not None else ("bad", f"tuner_result must be a number: {message}")
    report = message["tuner_report"]
    step = report.get("step") if isinstance(report, dict) else None
    value = _number(report.get("value")) if isinstance(report, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or value is None:
        return "bad", f'a report needs {{"step": samples seen (an integer >= 0), "value": a number}}: {message}'
    return "report", (step, value)


def _number(value: Any) -> float | None:
    """A number, or NaN/inf as JSON's literals or as text ("nan", "inf"): a diverged run."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(value.strip().lower().replace("infinity", "inf"))
    return None
