"""What a command workload costs per trial over the same training as a callable.

    python -m benchmarks.command_overhead                  # trials of 1 s and 10 s, about 5 minutes
    python -m benchmarks.command_overhead --seconds 1 --repeats 1

One training (a CPU loop of a fixed number of iterations, four reports) runs three ways through
`tuner run`'s own code (``tuner.runner.run``, journal file, no pruning): as a callable in the
tuner's process, as a script reporting through ``tuner.client``, and as a script printing JSON
lines. The same script run directly, outside the tuner (where the client does nothing), is the
user's own cost: its start-up and its training, paid with or without the tuner (the two scripts
differ by a few percent there already: CPython runs the same loop at slightly different speeds in
different processes). What a trial under the tuner takes beyond that is the tuner's: starting the
process, relaying reports, the log. Configurations run interleaved, ``--repeats`` times, and each
figure is a median.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna

from tuner.runner import run

TRAINING = '''
import time

def busy(iterations):
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total

def train_with(report, iterations, lr):
    for k in range(1, 5):
        busy(iterations // 4)
        report(k * 1000, 1.0 / k + lr)
    return 0.25 + lr

def train(run):
    return train_with(run.report, run.options["iterations"], run.lr)
'''

CLIENT = '''
import sys
from training import train_with
from tuner import client
client.result(train_with(client.report, int(sys.argv[1]), float(sys.argv[2])))
'''

LINES = '''
import json, sys
from training import train_with

def report(step, value):
    print(json.dumps({"tuner_report": {"step": step, "value": value}}), flush=True)

print(json.dumps({"tuner_result": train_with(report, int(sys.argv[1]), float(sys.argv[2]))}))
'''

SCRIPTS = {"client": "client_script.py", "JSON lines": "lines_script.py"}


def calibrate(seconds: float) -> int:
    """Iterations of the busy loop that take ``seconds`` here."""
    namespace: dict = {}
    exec(TRAINING, namespace)  # noqa: S102 - our own constant
    start, probe = time.perf_counter(), 2_000_000
    namespace["busy"](probe)
    return int(probe * seconds / (time.perf_counter() - start))


def study_file(folder: Path, name: str, workload: str, n_trials: int) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""\
        [study]
        name = "{name}"
        n_trials = {n_trials}
        [search]
        lr = [0.001, 0.1]
        batch_sizes = [32, 64]
        pruner = "none"
        [workload]
        {workload}
        """))
    return path


def per_trial(folder: Path, kind: str, iterations: int, n_trials: int, round_: int) -> float:
    name = f"{kind.replace(' ', '-')}-{iterations}-{round_}"
    if kind == "callable":
        workload = f'target = "training:train"\niterations = {iterations}'
    else:
        workload = f'command = ["{{python}}", "{SCRIPTS[kind]}", "{iterations}", "{{lr}}"]'
    start = time.perf_counter()
    run(study_file(folder, name, workload, n_trials), str(folder / "bench.journal"), fit=False, quiet=True)
    return (time.perf_counter() - start) / n_trials


def direct(folder: Path, kind: str, iterations: int) -> float:
    """The script run on its own, as the user would without the tuner."""
    start = time.perf_counter()
    subprocess.run([sys.executable, SCRIPTS[kind], str(iterations), "0.01"], cwd=folder, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.command_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", default="1,10", help="trial lengths to measure (comma-separated)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tuner-command-") as tmp:
        folder = Path(tmp)
        (folder / "training.py").write_text(TRAINING)
        (folder / "client_script.py").write_text(CLIENT)
        (folder / "lines_script.py").write_text(LINES)
        sys.path.insert(0, str(folder))
        per_trial(folder, "callable", 1000, 4, -1)  # warm up: the first run imports the search and the storage
        for seconds in (float(s) for s in args.seconds.split(",")):
            iterations, n_trials = calibrate(seconds), max(2, int(round(20 / seconds)))
            times: dict[str, list[float]] = {"callable": [], "client": [], "JSON lines": []}
            alone: dict[str, list[float]] = {kind: [] for kind in SCRIPTS}
            for round_ in range(args.repeats):
                for kind in times:
                    times[kind].append(per_trial(folder, kind, iterations, n_trials, round_))
                    print(f"  {seconds:g} s trials, {kind}, round {round_ + 1}: {times[kind][-1]:.3f} s/trial",
                          file=sys.stderr)
                for kind in SCRIPTS:
                    alone[kind] += [direct(folder, kind, iterations) for _ in range(n_trials)]
            base = statistics.median(times["callable"])
            for kind in SCRIPTS:
                total, own = statistics.median(times[kind]), statistics.median(alone[kind])
                rows.append((seconds, kind, base, own, total, (total - own) / own))
    print("\n| trial | reporting | callable under the tuner, s | script alone, s | script under the tuner, s | "
          "the tuner's cost over the script alone | target (10 s trials) |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for seconds, kind, base, own, total, overhead in rows:
        target = ("≤ 5%: " + ("met" if overhead <= 0.05 else "**missed**")) if seconds >= 10 else "-"
        print(f"| {seconds:g} s | {kind} | {base:.3f} | {own:.3f} | {total:.3f} | {100 * overhead:+.1f}% | {target} |")
    print(f"\n- Produced by `python -m benchmarks.command_overhead --seconds {args.seconds} --repeats {args.repeats}` "
          "(medians).")


if __name__ == "__main__":
    main()
