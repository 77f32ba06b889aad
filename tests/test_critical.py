"""Which batch size to use: steps to a target per batch size, and the critical batch size, against the
noisy quadratic's closed form (``tuner.workloads.quadratic.steps_to_target``)."""
from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
from conftest import tuner
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.storages import InMemoryStorage
from optuna.trial import create_trial

from tuner.fit import FitResult, fit_study, format_fit, to_markdown
from tuner.fit._figure import CRITICAL_CURVE, CRITICAL_POINTS, critical_png_figure, make_critical_figure
from tuner.runner import open_study, run_study
from tuner.spec import parse_spec
from tuner.trials import NOISE_SCALE
from tuner.workload import load_workload
from tuner.workloads import quadratic

SIZES = [8, 32, 128, 512]
OPTIONS = {"reports": 32}  # a report every 3% of the run: the reading interpolates between them
TARGET = 1.2


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = parse_spec({"study": {"name": "quadratic", "n_trials": 64, "seed": 0},
                       "search": {"lr": [1e-4, 4.0], "batch_sizes": SIZES},
                       "workload": {"target": "quadratic", **OPTIONS}})
    study = open_study(spec, InMemoryStorage())
    run_study(study, spec, load_workload(spec))
    return study


def test_steps_to_a_target_match_the_closed_form_at_every_batch_size(study):
    critical = fit_study(study, target=TARGET).critical
    assert critical.target == TARGET and not critical.default_target
    assert [r.batch_size for r in critical.batches] == SIZES
    for reading in critical.batches:
        exact = quadratic.steps_to_target(TARGET, reading.batch_size, **OPTIONS)
        assert reading.reached and reading.steps == pytest.approx(exact, rel=0.10), reading
        assert reading.steps_ci[0] <= reading.steps <= reading.steps_ci[1]
        assert reading.samples == pytest.approx(reading.steps * reading.batch_size)


def test_the_critical_batch_size_matches_the_closed_form_e_min_over_s_min(study):
    # S_min: the fewest steps with the full gradient (a batch of a million); E_min: the fewest samples, at B=1
    unlimited = {"samples": 2**40}
    s_min = quadratic.steps_to_target(TARGET, 2**20, **unlimited)
    e_min = quadratic.steps_to_target(TARGET, 1, **unlimited)
    critical = fit_study(study, target=TARGET).critical
    assert math.exp(abs(math.log(critical.b_crit / (e_min / s_min)))) < 1.5, (critical.b_crit, e_min / s_min)
    low, high = critical.b_crit_ci
    assert low < critical.b_crit < high
    assert critical.e_min == pytest.approx(critical.s_min * critical.b_crit)


def test_the_verdict_says_how_many_fewer_steps_and_where_doubling_stops_paying(study):
    result = fit_study(study, target=TARGET)
    critical = result.critical
    small, large = critical.batches[0], critical.batches[-1]
    assert (f"To reach 1.2 in the metric: B=8 needs {small.steps:,.0f} steps, B=512 needs {large.steps:,.0f} "
            f"({small.steps / large.steps:.1f}× fewer steps for {large.samples / small.samples:.1f}× the samples)."
            ) in result.verdict
    assert f"Critical batch size ≈ {critical.b_crit:.0f} (95% CI" in result.verdict
    assert "The learning rates' saturating rule puts B_noise at" in result.verdict
    assert "Steps to reach 1.2 (given):" in format_fit(result)
    assert "### Steps to reach 1.2 (given)" in to_markdown(result)


def test_the_default_target_is_one_several_runs_of_every_batch_size_reach(study):
    critical = fit_study(study).critical
    assert critical.default_target and all(r.reached for r in critical.batches)
    for batch_size in SIZES:
        runs = [t for t in study.trials if t.params.get("batch_size") == batch_size and t.intermediate_values]
        assert sum(min(t.intermediate_values.values()) <= critical.target for t in runs) >= 3


def test_a_target_some_batch_sizes_never_reach_is_said_and_left_out_of_the_curve(study):
    # at 1.0 the largest batch sizes run out of steps first (the budget is in samples)
    target = 0.9 * min(min(t.intermediate_values.values()) for t in study.trials
                       if t.params.get("batch_size") == 512 and t.intermediate_values)
    result = fit_study(study, target=target)
    missed = [r.batch_size for r in result.critical.batches if not r.reached]
    assert 512 in missed
    assert f"B={', '.join(map(str, missed))} never reach" in result.verdict
    assert "not reached" in format_fit(result)


def test_a_target_reached_by_the_first_report_is_said_and_left_out_of_the_curve(study):
    result = fit_study(study, target=1e9)  # far above the untrained model's loss
    assert all(r.reached and r.early for r in result.critical.batches) and result.critical.b_crit is None
    assert f"At B={', '.join(map(str, SIZES))} a run reaches it by its first report" in result.verdict
    assert make_critical_figure(result) is None


def test_a_maximized_metric_reads_the_same_steps_as_its_minimized_mirror(study):
    mirror = optuna.create_study(direction="maximize")
    for t in study.trials:
        if t.value is not None or t.intermediate_values:
            mirror.add_trial(create_trial(
                state=t.state, value=None if t.value is None else -t.value, params=t.params,
                distributions=t.distributions, user_attrs=t.user_attrs,
                intermediate_values={s: -v for s, v in t.intermediate_values.items()}))
    mine, theirs = fit_study(study, target=TARGET).critical, fit_study(mirror, target=-TARGET).critical
    assert [r.steps for r in theirs.batches] == [r.steps for r in mine.batches]
    assert theirs.b_crit == pytest.approx(mine.b_crit)


