"""Training throughput of ``train_torch`` against a bare hand-written PyTorch loop.

Both train the digits-mlp MLP on the same data for the same steps and evaluate the same number of
times; each timing covers a whole run (model and optimizer built, data read, trained, evaluated),
the two alternate, and each one's fastest run is shown (as timeit does: load from other processes
only ever adds time). The goal is a ratio of at least 0.95 at every batch size.

    python benchmarks/trainer_throughput.py [--steps 1000] [--repeats 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import math
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run (default 1000)")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each loop per batch size (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as digits-mlp)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data()
    for train in (trainer, bare_loop):  # first calls pay for lazy imports and allocations
        train(BATCH_SIZES[0], args.steps, *data)
    print(f"digits-mlp, hidden {HIDDEN}, {args.steps} steps, {EVALS} evals, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}")
    print(f"{'batch':>5} {'trainer/s':>10} {'bare/s':>10} {'ratio':>6}")
    for batch_size in BATCH_SIZES:
        ours, bare = [], []
        for i in range(args.repeats):  # alternating, so that neither always runs first
            for rates, train in [(ours, trainer), (bare, bare_loop)][::1 if i % 2 else -1]:
                rates.append(samples_per_second(train, batch_size, args.steps, data))
        ours, bare = max(ours), max(bare)  # the fastest run: other processes only slow runs down
        print(f"{batch_size:>5} {ours:>10,.0f} {bare:>10,.0f} {ours / bare:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
