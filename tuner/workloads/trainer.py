"""A small PyTorch training loop, so that a workload is a model and its data, not a loop.

``train_torch`` is the whole trainer: seed, build the model, then for every step a batch of exactly
``run.batch_size`` samples (drawn from a fresh permutation each epoch, so that every batch size
sees the same number of samples; samples seen = steps x batch size), forward, backward, (clip,)
step, and a step of the learning-rate schedule (``schedule``, ``warmup``: torch's schedulers); at
``evals`` points spread over the run (evenly, or on a log scale: ``eval_spacing``) it reports the
validation loss, ``run.report(samples_seen, loss)``, and it returns the last one. Data lives in memory on the
device and is indexed per batch: no DataLoader, no per-step sync.

A workload of your own is a model and its data handed to ``train_torch``; in ``my_workload.py``
beside the study file, named there as ``target = "my_workload:train"``:

    >>> import torch
    >>> from torch import nn
    >>> from tuner.workloads.trainer import train_torch
    >>> X = torch.randn(1024, 8)
    >>> y = X @ torch.linspace(-1, 1, 8)[:, None] + 0.1 * torch.randn(1024, 1)
    >>> def train(run):
    ...     return train_torch(run, lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)),
    ...                        train_data=(X[:768], y[:768]), valid_data=(X[768:], y[768:]),
    ...                        loss=nn.functional.mse_loss)

Tried without a study (``options`` stands in for the study's ``[workload]`` keys):

    >>> from tuner import Run
    >>> run = Run(lr=0.05, batch_size=32, options={"optimizer": "momentum", "epochs": 5})
    >>> train(run) < 0.05
    True
    >>> run.reports[-1][0]  # samples seen: 5 epochs x 768
    3840

Options come from the study's ``[workload]`` table (``run.options``; keys the trainer does not know
are left to the workload) and from keyword arguments, which win; see ``TrainerOptions``.
torch is imported on first use: the tuner imports the built-in workloads to check their options.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from tuner.spec import PositiveInt
from tuner.workload import DIVERGENCE_FACTOR

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tuner.workload import Run

DEFAULT_EPOCHS = 20
DEFAULT_MOMENTUM = 0.9
Data = Any  # (inputs, targets) as tensors or arrays, or a map-style torch Dataset of (input, target)


class TrainerOptions(BaseModel):
    """Options of ``train_torch``; a workload's own ``Options`` can extend them (see ``digits``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    optimizer: Literal["sgd", "momentum", "adam", "adamw"] = Field(
        "sgd", description="sgd, momentum (SGD with momentum), adam or adamw")
    momentum: Annotated[float, Field(ge=0, lt=1)] | None = Field(
        None, description=f"momentum of optimizer 'momentum' (default {DEFAULT_MOMENTUM})")
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False,
                                description="weight decay; adamw decouples it (so with 0 it equals adam)")
    epochs: PositiveInt | None = Field(
        None, description=f"budget in epochs, the same data at every batch size (default {DEFAULT_EPOCHS})")
    steps: PositiveInt | None = Field(None, description="budget in optimizer steps, instead of epochs")
    evals: PositiveInt = Field(8, description="validation passes over the run, each reported")
    eval_spacing: Literal["even", "log"] = Field(
        "even", description="even: a validation pass every run/evals steps; log: at steps spaced evenly on a log "
                            "scale from the first (a study with a [study] goal reads when a run reaches it)")
    eval_batch_size: PositiveInt = Field(1024, description="validation samples per forward pass")
    device: str = Field("auto", description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    threads: PositiveInt | None = Field(None, description="torch CPU threads (default: torch's own)")
    metric: Literal["loss", "accuracy"] = Field(
        "loss", description="what is reported and returned: the validation loss (minimize) or the "
                            "classification accuracy (maximize); the study's direction must agree")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="the learning rate after warm-up: constant, or decayed to min_lr_ratio x lr "
                                "along a cosine or a straight line by the last step; the tuned lr is the peak")
    warmup: float | int = Field(
        0, description="steps rising linearly from lr/steps to lr: a share of the budget (a float below 1) "
                       "or a number of training samples (an integer), the same data at every batch size")
    min_lr_ratio: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = Field(
        0.0, description="where a decaying schedule ends, as a share of the peak lr")
    clip: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="clip the gradient's global norm to this (default: no clipping)")
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] | None = Field(
        None, description="Adam's (beta1, beta2) (default torch's: 0.9, 0.999)")
    eps: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="Adam's epsilon (default torch's: 1e-8)")
    noise_scale: bool = Field(
        False, description="measure the gradient noise scale B_simple = tr(Σ)/|G|² from the gradients of each "
                           "batch and of its first half (McCandlish et al. 2018, appendix A), between every two "
                           "evaluations: about 1.5x the compute; stored on the trial as noise_scale")

    # Field validators run only on values given, not on defaults: these catch contradictions.
    @field_validator("momentum")
    @classmethod
    def _momentum_needs_its_optimizer(cls, momentum: float | None, info: ValidationInfo) -> float | None:
        if momentum is not None and info.data.get("optimizer") != "momentum":
            raise PydanticCustomError("unused", "used only by optimizer 'momentum'")
        return momentum

    @field_validator("warmup")
    @classmethod
    def _share_or_samples(cls, warmup: float | int) -> float | int:
        if (isinstance(warmup, float) and not 0 <= warmup < 1) or (isinstance(warmup, int) and warmup < 0):
            raise PydanticCustomError("warmup", "expected a share of the run below 1 (e.g. 0.05) or a number of "
                                                "training samples (e.g. 4096)")
        return warmup

    @field_validator("betas", "eps")
    @classmethod
    def _adam_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("optimizer") not in ("adam", "adamw"):
            raise PydanticCustomError("unused", "used only by optimizers 'adam' and 'adamw'")
        return value

    @field_validator("steps")
    @classmethod
    def _one_budget(cls, steps: int | None, info: ValidationInfo) -> int | None:
        if steps is not None and info.data.get("epochs") is not None:
            raise PydanticCustomError("budget", "give epochs or steps, not both")
        return steps

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise PydanticCustomError("device", "expected auto, cpu, cuda or cuda:N")
        return device


