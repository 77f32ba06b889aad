"""Dense grids of runs: the truth for the panel's real workloads, stored as data.

    python -m benchmarks.grids cnn-adam --seeds 24 --jobs 2             # about 19 minutes on 2 cores
    python -m benchmarks.grids mlp-momentum --per-octave 4 --jobs 2    # about 35 minutes on 2 cores

Every batch size is run at every learning rate of a log grid (``--per-octave`` learning rates per
doubling over the workload's search range: 2 puts them ×√2 apart) with each seed, without pruning,
and the final metrics are written to
``benchmarks/data/<name>.json``: ``lrs``, ``seeds``, ``runs[batch_size][lr index][seed index]`` =
``{"loss", "accuracy", "diverged"}``, and the untrained model's metrics (chance level). Slow (minutes
per workload on two cores) and done once; the panel only reads the files.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime

import numpy as np

from benchmarks.panel_workloads import CNN_LR, CNN_SIZES, DATA, MLP_LR, MLP_OPTIONS, MLP_SIZES, cnn_run
from benchmarks.report import log, machine

PER_OCTAVE = 2  # learning rates per doubling: ×√2 apart
# ten balanced classes: what a model that learned nothing scores
UNTRAINED = {"loss": math.log(10.0), "accuracy": 0.1}


def lr_grid(low: float, high: float, per_octave: int = PER_OCTAVE) -> list[float]:
    step = 2.0 ** (1.0 / per_octave)
    count = int(math.floor(math.log(high / low) / math.log(step) + 1e-9)) + 1
    return [float(low * step**k) for k in range(count)]


def _cnn(lr: float, batch_size: int, seed: int) -> dict:
    try:
        loss, accuracy = cnn_run(lr, batch_size, seed)
    except FloatingPointError:
        return {"loss": None, "accuracy": None, "diverged": True}
    return {"loss": loss, "accuracy": accuracy, "diverged": False}


def _mlp(lr: float, batch_size: int, seed: int) -> dict:
    from tuner.workload import Run
    from tuner.workloads import digits

    run = Run(lr=lr, batch_size=batch_size, seed=seed, options=MLP_OPTIONS)
    try:
        loss = digits.train(run)
    except FloatingPointError:
        return {"loss": None, "accuracy": None, "diverged": True}
    return {"loss": loss, "accuracy": None, "diverged": False}


GRIDS = {"cnn-adam": (_cnn, CNN_SIZES, CNN_LR), "mlp-momentum": (_mlp, MLP_SIZES, MLP_LR)}


def _one(job):
    name, lr, batch_size, seed = job
    return GRIDS[name][0](lr, batch_size, seed)


def make_grid(name: str, seeds: int, jobs: int, per_octave: int = PER_OCTAVE) -> dict:
    _, sizes, (low, high) = GRIDS[name]
    lrs = lr_grid(low, high, per_octave)
    work = [(name, lr, b, s) for b in sizes for lr in lrs for s in range(seeds)]
    log(f"grid {name}: {len(sizes)} batch sizes × {len(lrs)} learning rates × {seeds} seeds = {len(work)} runs")
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs) as pool:
        results = []
        for i, result in enumerate(pool.map(_one, work, chunksize=4), start=1):
            results.append(result)
            if i % 50 == 0 or i == len(work):
                log(f"  {i}/{len(work)} runs, {time.perf_counter() - start:.0f} s")
    runs = np.asarray(results, dtype=object).reshape(len(sizes), len(lrs), seeds)
    return {
        "name": name, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {k: machine()[k] for k in ("CPU", "torch", "commit")},
        "seconds": round(time.perf_counter() - start),
        "lrs": lrs, "seeds": list(range(seeds)), "untrained": UNTRAINED,
        "runs": {str(b): [[dict(r) for r in per_lr] for per_lr in runs[i]] for i, b in enumerate(sizes)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grids", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(GRIDS))
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--per-octave", type=int, default=PER_OCTAVE,
                        help="learning rates per doubling (default 2: ×√2 apart); where the mean jumps "
                             "between two of them (a blow-up edge), the truth's linear interpolation "
                             "prices every learning rate between as partly blown up")
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    for name in args.names:
        grid = make_grid(name, args.seeds, args.jobs, args.per_octave)
        (DATA / f"{name}.json").write_text(json.dumps(grid, separators=(",", ":")) + "\n")
        log(f"wrote {DATA / f'{name}.json'}")


if __name__ == "__main__":
    main()
