"""Store a fit in its study, where every Optuna tool can read it and optuna-dashboard shows it.

Re-fitting replaces them all: the user attributes, the study note and the figures (fixed ids).
"""
from __future__ import annotations

import json

import optuna

from tuner.fit._figure import make_critical_figure, make_figure
from tuner.fit._report import to_markdown
from tuner.fit._result import FitResult
from tuner.trials import FIT_ATTR, RULE_ATTR

FIGURE_ID = "lr-batch-fit"
CRITICAL_FIGURE_ID = "lr-batch-critical"  # steps against samples to a target


def save_fit(study: optuna.Study, result: FitResult) -> None:
    """Write ``result`` to ``study.user_attrs["lr_batch_fit"]`` (plain JSON, the schema of docs/design.md), the
    study's note (markdown) and its dashboard figure."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    fitted = result.to_dict()
    if _unchanged(study.user_attrs.get(FIT_ATTR), fitted):
        return  # the same trials fit the same: on a journal file each write of the three is ~40 KB more
    study.set_user_attr(FIT_ATTR, fitted)
    study.set_user_attr(RULE_ATTR, rule_line(result))
    save_note(study, to_markdown(result))
    save_plotly_graph_object(study, make_figure(result), graph_object_id=FIGURE_ID)
    critical = make_critical_figure(result)
    if critical is not None:
        save_plotly_graph_object(study, critical, graph_object_id=CRITICAL_FIGURE_ID)


def _unchanged(stored: dict | None, fitted: dict) -> bool:
    """The stored fit says the same as this one, but for when it was made."""
    if stored is None:
        return False
    plain = [json.dumps({k: v for k, v in d.items() if k != "created"}, sort_keys=True) for d in (stored, fitted)]
    return plain[0] == plain[1]


def rule_line(result: FitResult) -> str:
    """``lr = 2.2 / (1 + 270 / B) (saturating, fitted on B=8…1024)``"""
    formula = result.rules[result.recommended].formula(digits=3)
    return f"{formula} ({result.recommended}, fitted on B={result.batch_sizes[0]}…{result.batch_sizes[-1]})"


def load_fit(study: optuna.Study) -> FitResult | None:
    """The fit stored in ``study``, or None when it has not been fitted."""
    stored = study.user_attrs.get(FIT_ATTR)
    return None if stored is None else FitResult.model_validate(stored)