def train_torch(run: Run, model: Callable[[], nn.Module], train_data: Data, valid_data: Data,
                loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                maximize: bool | None = None, **options: Any) -> float:
    """Train ``model()`` at ``run.lr`` and ``run.batch_size``; return the final validation metric.

    model: a function returning a new module, called after seeding so that run.seed fixes the init.
    train_data, valid_data: ``(inputs, targets)`` tensors (or arrays), or a map-style Dataset of
        (input, target) pairs, read into tensors once.
    loss: ``loss(outputs, targets)``, the batch mean; default cross-entropy (targets: class indices).
    metric: what is reported and returned, ``metric(outputs, targets)`` as a batch mean, with
        ``maximize`` saying which way is better; default the ``metric`` option: the validation loss
        (``"loss"``) or the classification accuracy (``"accuracy"``, maximized). The study's
        direction must agree (a ValueError otherwise).
    options: override ``run.options``; see ``TrainerOptions``.

    It reports the untrained model's metric at step 0 (the fit flags a batch size whose best run is
    no better: no signal), then the metric at ``evals`` points. Raises FloatingPointError when the
    run diverged: a training or validation loss that is not finite, or a validation loss
    DIVERGENCE_FACTOR times the untrained model's; and raises whatever ``run.report`` raises to stop
    the run (optuna.TrialPruned).
    """
    import torch

    o = _options(run.options, options)
    loss = loss or torch.nn.functional.cross_entropy
    measure, maximize = _metric(o.metric, loss, metric, maximize, getattr(run, "direction", "minimize"))
    if o.threads is not None:
        torch.set_num_threads(o.threads)  # process-wide, as torch has it
    device = _device(o.device)
    inputs, targets = _tensors(train_data, "train_data", device)
    valid_inputs, valid_targets = _tensors(valid_data, "valid_data", device)
    steps = _total_steps(o, len(inputs), run.batch_size)
    eval_steps = _eval_steps(steps, o.evals, o.eval_spacing)

    torch.manual_seed(run.seed)
    net = _build(model).to(device)
    optimizer = _optimizer(o, net, run.lr)
    schedule = _schedule(o, optimizer, steps, run.batch_size)
    shuffle = torch.Generator(device=device).manual_seed(run.seed)
    functions = (loss,) if measure is loss else (loss, measure)  # the loss once, when it is the metric
    initial_loss, value = _two(_evaluate(net, functions, valid_inputs, valid_targets, o.eval_batch_size))
    limit = DIVERGENCE_FACTOR * initial_loss if initial_loss > 0 else math.inf
    gauge = NoiseScale(run.batch_size) if o.noise_scale and run.batch_size >= 2 else None
    run.report(0, value)  # the untrained model
    for step, batch in enumerate(_batches(len(inputs), run.batch_size, steps, shuffle), start=1):
        batch_loss = loss(net(inputs[batch]), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        if gauge is not None:  # before clipping: the gradient itself
            gauge.add(net, loss, inputs[batch], targets[batch])
        if o.clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), o.clip)
        optimizer.step()
        schedule.step()
        if step in eval_steps:  # the only points that wait for the device
            valid_loss, value = _two(_evaluate(net, functions, valid_inputs, valid_targets, o.eval_batch_size))
            _check_diverged(batch_loss.item(), valid_loss, limit, step * run.batch_size)
            if gauge is not None:
                run.noise_scale = gauge.close(step * run.batch_size)  # so far: a pruned run keeps it
            run.report(step * run.batch_size, value)
    return value


