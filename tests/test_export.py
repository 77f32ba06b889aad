"""`tuner export` on a real fitted study (the shipped noisy-quadratic study file, run and fitted once per
module): the JSON and YAML are the stored result, the Python module gives the fit's own predictions,
the markdown report has its figure beside it, and bad input or a secret never gets out."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import spec_dict, tuner

from tuner.errors import InputError
from tuner.export import FORMATS, export_fit, figure_path
from tuner.fit import FIT_ATTR, RULE_NAMES, FitResult, fit_study, fitted_range, save_fit
from tuner.runner import open_study, run_study
from tuner.spec import load_spec, parse_spec
from tuner.storage import open_storage
from tuner.workload import load_workload

STUDY_FILE = Path(__file__).resolve().parents[1] / "studies" / "quadratic.toml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A journal holding the quadratic study, run and fitted as `tuner run` does, and a study with no fit."""
    journal = tmp_path_factory.mktemp("export") / "studies.journal"
    storage = open_storage(str(journal), create=True)
    for spec, fitted in ((load_spec(STUDY_FILE), True),
                         (parse_spec(spec_dict(study={"name": "unfitted", "n_trials": 8})), False)):
        study = open_study(spec, storage)
        run_study(study, spec, load_workload(spec))
        if fitted:
            save_fit(study, fit_study(study))
    fit = optuna.load_study(study_name="quadratic", storage=storage).user_attrs[FIT_ATTR]
    return journal, fit


def export(journal: Path, *args: str, cwd: Path, study: str = "quadratic") -> subprocess.CompletedProcess:
    return tuner("export", study, "--storage", str(journal), *args, cwd=cwd)


def import_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12)


# --- json and yaml ----------------------------------------------------------------------------------

