"""The built-in ``digits-mlp`` workload: an MLP on scikit-learn's 8x8 handwritten digits.

The 1,797 images ship with scikit-learn (no download). One split serves every trial (``split_seed``,
never ``run.seed``): 1,536 = 3 x 512 training images, so every power-of-two batch size up to 512
sees each image once an epoch and the budget in samples is equal at all of them; the other 261 are
held out. Pixels are standardised with training statistics. ``train_torch`` does the training;
the metric is the validation cross-entropy.

    >>> from tuner import Run
    >>> from tuner.workloads.digits import train
    >>> loss = train(Run(lr=0.1, batch_size=32, options={"epochs": 5}))
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from tuner.spec import PositiveInt
from tuner.workloads.trainer import TrainerOptions, train_torch

if TYPE_CHECKING:
    from torch import nn

N_IMAGES = 1797


class Options(TrainerOptions):
    """``[workload]`` options of ``digits-mlp``: the trainer's, and the model's and data's below."""

    # One thread: this model's ops are too small to split, and a second thread only contends (a
    # 30-epoch study on a 2-core machine: 35 s on one thread, 53-76 s on torch's default two).
    threads: PositiveInt | None = Field(1, description="torch CPU threads; None leaves torch's default")
    hidden: list[PositiveInt] = Field([64], description="hidden layer widths; [] is logistic regression")
    train_size: int = Field(1536, gt=0, lt=N_IMAGES,
                            description=f"training images; the rest of the {N_IMAGES} are held out")
    split_seed: int = Field(0, ge=0, description="seed of the train/validation split, the same for every trial")


def train(run) -> float:
    """Train the MLP at run.lr and run.batch_size; report and return the validation loss."""
    o = Options.model_validate(dict(run.options))
    train_data, valid_data = load_data(o.train_size, o.split_seed)
    return train_torch(run, lambda: mlp(o.hidden), train_data, valid_data)


def mlp(hidden: list[int]) -> nn.Module:
    """64 pixels -> ReLU layers of the given widths -> 10 class logits."""
    from torch import nn

    layers, width = [], 64
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, 10))


@lru_cache(maxsize=4)
def load_data(train_size: int = 1536, split_seed: int = 0):
    """((X_train, y_train), (X_valid, y_valid)): float32 standardised pixels and int64 labels."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(split_seed).permutation(len(images))
    train, valid = order[:train_size], order[train_size:]
    mean, std = images[train].mean(axis=0), images[train].std(axis=0)
    std[std == 0] = 1.0  # pixels that are blank in every training image
    X = ((images - mean) / std).astype(np.float32)
    y = labels.astype(np.int64)
    return (X[train], y[train]), (X[valid], y[valid])