def _eval_steps(steps: int, evals: int, spacing: str) -> set[int]:
    """The steps after which the model is evaluated: ``evals`` of them, evenly spaced or on a log scale."""
    if spacing == "log" and evals > 1:
        return {round(steps ** (k / (evals - 1))) for k in range(evals)}
    return {steps * k // evals for k in range(1, evals + 1)} - {0}


class NoiseScale:
    """What the simple gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018, appendix
    A) is estimated from: the squared gradient norms of each batch (B samples) and of its first half
    (b), averaged over the steps between two evaluations (a window). ``tuner.trials.noise_scale``
    reads the record over any stretch of the run. The half batch runs forward in training mode
    (BatchNorm's running statistics see it too)."""

    def __init__(self, batch_size: int) -> None:
        self.big, self.small = batch_size, batch_size // 2
        self.sum_big = self.sum_small = 0.0
        self.steps = 0
        self.windows: dict[str, list] = {"samples": [], "big": [], "small": [], "steps": []}

    def add(self, net: nn.Module, loss: Callable, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One step: the batch's gradient (already in ``.grad``) and its first half's."""
        import torch

        params = [p for p in net.parameters() if p.grad is not None]
        half = torch.autograd.grad(loss(net(inputs[:self.small]), targets[:self.small]), params)
        with torch.no_grad():  # summed on the device: read at the next evaluation, which waits for it anyway
            self.sum_big = self.sum_big + sum(p.grad.pow(2).sum() for p in params)
            self.sum_small = self.sum_small + sum(g.pow(2).sum() for g in half)
        self.steps += 1

    def close(self, samples: int) -> dict:
        """End the window at ``samples`` seen; the record so far (plain JSON, stored on the trial)."""
        if self.steps:
            for key, value in (("samples", samples), ("big", float(self.sum_big) / self.steps),
                               ("small", float(self.sum_small) / self.steps), ("steps", self.steps)):
                self.windows[key].append(value)
            self.sum_big = self.sum_small = 0.0
            self.steps = 0
        return {"batch": self.big, "half": self.small, **{k: list(v) for k, v in self.windows.items()}}


def _two(values: tuple[float, ...]) -> tuple[float, float]:
    """(validation loss, metric) from one or two evaluations."""
    return values[0], values[-1]


def metric_direction(name: str) -> str:
    """Whether a named metric is minimized or maximized."""
    return "maximize" if name in MAXIMIZED else "minimize"


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=1) == targets).float().mean()


MAXIMIZED = {"accuracy"}


def _metric(name: str, loss: Callable, metric: Callable | None, maximize: bool | None,
            direction: str) -> tuple[Callable, bool]:
    """The metric to report and whether it is maximized, checked against the study's direction."""
    if metric is None:
        metric, maximize, label = (_accuracy if name == "accuracy" else loss), name in MAXIMIZED, repr(name)
    elif maximize is None:
        raise ValueError("train_torch: with metric=..., say which way is better: maximize=True or False")
    else:
        label = getattr(metric, "__name__", "metric")
    if maximize != (direction == "maximize"):
        wanted = "maximize" if maximize else "minimize"
        raise ValueError(f"train_torch metric {label} is to {wanted}, but the study's direction is "
                         f"{direction!r}; set [study] direction = {wanted!r}")
    return metric, maximize


def _options(run_options: Mapping[str, Any], overrides: dict[str, Any]) -> TrainerOptions:
    """The trainer's options from run.options, and overrides; a budget in overrides replaces the study's."""
    budget = {"epochs", "steps"}
    known = TrainerOptions.model_fields.keys() - (budget if overrides.keys() & budget else set())
    ours = {key: value for key, value in run_options.items() if key in known}  # the rest is the workload's
    try:
        return TrainerOptions.model_validate({**ours, **overrides})
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        key = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ValueError(f"train_torch option {key}: unknown option "
                             f"(known: {', '.join(TrainerOptions.model_fields)})") from None
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"train_torch option {key}: {message[:1].lower()}{message[1:]}, "
                         f"got {first['input']!r}") from None


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"train_torch option device: {name!r} is not available "
                         f"({torch.cuda.device_count()} CUDA devices)")
    return device


