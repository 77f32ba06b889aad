"""The shipped studies end to end: wall time, peak memory, and the rule each one measures.

    python -m benchmarks.shipped_studies                       # digits-mlp-sgd and charlm-adamw, about 8 minutes
    python -m benchmarks.shipped_studies --studies charlm-adamw --seeds 0,1

Each study file of ``studies/`` runs as a user runs it (``tuner run studies/NAME.toml`` in a process
of its own, on a fresh journal file, the file's own trial count), once per study seed. The table
gives its wall time, the process's peak resident memory, the recommended rule and the power law's
exponent α with its 95% interval: the fitted answer to "how does the optimal learning rate grow with
the batch size" on each workload. Adam's optimum is expected to grow more slowly than SGD's (about
√B in the noise-dominated regime, Malladi et al. 2022, against about B for SGD), and may fall past a
peak (the surge rule).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import REPO, log

STUDIES = ("digits-mlp-sgd", "charlm-adamw")

# runs the CLI as `tuner run` does, then prints this process's peak memory (Linux: kilobytes)
_CHILD = """
import resource, sys
from tuner.cli import main
sys.argv[0] = "tuner"
try:
    main()
finally:
    print("peak_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def run_study(name: str, seed: int, folder: Path) -> dict:
    """One shipped study with the given seed, on a fresh journal file; what it cost and measured."""
    from tuner.fit import load_fit
    from tuner.storage import load_study

    source = REPO / "studies" / f"{name}.toml"
    study_file = folder / f"{name}-{seed}.toml"
    study_file.write_text(re.sub(r"(?m)^seed = \d+", f"seed = {seed}", source.read_text()))
    journal = folder / f"{name}-{seed}.journal"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, "run", str(study_file), "--storage", str(journal)],
                          cwd=folder, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name} (seed {seed}) failed:\n{done.stderr[-3000:]}")
    peak_kb = int(re.findall(r"peak_kb (\d+)", done.stderr)[-1])
    fit = load_fit(load_study(name, str(journal)))
    power = fit.rules["power"]
    return {"study": name, "seed": seed, "seconds": seconds, "peak_mb": peak_kb / 1024,
            "recommended": fit.recommended, "alpha": power.alpha, "alpha_ci": list(power.alpha_ci),
            "formula": fit.rules[fit.recommended].formula(digits=3), "verdict": fit.verdict}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shipped_studies",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--studies", default=",".join(STUDIES), help="comma-separated names of studies/*.toml")
    parser.add_argument("--seeds", default="0", help="study seeds, comma-separated (default: 0, as shipped)")
    parser.add_argument("--json", type=Path, help="also write every run as JSON lines here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tuner-shipped-") as tmp:
        for name in args.studies.split(","):
            for seed in map(int, args.seeds.split(",")):
                rows.append(run_study(name, seed, Path(tmp)))
                log(f"  {name} seed {seed}: {rows[-1]['seconds']:.0f} s, {rows[-1]['recommended']}")
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("| study | seed | wall time | peak memory | recommended rule | α (95% CI) |")
    print("|---|---:|---:|---:|---|---|")
    for r in rows:
        low, high = r["alpha_ci"]
        print(f"| {r['study']} | {r['seed']} | {r['seconds'] / 60:.1f} min | {r['peak_mb']:.0f} MB | "
              f"{r['recommended']}: `{r['formula']}` | {r['alpha']:.2f} ({low:.2f} to {high:.2f}) |")
    print()
    for r in rows:
        print(f"- {r['study']} (seed {r['seed']}): {r['verdict']}")
    command = " ".join(["python -m benchmarks.shipped_studies", *(sys.argv[1:] if argv is None else argv)])
    print(f"\n- Produced by `{command}` on a machine with {_cores()} cores.")


def _cores() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