def test_the_reading_is_stored_with_the_fit_and_reads_back(study):
    data = fit_study(study, target=TARGET).to_dict()
    assert {"target", "batches", "s_min", "e_min", "b_crit", "b_crit_ci"} <= set(data["critical"])
    again = FitResult.model_validate(json.loads(json.dumps(data)))
    assert again.to_dict() == data and again.critical.steps_at(64) > again.critical.steps_at(128)


def test_trials_without_learning_curves_have_no_reading_and_store_no_key():
    study = optuna.create_study()
    distributions = {"batch_size": IntDistribution(1, 4096), "lr": FloatDistribution(1e-6, 10.0, log=True)}
    for b in SIZES:
        for k in range(9):
            lr = 1e-3 * b * math.exp((k - 4) / 3)
            study.add_trial(create_trial(value=math.log(lr / (1e-3 * b)) ** 2 + 1.0, params={"batch_size": b, "lr": lr},
                                         distributions=distributions))
    result = fit_study(study)
    assert result.critical is None and "critical" not in result.to_dict() and "Critical" not in result.verdict
    # a study of the final metric: no goal, and a verdict that does not say steps were scored
    assert result.goal is None and "goal" not in result.to_dict()
    assert not result.verdict.startswith("Each batch size was tuned")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_target_that_is_not_a_finite_number_is_one_line_and_exit_2(tmp_path, value):
    store = str(tmp_path / "j.log")  # checked before the study is looked for
    p = tuner("fit", "nosuch", "--target", value, "--storage", store, cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "--target" in p.stderr and f"must be a finite number, got {value}" in p.stderr


def record(batch_size: int, samples: list[int], b_simple: float) -> dict:
    """A noise scale record whose every window says ``b_simple``: |G|² = 1 and tr(Σ) = b_simple, so the
    batch's squared norm averages 1 + b_simple / B and its half's 1 + b_simple / (B / 2)."""
    half = batch_size // 2
    return {"batch": batch_size, "half": half, "samples": samples, "big": [1 + b_simple / batch_size] * len(samples),
            "small": [1 + b_simple / half] * len(samples), "steps": [4] * len(samples)}


def test_the_noise_scale_where_the_runs_reach_the_target_is_reported_beside_the_critical_batch_size(study):
    # runs whose records say a known B_simple: 50 up to the target's samples, 500 long after it (it
    # grows as the loss falls): only the windows near where each run reaches the target count
    copy = optuna.create_study()
    for t in study.trials:
        attrs = dict(t.user_attrs)
        reached = [s for s, v in sorted(t.intermediate_values.items()) if v <= TARGET]
        if reached:  # the run reaches the target by its report at reached[0] samples, and not before half it
            b, samples = t.params["batch_size"], sorted(t.intermediate_values)
            early = record(b, [s for s in samples if s <= 2 * reached[0]], 50.0 + t.number % 7)
            late = record(b, [s for s in samples if s > 2 * reached[0]], 500.0)
            attrs[NOISE_SCALE] = {**early, **{k: early[k] + late[k] for k in ("samples", "big", "small", "steps")}}
        copy.add_trial(create_trial(state=t.state, value=t.value, params=t.params, distributions=t.distributions,
                                    user_attrs=attrs, intermediate_values=t.intermediate_values))
    result = fit_study(copy, target=TARGET)
    critical = result.critical
    assert 50.0 <= critical.b_simple <= 56.0 and critical.b_simple_ci[0] <= critical.b_simple <= critical.b_simple_ci[1]
    assert critical.n_noise_scales >= 3 * len(SIZES)  # at least the three runs nearest each optimum
    assert f"B_simple ≈ {critical.b_simple:.0f} (95% CI" in result.verdict
    assert fit_study(study, target=TARGET).critical.b_simple is None  # runs that measured none


def test_the_dashboard_figure_and_the_png_draw_the_same_steps_against_samples(study):
    result = fit_study(study, target=TARGET)
    dashboard, axes = make_critical_figure(result), critical_png_figure(result).axes[0]
    points = next(t for t in dashboard.data if t.name == CRITICAL_POINTS)
    drawn = axes.containers[0].lines[0]
    np.testing.assert_allclose(np.asarray(drawn.get_xdata(), float), np.asarray(points.x, float))
    np.testing.assert_allclose(np.asarray(drawn.get_ydata(), float), np.asarray(points.y, float))
    assert list(points.x) == [r.steps for r in result.critical.timed]
    curve = next(t for t in dashboard.data if t.name == CRITICAL_CURVE)
    line = next(line for line in axes.get_lines() if line.get_label() == CRITICAL_CURVE)
    np.testing.assert_allclose(np.asarray(line.get_xdata(), float), np.asarray(curve.x, float))
    np.testing.assert_allclose(np.asarray(line.get_ydata(), float), np.asarray(curve.y, float))
    assert [t.get_text() for t in axes.texts] == [f"B={b}" for b in SIZES]
