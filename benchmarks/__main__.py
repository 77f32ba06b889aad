"""Run the benchmarks and write benchmarks/RESULTS.md (see benchmarks/__init__.py).

    python -m benchmarks                  # everything, about 17 minutes on 2 cores
    python -m benchmarks --quick          # tiny budgets, 1 seed, no PostgreSQL: checks that it all runs
    python -m benchmarks --only accuracy --seeds 20
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import accuracy, overhead, panel, scaling, shapes
from benchmarks.report import REPO, Section, header, log, machine, markdown_table

BENCHMARKS = ["accuracy", "overhead", "scaling", "panel", "shapes"]


def full(name: str, seeds: int, postgres: bool) -> Section:
    if name == "accuracy":
        return accuracy.run(seeds=seeds)
    if name == "overhead":
        return overhead.run()
    if name == "panel":
        return panel.run(command="python -m benchmarks (panel)")
    if name == "shapes":
        return shapes.run_section(command="python -m benchmarks (shapes)")
    return scaling.run(postgres=postgres)


def quick(name: str, seeds: int, postgres: bool) -> Section:
    """The same code paths with budgets small enough for a smoke test."""
    if name == "accuracy":
        return accuracy.run(seeds=seeds, budgets=(16,), tuner_budgets=())
    if name == "overhead":
        return overhead.run(n_trials=8, seconds=0.01, repeats=1, trainer_repeats=1, trainer_steps=20,
                            trainer_sizes=[8, 64])
    if name == "panel":  # no baseline: a shallow clone may not hold its commit
        return panel.run(only=["quadratic", "valley-sqrt-5%", "cnn-adam-accuracy", "cnn-adam-accuracy-replay"],
                         seeds=1, methods=("tuner", "optuna"), n_trials=18,
                         command="python -m benchmarks --quick (panel)")
    if name == "shapes":
        return shapes.run_section(shapes=3, seeds=1, command="python -m benchmarks --quick (shapes)")
    return scaling.run(n_trials=8, sleep=0.0, workers=(1, 2), storages=["journal file"], fit_sizes=(100,),
                       fit_repeats=1, postgres=postgres)


def document(command: str, started: datetime, seconds: float, info: dict, sections: list[Section]) -> str:
    goals = [g for s in sections for g in s.goals]
    summary = markdown_table(["goal", "target", "measured", "status"],
                             [[g.name, g.target, g.measured, g.status] for g in goals])
    parts = [header(command, started, seconds, info), "## Goals", summary, *(s.markdown(goals=False) for s in sections)]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets and 1 seed: a smoke run (seconds)")
    parser.add_argument("--seeds", type=int, help="seeds per accuracy configuration (default 30; --quick: 1)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL in the scaling benchmark")
    parser.add_argument("-o", "--output", type=Path, default=REPO / "benchmarks" / "RESULTS.md",
                        help="where to write the results (default benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else BENCHMARKS
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"--only: unknown benchmark {', '.join(sorted(unknown))} (known: {', '.join(BENCHMARKS)})")
    # 30: a batch size's worst error swings from ×1.2 to ×5 between seeds, which moves a
    # 10-seed median by about ×1.3
    seeds = args.seeds or (1 if args.quick else 30)
    postgres = not (args.quick or args.no_postgres)
    command = " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)])
    started, start, info = datetime.now(UTC), time.perf_counter(), machine()
    sections = []
    for name in names:
        log(f"{name} ...")
        section = (quick if args.quick else full)(name, seeds, postgres)
        sections.append(section)
        print(section.markdown() + "\n", flush=True)
        # written after every benchmark, so that a long run's finished tables survive an interruption
        args.output.write_text(document(command, started, time.perf_counter() - start, info, sections))
    log(f"wrote {args.output} in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
