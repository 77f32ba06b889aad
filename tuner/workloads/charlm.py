"""The built-in ``charlm`` workload: a small decoder-only transformer trained on characters, with
AdamW, warm-up and cosine decay (the recipe most models are trained with today).

The text ships with Python (no download): the reference pages of ``pydoc_data.topics`` (about
470,000 characters of English prose and code). Its first 90% trains and the rest is held out; from
each, windows of ``context + 1`` characters are cut once at offsets drawn with ``split_seed``, the
same for every trial. The budget is ``epochs`` over the ``sequences`` training windows: the same
sequences at every batch size. ``train_torch`` does the training; the metric is the validation
cross-entropy per character (nats; ln of the vocabulary, about 4.6, for a model that learned
nothing).

    >>> from tuner import Run
    >>> from tuner.workloads.charlm import train
    >>> loss = train(Run(lr=3e-3, batch_size=32, options={"sequences": 256, "epochs": 1}))
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from tuner.spec import PositiveInt
from tuner.workloads.trainer import TrainerOptions, train_torch

if TYPE_CHECKING:
    import torch
    from torch import nn

TRAIN_SHARE = 0.9


class Options(TrainerOptions):
    """``[workload]`` options of ``charlm``: the trainer's (with a transformer's defaults), the model's
    and the data's."""

    optimizer: Literal["sgd", "momentum", "adam", "adamw"] = Field("adamw", description="default adamw")
    weight_decay: float = Field(0.01, ge=0, allow_inf_nan=False, description="AdamW's decoupled weight decay")
    schedule: Literal["constant", "cosine", "linear"] = Field("cosine", description="default cosine decay")
    warmup: float | int = Field(0.05, description="default: the first 5% of the steps")
    clip: float | None = Field(1.0, gt=0, allow_inf_nan=False, description="gradient norm clipping (default 1)")
    epochs: PositiveInt | None = Field(2, description="passes over the training sequences (default 2)")
    metric: Literal["loss"] = Field("loss", description="the validation cross-entropy per character")
    threads: PositiveInt | None = Field(1, description="torch CPU threads; None leaves torch's default")
    layers: PositiveInt = Field(2, description="transformer blocks")
    width: PositiveInt = Field(64, description="model width (a multiple of heads)")
    heads: PositiveInt = Field(4, description="attention heads")
    context: PositiveInt = Field(64, description="characters a sequence predicts")
    sequences: PositiveInt = Field(1024, description="training sequences (the budget is epochs over them)")
    valid_sequences: PositiveInt = Field(256, description="held-out sequences the metric is measured on")
    split_seed: int = Field(0, ge=0, description="seed of the windows cut from the text, the same for every trial")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Options:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        return self


def train(run) -> float:
    """Train the transformer at run.lr (the peak of the schedule) and run.batch_size; report and
    return the validation loss per character."""
    from torch.nn import functional

    o = Options.model_validate(dict(run.options))
    train_data, valid_data, vocabulary = load_data(o.context, o.sequences, o.valid_sequences, o.split_seed)
    # the trainer's options with this workload's defaults (its metric is the loss, its default)
    trainer = {k: v for k, v in o.model_dump().items() if k in TrainerOptions.model_fields and k != "metric"}

    def loss(logits, targets):  # every position predicts the next character
        return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    return train_torch(run, lambda: transformer(vocabulary, o.context, o.width, o.heads, o.layers),
                       train_data, valid_data, loss=loss, **trainer)


def transformer(vocabulary: int, context: int, width: int, heads: int, layers: int) -> nn.Module:
    """Characters -> token and position embeddings -> pre-norm causal self-attention blocks -> logits."""
    import torch
    from torch import nn

    class CharTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens, self.positions = nn.Embedding(vocabulary, width), nn.Embedding(context, width)
            block = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
            self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocabulary)
            self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.tokens(x) + self.positions(torch.arange(x.shape[1], device=x.device))
            return self.head(self.norm(self.blocks(h, mask=self.causal, is_causal=True)))

    return CharTransformer()


@lru_cache(maxsize=4)
def load_data(context: int, sequences: int, valid_sequences: int, split_seed: int):
    """((inputs, targets) to train, the same held out, vocabulary size): int64 arrays of windows,
    targets the inputs shifted by one character."""
    codes, vocabulary = _text_codes()
    cut = int(TRAIN_SHARE * len(codes))
    rng = np.random.default_rng(split_seed)

    def windows(part: np.ndarray, count: int):
        starts = rng.integers(0, len(part) - context - 1, size=count)
        cuts = np.stack([part[s:s + context + 1] for s in starts])
        return cuts[:, :-1].copy(), cuts[:, 1:].copy()

    return windows(codes[:cut], sequences), windows(codes[cut:], valid_sequences), vocabulary


@lru_cache(maxsize=1)
def _text_codes() -> tuple[np.ndarray, int]:
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics))
    alphabet = sorted(set(text))
    lookup = {c: i for i, c in enumerate(alphabet)}
    return np.array([lookup[c] for c in text], dtype=np.int64), len(alphabet)
