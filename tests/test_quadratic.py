"""The noisy quadratic: its exact optimum is the ground truth for the tuner, so check it hard."""
import math

import numpy as np
import pytest

from tuner.workload import Run
from tuner.workloads.quadratic import (
    DIVERGENCE_FACTOR,
    Options,
    expected_loss,
    optimal_lr,
    steps_to_target,
    train,
)

SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]


@pytest.mark.parametrize("batch_size", SIZES)
def test_optimal_lr_minimises_the_expected_loss(batch_size):
    best = optimal_lr(batch_size)
    at_best = expected_loss(best, batch_size)
    for factor in (0.9, 0.99, 0.999, 1.001, 1.01, 1.1):
        assert expected_loss(best * factor, batch_size) > at_best
    grid = np.exp(np.linspace(math.log(1e-5), math.log(2.0), 4001))
    assert at_best <= min(expected_loss(lr, batch_size) for lr in grid)


def test_the_optimum_is_linear_in_batch_size_then_saturates():
    optima = [optimal_lr(b) for b in SIZES]
    ratios = [b / a for a, b in zip(optima, optima[1:])]
    assert all(1.85 < r <= 2.0 for r in ratios[:3])  # near-linear regime: doubling B doubles lr*
    assert ratios[-1] < 1.2  # saturated
    assert all(r1 > r2 for r1, r2 in zip(ratios, ratios[1:]))  # bending smoothly
    assert optima[-1] < 2.0  # below the stability limit 2 / max curvature


def test_expected_loss_matches_a_step_by_step_simulation():
    # simulate the expectation recursion s <- (1 - a h)^2 s + a^2 c / B directly
    o = Options(dims=16, samples=512)
    h = np.logspace(-3, 0, o.dims)
    s = np.ones(o.dims)
    lr, b = 0.3, 8
    for _ in range(o.samples // b):
        s = (1 - lr * h) ** 2 * s + lr * lr * o.noise * h / b
    assert expected_loss(lr, b, dims=16, samples=512) == pytest.approx(0.5 * np.sum(h * s), rel=1e-10)


def test_the_harmonic_spectrum_is_zhang_et_al_s():
    # h_i = 1/i, noise variance proportional to the curvature: the expectation recursion, step by step
    dims, samples, lr, b = 50, 640, 0.7, 16
    h = 1.0 / np.arange(1, dims + 1)
    s = np.ones(dims)
    for _ in range(samples // b):
        s = (1 - lr * h) ** 2 * s + lr * lr * h / b
    options = {"spectrum": "harmonic", "dims": dims, "samples": samples}
    assert expected_loss(lr, b, **options) == pytest.approx(0.5 * np.sum(h * s), rel=1e-10)


def test_steps_to_target_are_the_fewest_steps_any_learning_rate_needs():
    target, b = 2.0, 32
    steps = steps_to_target(target, b)
    before, after = math.floor(steps), math.ceil(steps)
    grid = np.exp(np.linspace(math.log(1e-3), math.log(1.99), 2001))

    def best(n):
        return min(expected_loss(lr, b, samples=n * b) for lr in grid)

    assert best(after) <= target < best(before)  # reached at the next whole step, not at the one before
    assert steps_to_target(target, 4096, samples=16384) == math.inf  # 4 steps cannot get there


@pytest.mark.parametrize("batch_size", [8, 256])
def test_noisy_runs_average_to_the_expected_loss(batch_size):
    lr = optimal_lr(batch_size)
    losses = np.array([train(Run(lr, batch_size, seed=s)) for s in range(400)])
    stderr = losses.std() / math.sqrt(len(losses))
    assert abs(losses.mean() - expected_loss(lr, batch_size)) < 4 * stderr
    assert 0.005 < losses.std() / losses.mean() < 0.1  # noisy like real training, not swamped


def test_noiseless_runs_return_the_expected_loss():
    run = Run(0.05, 32, options={"noisy": False})
    assert train(run) == pytest.approx(expected_loss(0.05, 32))


def test_reports_are_evenly_spaced_in_samples_seen():
    run = Run(0.05, 32, options={"samples": 4096, "reports": 4})
    train(run)
    assert [step for step, _ in run.reports] == [1024, 2048, 3072, 4096]
    assert run.samples_seen == 4096


def test_learning_rates_past_the_stability_limit_diverge():
    with pytest.raises(FloatingPointError, match="loss"):
        train(Run(2.5, 1024))
    with pytest.raises(FloatingPointError):
        train(Run(50.0, 8))
    assert train(Run(optimal_lr(1024), 1024)) < DIVERGENCE_FACTOR


def test_the_same_seed_gives_the_same_run():
    assert train(Run(0.1, 16, seed=3)) == train(Run(0.1, 16, seed=3)) != train(Run(0.1, 16, seed=4))


def test_a_batch_larger_than_the_budget_is_an_error():
    with pytest.raises(ValueError, match="exceeds the budget"):
        train(Run(0.1, 2048, options={"samples": 1024}))
