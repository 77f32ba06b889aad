"""The PyTorch trainer and the digits-mlp workload: real training on real data, a few epochs each."""
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from tuner.errors import InputError
from tuner.runner import open_study, run_study
from tuner.spec import load_spec, parse_spec
from tuner.trials import NOISE_SCALE, SAMPLES, noise_scale
from tuner.workload import Run, TrialDiverged, load_workload
from tuner.workloads import digits
from tuner.workloads.trainer import train_torch

CHANCE = 2.303  # cross-entropy of a uniform guess over 10 classes, ln 10


def digits_run(lr=0.1, batch_size=32, seed=0, **options):
    run = Run(lr=lr, batch_size=batch_size, seed=seed, options={"epochs": 2, **options})
    return run, digits.train(run)


def regression_data(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 8, generator=g)
    y = X @ torch.linspace(-1, 1, 8)[:, None] + 0.05 * torch.randn(n, 1, generator=g)
    return X, y


def test_digits_loss_goes_down_at_a_sensible_lr():
    run, loss = digits_run(lr=0.1, epochs=4)
    (step, untrained), *reports = run.reports
    assert step == 0 and untrained == pytest.approx(math.log(10), rel=0.1)  # the untrained model: chance
    values = [value for _, value in reports]
    assert loss == values[-1] < 0.3 < values[0] < CHANCE
    assert values[-1] < values[len(values) // 2] < values[0] < untrained


def test_same_seed_same_metric_other_seed_other_metric():
    assert digits_run(seed=1)[1] == digits_run(seed=1)[1]
    assert digits_run(seed=1)[1] != digits_run(seed=2)[1]


def test_an_absurd_lr_diverges():
    with pytest.raises((FloatingPointError, TrialDiverged), match="diverged"):
        digits_run(lr=1e4)


def test_a_finite_blow_up_is_divergence_too():
    run = Run(lr=1.5, batch_size=64, options={"steps": 30, "evals": 3})  # SGD is stable below lr = 1 here
    X, y = regression_data()
    with pytest.raises(FloatingPointError, match="diverged after 640 samples"):
        train_torch(run, lambda: nn.Linear(8, 1), (X[:384], y[:384]), (X[384:], y[384:]), loss=nn.functional.mse_loss)


@pytest.mark.parametrize("evals", [1, 5, 6])
def test_reports_are_samples_seen_evenly_spread(evals):
    run, _ = digits_run(batch_size=64, evals=evals)  # 1536 // 64 = 24 steps an epoch, 48 in all
    assert run.reports[0][0] == 0  # the untrained model, then the evaluations
    steps = [samples // 64 for samples, _ in run.reports[1:]]
    assert all(samples % 64 == 0 for samples, _ in run.reports)
    assert len(steps) == evals and steps[-1] == 48 and run.samples_seen == 48 * 64
    gaps = {b - a for a, b in zip([0, *steps], steps)}
    assert max(gaps) - min(gaps) <= 1


def test_reports_on_a_log_scale_start_at_the_first_step_and_grow_by_a_constant_factor():
    run, _ = digits_run(batch_size=64, evals=5, eval_spacing="log")  # 48 steps: 48^(k/4) = 1, 2.6, 6.9, 18, 48
    assert [samples // 64 for samples, _ in run.reports] == [0, 1, 3, 7, 18, 48]


def test_steps_budget_instead_of_epochs():
    assert digits_run(batch_size=128, epochs=None, steps=30)[0].samples_seen == 30 * 128  # 2.5 epochs
    assert digits_run(batch_size=128, epochs=3)[0].samples_seen == 3 * 1536


def test_a_budget_given_in_code_replaces_the_studys():
    X, y = regression_data()
    run = Run(lr=0.05, batch_size=32, options={"epochs": 5})
    train_torch(run, lambda: nn.Linear(8, 1), (X, y), (X, y), loss=nn.functional.mse_loss, steps=7)
    assert run.samples_seen == 7 * 32


def test_every_batch_size_sees_the_same_samples_even_when_it_does_not_divide_the_data():
    # 1500 images: batches span epochs instead of dropping the remainder of each one
    for batch_size in (7, 64, 1000):
        run, _ = digits_run(batch_size=batch_size, epochs=2, train_size=1500, evals=1)
        assert 3000 - batch_size < run.samples_seen <= 3000


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("momentum", 0.03), ("adam", 0.01), ("adamw", 0.01)])
def test_each_optimizer_trains(optimizer, lr):
    assert digits_run(lr=lr, optimizer=optimizer)[1] < 0.5


def test_weight_decay_changes_the_result():
    assert digits_run(weight_decay=0.01)[1] != digits_run()[1]


def test_own_model_with_a_dataset_and_mse_loss():
    X, y = regression_data()
    run = Run(lr=0.05, batch_size=32, options={"optimizer": "momentum", "epochs": 5, "my_own_key": 1})
    loss = train_torch(run, lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)),
                       TensorDataset(X[:384], y[:384]), TensorDataset(X[384:], y[384:]),
                       loss=nn.functional.mse_loss)
    assert loss < 0.05 * y.var().item()
    assert run.samples_seen == 5 * 384