def _tensors(data: Data, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) on the device, read once: indexing tensors in memory beats a DataLoader."""
    import torch
    from torch.utils.data import Dataset, TensorDataset

    if isinstance(data, TensorDataset):
        data = data.tensors
    elif isinstance(data, Dataset):
        columns = zip(*(data[i] for i in range(len(data))), strict=True)
        data = [torch.stack([torch.as_tensor(value) for value in column]) for column in columns]
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"train_torch {name}: expected (inputs, targets) or a Dataset of "
                        f"(input, target) pairs, got {type(data).__name__}")
    inputs, targets = (torch.as_tensor(part).to(device) for part in data)
    if len(inputs) != len(targets):
        raise ValueError(f"train_torch {name}: {len(inputs)} inputs but {len(targets)} targets")
    return inputs, targets


def _total_steps(o: TrainerOptions, n: int, batch_size: int) -> int:
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} is larger than the training set ({n} samples)")
    return o.steps or (o.epochs or DEFAULT_EPOCHS) * n // batch_size


def _build(model: Callable[[], nn.Module]) -> nn.Module:
    from torch import nn

    if isinstance(model, nn.Module):  # a shared instance would carry one trial's weights into the next
        raise TypeError("train_torch model: pass a function that returns a new module, e.g. "
                        f"lambda: {type(model).__name__}(...), not a module instance")
    net = model()
    if not isinstance(net, nn.Module):
        raise TypeError(f"train_torch model: model() returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _optimizer(o: TrainerOptions, net: nn.Module, lr: float) -> torch.optim.Optimizer:
    import torch

    params, decay = net.parameters(), o.weight_decay
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=decay)
    if o.optimizer == "momentum":
        momentum = DEFAULT_MOMENTUM if o.momentum is None else o.momentum
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)
    adam = torch.optim.Adam if o.optimizer == "adam" else torch.optim.AdamW
    tuning = {"betas": tuple(o.betas)} if o.betas is not None else {}
    tuning |= {"eps": o.eps} if o.eps is not None else {}
    return adam(params, lr=lr, weight_decay=decay, **tuning)


def warmup_steps(o: TrainerOptions, steps: int, batch_size: int) -> int:
    """Warm-up in optimizer steps: a share of the run's steps, or the steps that see ``warmup`` samples
    at this batch size (so that every batch size warms up over the same data)."""
    if isinstance(o.warmup, float):
        return min(steps, round(o.warmup * steps))
    return min(steps, math.ceil(o.warmup / batch_size))


def _schedule(o: TrainerOptions, optimizer: torch.optim.Optimizer, steps: int,
              batch_size: int) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedulers, chained: step k (1-based) of a warm-up of W steps trains at lr·k/W; the
    decay then goes from lr at the step after warm-up to min_lr_ratio·lr at the last step."""
    from torch.optim import lr_scheduler

    warm = warmup_steps(o, steps, batch_size)
    warm = warm if warm >= 2 else 0  # one warm-up step at the full lr is no warm-up
    decay = max(steps - warm - 1, 1)
    after = {"constant": lambda: lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0),
             "cosine": lambda: lr_scheduler.CosineAnnealingLR(
                 optimizer, T_max=decay, eta_min=o.min_lr_ratio * optimizer.defaults["lr"]),
             "linear": lambda: lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=o.min_lr_ratio,
                                                     total_iters=decay)}[o.schedule]
    if not warm:
        return after()
    rise = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm - 1)
    return lr_scheduler.SequentialLR(optimizer, [rise, after()], milestones=[warm])


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Sample indices, batch_size at a time, from a stream of fresh permutations (one per epoch).

    A batch may span two epochs, so that every batch size sees the same number of samples
    even when it does not divide the training set.
    """
    import torch

    order, start = torch.empty(0, dtype=torch.long, device=generator.device), 0
    for _ in range(steps):
        if start + batch_size > len(order):  # top up with the next epoch, drawn where the data is
            fresh = torch.randperm(n, generator=generator, device=generator.device)
            order, start = torch.cat([order[start:], fresh]), 0
        yield order[start:start + batch_size]
        start += batch_size


def _evaluate(net: nn.Module, functions: tuple[Callable, ...], inputs: torch.Tensor, targets: torch.Tensor,
              batch_size: int) -> tuple[float, ...]:
    """Each function's mean over all the inputs, in eval mode (dropout off, batch-norm statistics fixed)."""
    import torch

    training, totals = net.training, [0.0] * len(functions)
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            x, y = inputs[start:start + batch_size], targets[start:start + batch_size]
            out = net(x)
            totals = [total + f(out, y) * len(x) for total, f in zip(totals, functions)]  # tensors: one sync, below
    net.train(training)
    return tuple(float(total) / len(inputs) for total in totals)


def _check_diverged(train_loss: float, valid_loss: float, limit: float, samples: int) -> None:
    if not (math.isfinite(train_loss) and math.isfinite(valid_loss) and valid_loss <= limit):
        raise FloatingPointError(f"diverged after {samples} samples: training loss {train_loss:.3g}, "
                                 f"validation loss {valid_loss:.3g}")
