"""Learn the optimal learning rate as a function of batch size from a study, and compare it with the
linear and square-root rules.

    from tuner.fit import fit_study, format_fit, save_fit

    result = fit_study(study)       # per-batch optima with intervals, four rules, a verdict
    print(format_fit(result))       # the verdict and tables, for a terminal
    save_fit(study, result)         # user attr "lr_batch_fit", a note and a figure for optuna-dashboard
    result.predict(768)             # the recommended rule's learning rate at any batch size

Every view of a result is composed of the same parts (``_report``: the tables and warnings;
``_figure``: the figure's series; ``_frameworks``: the rule in timm/MMEngine/PyTorch terms): the
terminal text, the study note, the exported report (``to_report``) and module (``to_python``), the
dashboard's plotly figure (``make_figure``) and the report's PNG (``save_png``).

``load_fit(study)`` reads a stored fit back (``FitResult.model_validate``); docs/design.md gives its schema.
"""
from tuner.fit._figure import make_figure, save_png
from tuner.fit._frameworks import fitted_range, framework_lines
from tuner.fit._module import to_python
from tuner.fit._optimum import BatchOptimum
from tuner.fit._report import format_fit, to_markdown, to_report
from tuner.fit._result import FitResult, fit_study
from tuner.fit._rules import RULE_NAMES, Rule
from tuner.fit._save import CRITICAL_FIGURE_ID, FIGURE_ID, FIT_ATTR, load_fit, save_fit

__all__ = [
           "CRITICAL_FIGURE_ID",
           "FIGURE_ID",
           "FIT_ATTR",
           "RULE_NAMES",
           "BatchOptimum",
           "FitResult",
           "Rule",
           "fit_study",
           "fitted_range",
           "format_fit",
           "framework_lines",
           "load_fit",
           "make_figure",
           "save_fit",
           "save_png",
           "to_markdown",
           "to_python",
           "to_report",
]
