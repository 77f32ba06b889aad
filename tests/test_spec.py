"""Study files: every key is validated, unknown keys are errors, resumes may only grow the search."""
from pathlib import Path

import pytest
from conftest import spec_dict, toml_text

from tuner.errors import InputError
from tuner.spec import load_spec, parse_spec


def test_minimal_spec_gets_working_defaults():
    spec = parse_spec({"study": {"name": "s", "n_trials": 10},
                       "search": {"lr": [1e-3, 1], "batch_sizes": [64, 8, 16]},
                       "workload": {"target": "m:f", "width": 3}})
    assert spec.study.direction == "minimize" and spec.study.seed == 0
    assert spec.search.lr == [1e-3, 1.0]
    assert spec.search.batch_sizes == [8, 16, 64]  # sorted
    assert (spec.search.sampler, spec.search.pruner, spec.search.replicates) == ("valley", "valley", "auto")
    assert spec.workload.options == {"width": 3}


BAD = [
    # (table, key, value, words the message must contain)
    ("study", "name", "", "[study] name"),
    ("study", "name", 3, "[study] name"),
    ("study", "n_trials", 0, "[study] n_trials"),
    ("study", "n_trials", -5, "[study] n_trials"),
    ("study", "n_trials", 2.5, "[study] n_trials"),
    ("study", "n_trials", "10", "[study] n_trials"),
    ("study", "n_trials", True, "[study] n_trials"),
    ("study", "direction", "min", "[study] direction"),
    ("study", "seed", -1, "[study] seed"),
    ("search", "lr", [1.0, 0.1], "low < high"),
    ("search", "lr", [0.0, 0.1], "[search] lr[0]"),
    ("search", "lr", [-1e-3, 0.1], "[search] lr[0]"),
    ("search", "lr", [0.1], "expected [low, high]"),
    ("search", "lr", [0.1, 0.2, 0.3], "expected [low, high]"),
    ("search", "lr", 0.1, "expected [low, high]"),
    ("search", "lr", [1e-3, "x"], "[search] lr[1]"),
    ("search", "lr", [1e-3, float("inf")], "[search] lr[1]"),
    ("search", "batch_sizes", [], "[search] batch_sizes"),
    ("search", "batch_sizes", [8, 0], "[search] batch_sizes[1]"),
    ("search", "batch_sizes", [8, -16], "[search] batch_sizes[1]"),
    ("search", "batch_sizes", [8, 16.5], "[search] batch_sizes[1]"),
    ("search", "batch_sizes", [8, 8], "twice"),
    ("search", "batch_sizes", 8, "[search] batch_sizes"),
    ("search", "sampler", "cmaes", "[search] sampler"),
    ("search", "startup_trials", 0, "[search] startup_trials"),
    ("search", "shares", "uneven", "[search] shares"),
    ("search", "warm_start", "yes", "[search] warm_start"),
    ("search", "pruner", "hyperband", "[search] pruner"),
    ("search", "pruner_startup_trials", 1.5, "[search] pruner_startup_trials"),
    ("search", "pruner_warmup_samples", -1, "[search] pruner_warmup_samples"),
    ("workload", "target", 7, "[workload] target"),
]


@pytest.mark.parametrize("table,key,value,words", BAD, ids=[f"{t}.{k}={v!r}" for t, k, v, _ in BAD])
def test_bad_value_is_named(table, key, value, words):
    with pytest.raises(InputError) as error:
        parse_spec(spec_dict(**{table: {key: value}}))
    assert words in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("table,key", [("study", "name"), ("study", "n_trials"), ("search", "lr"),
                                       ("search", "batch_sizes"), ("workload", "target")])
def test_missing_required_key(table, key):
    spec = spec_dict()
    del spec[table][key]
    with pytest.raises(InputError, match=rf"\[{table}\] {key}: required key is missing"):
        parse_spec(spec)


@pytest.mark.parametrize("table", ["study", "search", "workload"])
def test_missing_table(table):
    spec = spec_dict()
    del spec[table]
    with pytest.raises(InputError, match=rf"\[{table}\]: required table is missing"):
        parse_spec(spec)


