"""A plain PyTorch training script that the tuner runs as it is, one process per trial.

    tuner run examples/script-study.toml            # from the repository root

It takes its learning rate, batch size and seed on the command line, as most scripts do, and adds
two lines for the tuner: ``client.report`` after each evaluation (the pruner may stop the run there)
and ``client.result`` at the end. Run alone (``python examples/train_script.py --lr 0.1``), the two
calls do nothing.
"""
import argparse

import torch
from sklearn.datasets import load_digits

from tuner import client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    images, labels = load_digits(return_X_y=True)
    x, y = torch.tensor(images / 16.0, dtype=torch.float32), torch.tensor(labels)
    x_train, y_train, x_valid, y_valid = x[:1400], y[:1400], x[1400:], y[1400:]
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    seen = 0
    for _ in range(args.epochs):
        order = torch.randperm(len(x_train))
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            batch = order[start:start + args.batch_size]
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += args.batch_size
        with torch.no_grad():
            valid_loss = torch.nn.functional.cross_entropy(model(x_valid), y_valid).item()
        print(f"samples {seen}: validation loss {valid_loss:.4f}")
        client.report(seen, valid_loss)  # NaN or inf: the tuner records the run as diverged
    client.result(valid_loss)


if __name__ == "__main__":
    main()
