"""The benchmark code cannot rot: `python -m benchmarks --quick` runs every benchmark end to end (tiny
budgets, one seed, no PostgreSQL) and writes every table. The numbers are not checked: they are not tests."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_writes_every_table(tmp_path):
    output = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "-o", str(output)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    text = output.read_text()
    for heading in ["# Benchmark results", "## Goals", "## 1. Accuracy", "## 2. Overhead", "## 3. Scaling",
                    "## 4. The panel", "## 11. Held-out shapes"]:
        assert heading in text
    for row in ["| optuna ", "| torch ", "| CPU ", "python -m benchmarks --quick",  # header: machine, versions
                "| tuner (fitted optimum) ", "| plain Optuna ", "| random search ", "| dense grid (17/batch) ",
                "| journal file (default) ", "| SQLite ", "| in-memory ", "`storage.set_trial_intermediate_value`",
                "| journal file | ", "tuner fit", "1a. ", "1a′. ", "1b. ", "2a. ", "2b. ",
                "| quadratic ", "| valley-sqrt-5% ", "| cnn-adam-accuracy ", "| cnn-adam-accuracy-replay ", "| optuna ",
                "10. synthetic", "10. real", "| law ", "| metric ", "worst cells",
                "a quadratic in log-lr through its runs"]:
        assert row in text, row
    assert text.count("| met ") + text.count("| **missed** ") == 9  # nine goals (no baseline here), with status
    assert "## 1. Accuracy" in done.stdout  # the tables are printed too


def test_unknown_benchmark_is_a_usage_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "speed", "-o", str(tmp_path / "r.md")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown benchmark speed" in done.stderr
    assert not (tmp_path / "r.md").exists()


def test_the_synthetic_oracle_finds_a_noiseless_valley_exactly_and_pays_only_for_its_spacing():
    """On a valley that is a quadratic in log-lr, noiseless, the oracle's quadratic lands on the
    optimum; the best of its five learning rates ×√2 apart, placed within ×√2 of the optimum, lies at
    most ×2^¼ from it (half a step), and costs what the truth says that half step costs."""
    from benchmarks.panel_workloads import ValleyTruth, synthetic_oracle_regret, valley

    truth = ValleyTruth(alpha=0.5, steep_above=1.0, cliff=5.0)
    best_mean, quadratic = synthetic_oracle_regret(valley("exact", truth, noise=0.0, n_trials=60), runs=15, draws=20)
    half_step = truth.regret(16, truth.optimum(16) * 2 ** 0.25)
    assert quadratic.max() < 1e-9
    assert 0 < best_mean.max() <= half_step + 1e-12