@pytest.mark.parametrize("table,key", [("study", "trials"), ("search", "lr_range"), ("search", "batchsizes")])
def test_unknown_key_is_an_error_listing_the_known_ones(table, key):
    with pytest.raises(InputError, match=rf"\[{table}\] {key}: unknown key \(known keys: .*"):
        parse_spec(spec_dict(**{table: {key: 1}}))


def test_unknown_table_is_an_error():
    with pytest.raises(InputError, match=r"\[serach\]: unknown key \(tables are \[study\]"):
        parse_spec({**spec_dict(), "serach": {"lr": [1, 2]}})


def test_workload_options_pass_through_unvalidated_for_user_targets():
    spec = parse_spec(spec_dict(workload={"target": "mine:train", "anything": {"nested": [1]}}))
    assert spec.workload.options["anything"] == {"nested": [1]}


def test_load_spec_reports_file_problems(tmp_path):
    with pytest.raises(InputError, match="no such study file"):
        load_spec(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[study]\nname = \n")
    with pytest.raises(InputError, match=r"broken.toml: not valid TOML: .*line 2"):
        load_spec(broken)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(InputError, match=r"empty.toml: \[study\]: required table is missing"):
        load_spec(empty)
    good = tmp_path / "good.toml"
    good.write_text(toml_text(spec_dict()))
    assert load_spec(good).study.name == "test"


def test_shipped_study_files_are_valid():
    files = sorted((Path(__file__).parent.parent / "studies").glob("*.toml"))
    assert {f.stem for f in files} >= {"quadratic", "digits-mlp-sgd"}
    for path in files:
        load_spec(path)


def test_overrides_are_validated_too():
    spec = parse_spec(spec_dict()).with_overrides(name="other", n_trials=99)
    assert (spec.study.name, spec.study.n_trials) == ("other", 99)
    with pytest.raises(InputError, match="n_trials"):
        parse_spec(spec_dict()).with_overrides(n_trials=0)


def test_the_spec_round_trips_through_the_study():
    spec = parse_spec(spec_dict(workload={"noisy": False}))
    assert parse_spec(spec.to_stored()) == spec


class TestResume:
    old = parse_spec(spec_dict())

    def test_search_may_grow_and_n_trials_change(self):
        grown = spec_dict(study={"n_trials": 100, "seed": 3},
                          search={"lr": [1e-5, 8.0], "batch_sizes": [8, 16, 32, 128, 512, 1024]})
        parse_spec(grown).check_continues(self.old)

    @pytest.mark.parametrize("change,words", [
        ({"search": {"batch_sizes": [8, 32, 128]}}, "drops"),
        ({"search": {"lr": [1e-3, 4.0]}}, "does not cover"),
        ({"search": {"lr": [1e-4, 1.0]}}, "does not cover"),
        ({"workload": {"target": "digits-mlp"}}, "was run with workload 'quadratic'"),
        ({"workload": {"samples": 8192}}, "samples=4096"),
        ({"study": {"direction": "maximize"}}, "minimize"),
    ])
    def test_incompatible_changes_are_refused(self, change, words):
        with pytest.raises(InputError, match=words):
            parse_spec(spec_dict(**change)).check_continues(self.old)


@pytest.mark.parametrize("option", ["noise = nan", "noise = -inf", "sizes = [1.0, inf]", "inner = {a = nan}"])
def test_a_workload_option_that_is_not_a_finite_number_is_refused(tmp_path, option):
    # the spec is stored in the study as JSON, which has no nan: it was stored as null and then
    # refused as "got None", or handed to a custom workload as None
    path = tmp_path / "study.toml"
    text = toml_text(spec_dict()).replace("[workload]\n", f"[workload]\n{option}\n")
    path.write_text(text)
    with pytest.raises(InputError) as error:
        load_spec(path)
    key = option.split(" ")[0]
    assert f"[workload] {key} must be a finite number, got" in str(error.value)