def keys_in_order(value):
    if isinstance(value, dict):
        return [(k, keys_in_order(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [keys_in_order(v) for v in value]
    return None


def test_json_and_yaml_are_exactly_the_stored_result(stored, tmp_path):
    journal, fit = stored
    for fmt, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        p = export(journal, "--format", fmt, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        assert load(p.stdout) == fit
        assert keys_in_order(load(p.stdout)) == keys_in_order(fit)
    p = export(journal, "--format", "yaml", "-o", "fit.yaml", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout == "", p.stderr
    assert yaml.safe_load((tmp_path / "fit.yaml").read_text(encoding="utf-8")) == fit


def test_yaml_floats_round_trip_exactly():
    fit = {"study": "s", "values": [0.1, 1e-05, 2.5e16, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, None, 7],
           "nested": {"ci": [0.057783893741991166, 0.08209810960826608], "yes": "no"}}
    assert yaml.safe_load(export_fit(fit, "yaml")) == fit
    assert json.loads(export_fit(fit, "json")) == fit


# --- python ---------------------------------------------------------------------------------------

def test_python_module_gives_the_fits_own_predictions(stored, tmp_path):
    journal, fit = stored
    p = export(journal, "--format", "python", "-o", "lr_rule.py", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    module = import_module(tmp_path / "lr_rule.py")
    name = fit["recommended"]
    assert module.RULE["name"] == name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing in the fitted range warns
        for b, lr in zip(fit["batch_sizes"], fit["rules"][name]["lr"], strict=True):
            assert close(module.lr_for_batch_size(b), lr), b
        result = FitResult.model_validate(fit)
        low, high = fitted_range(result)
        for b in range(low, high + 1, 7):  # mostly batch sizes never measured
            assert close(module.lr_for_batch_size(b), result.predict(b)), b
    doc = module.__doc__
    for words in (f"'{fit['study']}'", "minimized", f"B = {low} ... {high}", fit["created"], fit["tuner_version"],
                  f"reference B: {fit['reference_batch_size']}", "from lr_rule import lr_for_batch_size",
                  "timm", "MMEngine", "Lightning"):
        assert words in doc, words


def test_python_module_warns_outside_the_fitted_range_and_refuses_nonsense(stored, tmp_path):
    _, fit = stored
    path = tmp_path / "rule.py"
    export_fit(fit, "python", path)
    module = import_module(path)
    low, high = fitted_range(FitResult.model_validate(fit))
    for b in (low, high, (low + high) // 2):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            module.lr_for_batch_size(b)
    for b in (max(1, low // 2), high * 2, high + 1):
        with pytest.warns(module.OutsideFittedRange, match="outside the batch sizes the rule was fitted on"):
            lr = module.lr_for_batch_size(b)
        assert close(lr, FitResult.model_validate(fit).predict(b))  # still the rule's value
    assert issubclass(module.OutsideFittedRange, UserWarning)
    for bad in (0, -8, math.nan, math.inf):
        with pytest.raises(ValueError, match="batch_size must be a positive number"):
            module.lr_for_batch_size(bad)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_python_module_for_every_rule_is_exact_plain_and_lint_clean(stored, tmp_path, rule):
    """Whichever rule is recommended, the generated code is that rule, to the last bit or so."""
    _, stored_fit = stored
    fit = copy.deepcopy(stored_fit)
    fit["recommended"] = rule
    path = tmp_path / f"lr_{rule}.py"
    text = export_fit(fit, "python", path)
    assert path.read_text(encoding="utf-8") == text
    assert text.isascii()
    assert all(len(line) <= 88 for line in text.splitlines())
    assert f"from lr_{rule} import lr_for_batch_size" in text
    module = import_module(path)
    result = FitResult.model_validate(fit)
    low, high = fitted_range(result)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", module.OutsideFittedRange)
        for b, lr in zip(fit["batch_sizes"], fit["rules"][rule]["lr"], strict=True):
            assert close(module.lr_for_batch_size(b), lr), (rule, b)
        for b in (low + 1, 100, 333, high - 1, 3 * high):
            assert close(module.lr_for_batch_size(b), result.predict(b)), (rule, b)
    for other in RULE_NAMES:  # the alternatives, as comments
        assert f"#   {other} (BIC" in text
    ruff = Path(sys.executable).parent / "ruff"
    ruff = str(ruff) if ruff.exists() else shutil.which("ruff")
    if ruff:
        p = subprocess.run([ruff, "check", "--no-cache", "--isolated", "--select", "E,F,W,I,UP,B,Q,D401",
                            str(path)], check=False, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr


def test_batch_sizes_left_out_of_the_rules_are_outside_the_fitted_range(stored, tmp_path):
    """An optimum at the edge of the LR range, or none at all, is left out of the rules: the module
    warns there, the report still lists it, the figure marks it. A study name full of quotes and
    backslashes still makes valid Python."""
    _, stored_fit = stored
    fit = copy.deepcopy(stored_fit)
    first, last = fit["optimal_lr"][0], fit["optimal_lr"][-1]
    first.update(lr=None, ci=None, n_complete=0, flags=["no-complete-trials"])
    last["flags"] = ["edge-high"]
    fit["study"] = 'odd """name\\ $x'
    export_fit(fit, "python", tmp_path / "odd.py")
    module = import_module(tmp_path / "odd.py")
    assert (module.MIN_BATCH_SIZE, module.MAX_BATCH_SIZE) == (fit["batch_sizes"][1], fit["batch_sizes"][-2])
    assert "'odd \"\"\"name\\\\ $x'" in module.__doc__
    with pytest.warns(module.OutsideFittedRange):
        module.lr_for_batch_size(fit["batch_sizes"][-1])
    report = export_fit(fit, "markdown", tmp_path / "odd.md")
    assert "no-complete-trials" in report and "edge-high" in report
    assert (tmp_path / "odd.png").read_bytes()[:8] == PNG_SIGNATURE


def test_framework_mapping_says_where_the_rule_does_and_does_not_map(stored):
    _, stored_fit = stored
    fit = copy.deepcopy(stored_fit)
    fit["recommended"] = "linear"
    report = export_fit(fit, "markdown")
    assert "--lr-base-scale linear" in report and "exactly this rule" in report
    base = fit["rules"]["linear"]["batch_size_ref"]  # the reference batch size, which the study measured
    assert base == fit["reference_batch_size"] and base in fit["batch_sizes"]
    assert f"auto_scale_lr = dict(enable=True, base_batch_size={base})" in report
    fit["recommended"] = "sqrt"
    report = export_fit(fit, "markdown")
    assert "--lr-base-scale sqrt" in report
    assert "`auto_scale_lr` scales linearly only" in report
    fit["recommended"] = "saturating"
    report = export_fit(fit, "markdown")
    assert "no option for the saturating rule" in report and "use the exported Python module" in report
    assert "is within ×1.25 of it" in report


# --- markdown ----------------------------------------------------------------------------------------

def test_markdown_report_with_its_figure_beside_it(stored, tmp_path):
    journal, fit = stored
    p = export(journal, "--format", "markdown", "-o", "report.md", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    png = tmp_path / "report.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 20_000
    assert "](report.png)" in report
    # studies/quadratic.toml reports 32 times per run: the steps to a target, and their figure
    critical = tmp_path / "report-critical.png"
    assert critical.read_bytes()[:8] == PNG_SIGNATURE and critical.stat().st_size > 20_000
    assert "](report-critical.png)" in report and "## Steps to reach" in report
    assert fit["verdict"] in report
    for b in fit["batch_sizes"]:
        assert f"\n| {b} | " in report, b
    for row in ("| linear | ", "| sqrt | ", "| power", "| saturating"):
        assert row in report, row
    for header in ("optimal lr", "interval", "trials", "BIC", "AIC", "leave-one-out", "worst miss"):
        assert header in report, header
    assert "timm" in report and "MMEngine" in report and "Lightning" in report

    p = export(journal, "--format", "markdown", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert fit["verdict"] in p.stdout and "![" not in p.stdout
    assert "-o report.md" in p.stdout  # says how to get the figure
    assert sorted(f.name for f in tmp_path.iterdir()) == ["report-critical.png", "report.md", "report.png"]


def test_the_figure_never_overwrites_the_report():
    assert figure_path(Path("out/report.md")) == Path("out/report.png")
    assert figure_path(Path("report")) == Path("report.png")
    assert figure_path(Path("report.png")) == Path("report-figure.png")


# --- bad input and secrets --------------------------------------------------------------------------

def test_bad_input_exits_2_with_one_line(stored, tmp_path):
    journal, _ = stored
    cases = [
        (export(journal, "--format", "toml", cwd=tmp_path), "'toml' is not one of"),
        (export(journal, "--format", "json", cwd=tmp_path, study="unfitted"), "run `tuner fit unfitted` first"),
        (export(journal, "--format", "json", cwd=tmp_path, study="nope"), "no study named 'nope'"),
        (export(journal, "--format", "json", "-o", "no/such/dir/fit.json", cwd=tmp_path), "does not exist"),
    ]
    for p, words in cases:
        assert p.returncode == 2, p.stderr
        assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1 and words in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_output_holds_the_storage_or_a_password(stored, tmp_path):
    journal, fit = stored
    p = tuner("export", "x", "--storage", "postgresql+psycopg://u:s3cretpw@127.0.0.1:9/db", "--format", "json",
              cwd=tmp_path, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "s3cretpw" not in p.stdout + p.stderr
    assert "://" not in json.dumps(fit) and str(journal) not in json.dumps(fit)
    for fmt in FORMATS:
        text = export_fit(fit, fmt)
        assert "://" not in text and str(journal) not in text and journal.name not in text, fmt


def test_a_fit_holding_a_password_is_not_exported(stored, tmp_path):
    _, stored_fit = stored
    fit = copy.deepcopy(stored_fit)
    fit["warnings"] = ["copied from postgresql://tuner:hunter2@db.example/studies"]
    for fmt in FORMATS:
        with pytest.raises(InputError, match="URL with a password") as error:
            export_fit(fit, fmt, tmp_path / f"out.{fmt}")
        assert "hunter2" not in str(error.value)
    assert list(tmp_path.iterdir()) == []
