"""Learn the optimal learning rate as a function of batch size from a study, and compare it with the
linear and square-root rules.

    from tuner.fit import fit_study, format_fit, save_fit

    result = fit_study(study)       # per-batch optima with intervals, four rules, a verdict
    print(format_fit(result))       # the verdict and tables, for a terminal
    save_fit(study, result)         # user attr "lr_batch_fit", a note and a figure for optuna-dashboard
    result.predict(768)             # the recommended rule's learning rate at any batch size

``load_fit(study)`` reads a stored fit back (``FitResult.model_validate``); docs/design.md gives its schema.
"""
from tuner.fit._optimum import BatchOptimum
from tuner.fit._report import format_fit, make_figure, to_markdown
from tuner.fit._result import FitResult, fit_study
from tuner.fit._rules import RULE_NAMES, Rule
from tuner.fit._save import FIGURE_ID, FIT_ATTR, load_fit, save_fit

__all__ = [
           "FIGURE_ID",
           "FIT_ATTR",
           "RULE_NAMES",
           "BatchOptimum",
           "FitResult",
           "Rule",
           "fit_study",
           "format_fit",
           "load_fit",
           "make_figure",
           "save_fit",
           "to_markdown",
]
