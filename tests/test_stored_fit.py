"""Fits already stored in users' studies keep loading and exporting the same.

``tests/data/fit-*.json`` are fits as two earlier versions stored them in ``study.user_attrs``:
``fit-landed`` by the first released tuner (no noise, interval bounds or cost errors), and
``fit-before-typed`` by the last version whose fit result was a hand-serialized dataclass. The
``.py.txt`` and ``.md.txt`` beside them are what that last version exported for each (``tuner export
--format python`` / ``markdown`` to stdout); today's must be the same, byte for byte, but for one fix:
that version's report ended with the dashboard note's footer ("`tuner fit` replaces this note.") before
its own, a line the fixtures no longer hold.
"""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pydantic
import pytest

from tuner.fit import FIT_ATTR, FitResult, format_fit, load_fit, save_fit, to_python, to_report

DATA = Path(__file__).parent / "data"
FIXTURES = ["fit-landed", "fit-before-typed"]


def stored(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", FIXTURES)
def test_a_stored_fit_exports_as_before(name):
    fit = FitResult.model_validate(stored(name))
    assert to_python(fit) == (DATA / f"{name}.py.txt").read_text(encoding="utf-8")
    report = to_report(fit)
    assert report == (DATA / f"{name}.md.txt").read_text(encoding="utf-8")
    assert "replaces this note" not in report and report.count("<sub>Fitted") == 1


@pytest.mark.parametrize("name", FIXTURES)
def test_a_stored_fit_reads_back_with_every_stored_value(name):
    fit = stored(name)
    again = FitResult.model_validate(fit).to_dict()
    nested = ("rules", "optimal_lr")  # keys added since (noise, cost errors) are new there, not changed ones
    assert {key: again[key] for key in fit if key not in nested} == {k: v for k, v in fit.items() if k not in nested}
    for rule_name, rule in fit["rules"].items():
        assert {key: again["rules"][rule_name][key] for key in rule} == rule
    for old, new in zip(fit["optimal_lr"], again["optimal_lr"]):
        assert {key: new[key] for key in old} == old


def test_a_stored_fit_loads_from_a_study_and_stores_again_unchanged(tmp_path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    study = optuna.create_study(study_name="fixture", storage=storage)
    study.set_user_attr(FIT_ATTR, stored("fit-before-typed"))
    result = load_fit(optuna.load_study(study_name="fixture", storage=storage))
    assert result.predict(100) == pytest.approx(result.rules[result.recommended].predict(100))
    assert "saturating*" in format_fit(result)
    save_fit(study, result)
    assert optuna.load_study(study_name="fixture", storage=storage).user_attrs[FIT_ATTR] == stored("fit-before-typed")


def test_the_fit_result_cannot_be_changed_after_it_is_built():
    result = FitResult.model_validate(stored("fit-before-typed"))
    with pytest.raises(pydantic.ValidationError):
        result.recommended = "linear"
    with pytest.raises(pydantic.ValidationError):
        result.rules["linear"].alpha = 2.0
    assert isinstance(result.optima, tuple) and isinstance(result.rules["power"].alpha_ci, tuple)


def test_a_stored_fit_with_a_wrong_type_is_refused_with_the_field_named():
    fit = stored("fit-before-typed")
    fit["rules"]["linear"]["bic"] = "low"
    with pytest.raises(pydantic.ValidationError, match=r"rules\.linear\.bic"):
        FitResult.model_validate(fit)