class Pairs(Dataset):
    """A map-style dataset of (tensor, float) pairs, the way a user's own dataset looks."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], float(self.y[i, 0])


def test_a_dataset_trains_exactly_as_the_same_tensors_do():
    X, y = regression_data()

    def train(train_data, valid_data, target_shape):
        run = Run(lr=0.05, batch_size=16, options={"epochs": 2})
        return train_torch(run, lambda: nn.Linear(8, 1), train_data, valid_data,
                           loss=lambda out, target: nn.functional.mse_loss(out, target.view(target_shape).float()))

    as_tensors = train((X[:384], y[:384]), (X[384:], y[384:]), (-1, 1))
    as_dataset = train(Pairs(X[:384], y[:384]), Pairs(X[384:], y[384:]), (-1, 1))
    assert as_dataset == pytest.approx(as_tensors, rel=1e-6)


@pytest.mark.parametrize("options, message", [
    ({"optimiser": "adam"}, "option optimiser: unknown option"),
    ({"optimizer": "lbfgs"}, "option optimizer: input should be 'sgd', 'momentum', 'adam' or 'adamw', got 'lbfgs'"),
    ({"epochs": 2.5}, "option epochs: input should be a valid integer, got 2.5"),
    ({"epochs": 2, "steps": 100}, "option steps: give epochs or steps, not both"),
    ({"momentum": 0.5}, "option momentum: used only by optimizer 'momentum', got 0.5"),
    ({"device": "gpu"}, "option device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ({"schedule": "step"}, "option schedule: input should be 'constant', 'cosine' or 'linear', got 'step'"),
    ({"warmup": 1.5}, "option warmup: expected a share of the run below 1 \\(e.g. 0.05\\) or a number of training"),
    ({"min_lr_ratio": 2.0}, "option min_lr_ratio: input should be less than or equal to 1, got 2.0"),
    ({"eps": 1e-6}, "option eps: used only by optimizers 'adam' and 'adamw', got 1e-06"),
])
def test_bad_trainer_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=f"^train_torch {message}"):
        train_torch(Run(lr=0.1, batch_size=8), lambda: nn.Linear(8, 1),
                    regression_data(), regression_data(seed=1), loss=nn.functional.mse_loss, **options)


def test_run_options_are_checked_and_other_keys_left_to_the_workload():
    run = Run(lr=0.1, batch_size=8, options={"evals": 0, "optimiser": "adam"})
    with pytest.raises(ValueError, match="^train_torch option evals: input should be greater than 0, got 0"):
        train_torch(run, lambda: nn.Linear(8, 1), regression_data(), regression_data(seed=1))


@pytest.mark.parametrize("options, message", [
    ({"optimiser": "adam"}, r"\[workload\] optimiser: unknown key \(known keys: optimizer"),
    ({"hidden": 64}, r"\[workload\] hidden: input should be a valid list, got 64"),
    ({"epochs": "5"}, r"\[workload\] epochs: input should be a valid integer, got '5'"),
    ({"epochs": 5, "steps": 100}, r"\[workload\] steps: give epochs or steps, not both"),
    ({"train_size": 1797}, r"\[workload\] train_size: input should be less than 1797"),
    ({"warmup": -1}, r"\[workload\] warmup: expected a share of the run below 1"),
    ({"clip": 0.0}, r"\[workload\] clip: input should be greater than 0"),
])
def test_bad_digits_options_are_input_errors(options, message):
    spec = parse_spec({"study": {"name": "s", "n_trials": 1}, "search": {"lr": [0.01, 1.0], "batch_sizes": [8]},
                       "workload": {"target": "digits-mlp", **options}})
    with pytest.raises(InputError, match=f"^{message}"):
        load_workload(spec)


def test_bad_calls_are_clear():
    with pytest.raises(ValueError, match="batch size 4096 is larger than the training set"):
        digits_run(batch_size=4096)
    with pytest.raises(TypeError, match="pass a function that returns a new module"):
        train_torch(Run(lr=0.1, batch_size=8), nn.Linear(8, 1), regression_data(), regression_data(seed=1))
    with pytest.raises(ValueError, match="device: 'cuda:7' is not available"):
        digits_run(device="cuda:7")


def test_digits_module_imports_without_torch():
    code = "import sys, tuner.workloads.digits; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_digits_in_an_optuna_study():
    spec = parse_spec({
        "study": {"name": "digits", "n_trials": 6},
        "search": {"lr": [0.01, 0.3], "batch_sizes": [32, 128], "pruner": "none"},
        "workload": {"target": "digits-mlp", "epochs": 1, "evals": 3},
    })
    study = open_study(spec, optuna.storages.InMemoryStorage())
    run_study(study, spec, load_workload(spec))
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.params["batch_size"] for t in trials} == {32, 128}
    assert all(t.user_attrs[SAMPLES] == 1536 and len(t.intermediate_values) == 4 for t in trials)  # 0 + 3


def test_the_shipped_study_loads():
    spec = load_spec(Path(__file__).parent.parent / "studies" / "digits-mlp-sgd.toml")
    assert load_workload(spec).options["epochs"] > 0


# --- the metric ------------------------------------------------------------------------------------------

def test_accuracy_is_reported_and_returned_for_a_maximizing_study():
    run = Run(lr=0.1, batch_size=32, options={"epochs": 4, "metric": "accuracy"}, direction="maximize")
    accuracy = digits.train(run)
    (step, untrained), *reports = run.reports
    assert step == 0 and untrained < 0.3  # ten classes: an untrained model is near chance (0.1)
    assert accuracy == reports[-1][1] > 0.85 and all(0.0 <= value <= 1.0 for _, value in run.reports)


def test_a_metric_against_the_studys_direction_is_refused():
    with pytest.raises(ValueError, match="metric 'accuracy' is to maximize, but the study's direction is 'minimize'"):
        digits.train(Run(lr=0.1, batch_size=32, options={"epochs": 1, "metric": "accuracy"}))
    with pytest.raises(ValueError, match="metric 'loss' is to minimize, but the study's direction is 'maximize'"):
        digits.train(Run(lr=0.1, batch_size=32, options={"epochs": 1}, direction="maximize"))


def test_a_metric_of_ones_own_says_which_way_is_better():
    (x, y), (xv, yv) = digits.load_data()
    mlp = lambda: digits.mlp([16])  # noqa: E731

    def top2(outputs, targets):
        return (outputs.topk(2, dim=1).indices == targets[:, None]).any(dim=1).float().mean()

    run = Run(lr=0.1, batch_size=32, options={"epochs": 2}, direction="maximize")
    with pytest.raises(ValueError, match="maximize=True or False"):
        train_torch(run, mlp, (x, y), (xv, yv), metric=top2)
    assert 0.9 < train_torch(run, mlp, (x, y), (xv, yv), metric=top2, maximize=True) <= 1.0


def test_a_study_file_whose_metric_disagrees_with_its_direction_is_bad_input(write_spec, tmp_path):
    from conftest import spec_dict, tuner

    path = write_spec(spec_dict(workload={"target": "digits-mlp", "metric": "accuracy"}))
    done = tuner("run", str(path), "--storage", str(tmp_path / "s.journal"), cwd=tmp_path)
    assert done.returncode == 2 and "set direction = 'maximize'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "s.journal").exists()


# --- schedules: the learning rate the optimizer used at each step, against the closed form -------------------

class _Probe(nn.Module):
    """One weight w, output x·w, trained on x = 1 with loss mean(output): every gradient is 1, so
    plain SGD moves w by exactly the learning rate of that step. Records w before each training step."""

    def __init__(self, seen: list[float]):
        super().__init__()
        self.w, self.seen = nn.Parameter(torch.zeros(1, dtype=torch.float64)), seen

    def forward(self, x):
        if torch.is_grad_enabled():
            self.seen.append(float(self.w.detach()))
        return x * self.w


def _lrs_used(batch_size: int, **options) -> list[float]:
    seen: list[float] = []
    data = (torch.ones(256, 1, dtype=torch.float64), torch.zeros(256, 1, dtype=torch.float64))
    train_torch(Run(lr=0.1, batch_size=batch_size, options={"epochs": 2, "evals": 1, **options}),
                lambda: _Probe(seen), data, data, loss=lambda out, target: out.mean())
    return [before - after for before, after in zip(seen, seen[1:])]  # every step but the last


def _closed_form(step: int, steps: int, warm: int, schedule: str, ratio: float, lr: float = 0.1) -> float:
    if step <= warm:
        return lr * step / warm
    k, decay = step - warm - 1, steps - warm - 1
    if schedule == "constant":
        return lr
    if schedule == "linear":
        return lr * (1 + (ratio - 1) * k / decay)
    return ratio * lr + (1 - ratio) * lr * (1 + math.cos(math.pi * k / decay)) / 2


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
@pytest.mark.parametrize("warmup", [0.25, 128], ids=["warm-up a quarter of the run", "warm-up over 128 samples"])
def test_the_learning_rate_used_at_every_step_follows_the_schedule(schedule, warmup):
    for batch_size in (8, 32):  # the same budget, 512 samples: 64 and 16 steps
        steps = 512 // batch_size
        warm = round(warmup * steps) if isinstance(warmup, float) else 128 // batch_size
        used = _lrs_used(batch_size, schedule=schedule, warmup=warmup, min_lr_ratio=0.1)
        expected = [_closed_form(s, steps, warm, schedule, 0.1) for s in range(1, steps)]
        assert used == pytest.approx(expected, rel=1e-9, abs=1e-12), (batch_size, schedule)
        assert max(used) == pytest.approx(0.1)  # the tuned lr is the peak


def test_without_a_schedule_every_step_uses_the_tuned_lr():
    assert _lrs_used(16) == pytest.approx([0.1] * 31)


def test_clipping_bounds_each_step_and_adam_options_reach_the_optimizer():
    seen: list[float] = []
    data = (torch.full((64, 1), 1000.0, dtype=torch.float64), torch.zeros(64, 1, dtype=torch.float64))
    run = Run(lr=0.1, batch_size=8, options={"steps": 5, "evals": 1, "clip": 0.5})
    train_torch(run, lambda: _Probe(seen), data, data, loss=lambda out, target: out.mean())
    assert [a - b for a, b in zip(seen, seen[1:])] == pytest.approx([0.05] * 4)  # gradient 1000, clipped to 0.5
    with pytest.raises(ValueError, match="betas: used only by optimizers 'adam' and 'adamw'"):
        train_torch(Run(lr=0.1, batch_size=8, options={"betas": [0.9, 0.95]}), lambda: _Probe([]), data, data)
    seen.clear()
    run = Run(lr=0.1, batch_size=8, options={"steps": 3, "evals": 1, "optimizer": "adam", "betas": [0.0, 0.5],
                                              "eps": 1.0})
    train_torch(run, lambda: _Probe(seen), data, data, loss=lambda out, target: out.mean())
    # beta1 = 0: Adam's step is lr·g/(sqrt(v̂)+eps) with v̂ = g² = 1e6 after bias correction: 0.1·1000/1001
    assert seen[0] - seen[1] == pytest.approx(0.1 * 1000 / 1001)


# --- charlm: the built-in transformer workload -----------------------------------------------------------------

def test_charlm_learns_characters_and_reports_against_the_untrained_model():
    from tuner.workloads import charlm

    run = Run(lr=1e-2, batch_size=16, options={"sequences": 256, "epochs": 1, "context": 32, "evals": 2})
    final = charlm.train(run)
    untrained = run.reports[0][1]
    vocabulary = charlm.load_data(32, 256, 256, 0)[2]
    assert untrained == pytest.approx(math.log(vocabulary), rel=0.1)  # an untrained model guesses evenly
    assert final < 0.75 * untrained  # it learned which characters follow which
    assert run.reports[-1][0] == 256  # samples seen: one epoch of 256 sequences


@pytest.mark.parametrize("options, message", [
    ({"width": 66, "heads": 4}, r"\[workload\] width 66 must be a multiple of heads 4"),
    ({"metric": "accuracy"}, r"\[workload\] metric: input should be 'loss'"),
])
def test_bad_charlm_options_are_input_errors(options, message):
    spec = parse_spec({"study": {"name": "s", "n_trials": 1}, "search": {"lr": [1e-3, 0.1], "batch_sizes": [8]},
                       "workload": {"target": "charlm", **options}})
    with pytest.raises(InputError, match=message):
        load_workload(spec)


def test_the_shipped_charlm_study_file_loads():
    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / "charlm-adamw.toml")
    workload = load_workload(spec)
    assert workload.options["schedule"] == "cosine" and workload.options["optimizer"] == "adamw"


# --- the gradient noise scale -------------------------------------------------------------------------------

def test_the_noise_scale_matches_the_per_example_gradients_it_estimates():
    """At a point that does not move (a learning rate of 1e-12), B_simple = tr(Σ) / |G|² of a linear
    regression's per-example gradients, computed exactly over the training set, is what the
    two-batch estimator converges to over many steps."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    n, d = 8192, 6
    x = torch.randn(n, d)
    y = x @ torch.linspace(-1, 1, d)[:, None] + 0.5 * torch.randn(n, 1) + 0.3
    torch.manual_seed(3)
    model = nn.Linear(d, 1)  # train_torch seeds with run.seed = 3 and builds the same one
    residual = (model(x) - y).detach()  # per-example gradients of the squared error: 2 r (x, 1)
    grads = 2 * residual * torch.cat([x, torch.ones(n, 1)], dim=1)
    mean = grads.mean(dim=0)
    truth = float(((grads - mean) ** 2).sum(dim=1).mean() / mean.pow(2).sum())

    run = Run(lr=1e-12, batch_size=64, seed=3)
    train_torch(run, lambda: nn.Linear(d, 1), (x, y), (x[:256], y[:256]), loss=nn.functional.mse_loss,
                steps=4000, noise_scale=True)
    measured = noise_scale(run.noise_scale)  # over the whole run: every window
    assert measured == pytest.approx(truth, rel=0.10), (measured, truth)
    assert run.noise_scale["samples"] == [step * 64 for step in range(500, 4001, 500)]  # a window per evaluation


def test_a_study_with_noise_scale_on_stores_it_on_every_trial_it_measured():
    spec = parse_spec({"study": {"name": "gns", "n_trials": 9, "seed": 0},
                       "search": {"lr": [0.03, 3.0], "batch_sizes": [16, 64, 256], "pruner": "none"},
                       "workload": {"target": "digits-mlp", "epochs": 3, "noise_scale": True}})
    study = open_study(spec, optuna.storages.InMemoryStorage())
    run_study(study, spec, load_workload(spec))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    measured = [noise_scale(t.user_attrs[NOISE_SCALE]) for t in complete]
    # where the averaged |G|² estimate is not positive (noise swamps it in a few steps) it reads None
    assert len(complete) >= 6 and sum(v is not None for v in measured) >= len(complete) / 2
    assert all(v > 0 for v in measured if v is not None)
    run, _ = digits_run()
    assert run.noise_scale is None  # off by default: nothing measured
