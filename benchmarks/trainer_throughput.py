"""Training throughput of ``train_torch`` against a bare hand-written PyTorch loop.

Both train the digits-mlp MLP on the same data for the same steps and evaluate the same number of
times; each timing covers a whole run (model and optimizer built, data read, trained, evaluated),
the two alternate, and each one's fastest run is shown (as timeit does: load from other processes
only ever adds time), with the median ratio of adjacent runs (a pair shares the machine's load, so
this ratio is the steadier one on a busy machine). The goal is a ratio of at least 0.95 at every
batch size.

    python benchmarks/trainer_throughput.py [--steps 1000] [--repeats 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass

import torch

from tuner.workload import Run
from tuner.workloads.digits import load_data, mlp
from tuner.workloads.trainer import train_torch

BATCH_SIZES = [8, 16, 32, 64, 128, 256, 512]
HIDDEN = [64]
EVALS = 8
LR = 0.1


def bare_loop(batch_size: int, steps: int, train_data, valid_data) -> float:
    """What one writes by hand: shuffle each epoch, index batches, step, evaluate EVALS times."""
    X, y = (torch.as_tensor(a) for a in train_data)
    X_valid, y_valid = (torch.as_tensor(a) for a in valid_data)
    torch.manual_seed(0)
    net = mlp(HIDDEN)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(0)
    per_epoch, eval_every = len(X) // batch_size, steps // EVALS
    for step in range(steps):
        start = step % per_epoch * batch_size
        if start == 0:
            order = torch.randperm(len(X), generator=generator)
        batch = order[start:start + batch_size]
        loss = torch.nn.functional.cross_entropy(net(X[batch]), y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % eval_every == 0:
            with torch.inference_mode():
                valid_loss = torch.nn.functional.cross_entropy(net(X_valid), y_valid).item()
            if not math.isfinite(loss.item() + valid_loss):
                raise FloatingPointError("diverged")
    return valid_loss


def trainer(batch_size: int, steps: int, train_data, valid_data) -> float:
    run = Run(lr=LR, batch_size=batch_size, options={"steps": steps, "evals": EVALS})
    return train_torch(run, lambda: mlp(HIDDEN), train_data, valid_data)


def samples_per_second(train, batch_size: int, steps: int, data) -> float:
    start = time.perf_counter()
    train(batch_size, steps, *data)
    return steps * batch_size / (time.perf_counter() - start)


@dataclass
class Throughput:
    batch_size: int
    trainer: float  # samples/s, the fastest run
    bare: float
    paired: float   # median over adjacent pairs of runs of trainer / bare samples/s


def measure(steps: int = 1000, repeats: int = 7, threads: int = 1, sizes=BATCH_SIZES, on_row=None) -> list[Throughput]:
    torch.set_num_threads(threads)
    data = load_data()
    for train in (trainer, bare_loop):  # first calls pay for lazy imports and allocations
        train(sizes[0], steps, *data)
    rows = []
    for batch_size in sizes:
        ours, bare = [], []
        for i in range(repeats):  # alternating, so that neither always runs first
            for rates, train in [(ours, trainer), (bare, bare_loop)][::1 if i % 2 else -1]:
                rates.append(samples_per_second(train, batch_size, steps, data))
        paired = statistics.median(o / b for o, b in zip(ours, bare))
        rows.append(Throughput(batch_size, max(ours), max(bare), paired))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def fixed_cost(batch_size: int = 8, steps: int = EVALS, repeats: int = 31) -> float:
    """Seconds a very short run of the trainer takes beyond the bare loop's (median over pairs of runs):
    its cost per run rather than per step, which only runs of a few dozen steps notice."""
    data = load_data()
    extra = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer(batch_size, steps, *data)
        middle = time.perf_counter()
        bare_loop(batch_size, steps, *data)
        extra.append((middle - start) - (time.perf_counter() - middle))
    return statistics.median(extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run (default 1000)")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each loop per batch size (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as digits-mlp)")
    args = parser.parse_args()
    print(f"digits-mlp, hidden {HIDDEN}, {args.steps} steps, {EVALS} evals, {args.threads} threads, "
          f"best of {args.repeats}")
    print(f"{'batch':>5} {'trainer/s':>10} {'bare/s':>10} {'ratio':>6} {'paired':>6}")

    def show(r: Throughput) -> None:
        print(f"{r.batch_size:>5} {r.trainer:>10,.0f} {r.bare:>10,.0f} {r.trainer / r.bare:>6.3f} {r.paired:>6.3f}",
              flush=True)

    measure(args.steps, args.repeats, args.threads, on_row=show)


if __name__ == "__main__":
    main()
