"""Benchmarks that show where the tuner stands; ``python -m benchmarks`` runs them and writes
benchmarks/RESULTS.md (machine, date, package versions, the command, a table per benchmark).

1. ``accuracy``: the rule's accuracy per compute on the noisy quadratic (exact optimum known), against
   a grid, plain Optuna and random search at equal trial budgets.
2. ``overhead``: the tuner's wall time over the workload's own time, where the rest goes, and the
   built-in trainer against a bare PyTorch loop.
3. ``scaling``: trials per second with 1, 2 and 4 workers on each storage; `tuner fit` time at 10²–10⁴ trials.
4. ``panel``: regret against a truth on workloads of different shapes (two noisy quadratics, synthetic
   valleys at 1%, 5% and 15% noise, an MLP with momentum, a CNN with Adam on loss and on accuracy),
   the tuner against itself before issue 10 and plain Optuna (``benchmarks/panel.py``; the real
   workloads' truth is a dense grid of runs, ``python -m benchmarks.grids``).

The older single-purpose scripts run on their own: ``fit_accuracy.py`` (fit accuracy on known optima),
``pruning_savings.py`` (samples saved by per-batch pruning), ``trainer_throughput.py``.
"""
