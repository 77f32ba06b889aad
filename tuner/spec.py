"""Study files: TOML with [study], [search] and [workload] tables, validated when loaded.

    [study]
    name = "digits-mlp-sgd"   # required
    n_trials = 120            # finished trials (complete + pruned) to reach, across all workers
    [search]
    lr = [1e-4, 2.0]          # log-uniform learning-rate range
    batch_sizes = [8, 16, 32, 64, 128, 256, 512]
    [workload]
    target = "digits-mlp"     # built-in name, or "module:callable"; other keys reach it as run.options
    # or a training script, one process per trial (tuner.command); other keys fill its {placeholders}:
    # command = ["python", "train.py", "--lr", "{lr}", "--batch-size", "{batch_size}", "--seed", "{seed}"]

Every key is checked (type, range) and an unknown key is an error, so a typo is never ignored.
"""
from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuner.errors import InputError

PRUNER_STARTUP_TRIALS = 3  # complete trials a batch size needs before its trials can be pruned

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h)$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(duration: str) -> float:
    """'30m' -> 1800.0 (a ``Duration``: a number with s, m or h)."""
    number, unit = _DURATION.match(duration.strip()).groups()
    return float(number) * _UNIT_SECONDS[unit]


def _duration(value: Any) -> str:
    if not isinstance(value, str) or not _DURATION.match(value.strip()) or seconds(value) <= 0:
        raise ValueError(f"a duration such as \"90s\", \"30m\" or \"2h\", got {value!r}")
    return value.strip()


Duration = Annotated[str, BeforeValidator(_duration)]
COMMAND_KEYS = ("cwd", "env", "timeout", "grace")  # keys of [workload] that only a command workload has


class _Table(BaseModel):
    # strict: TOML is typed, so "8" or true where a number belongs is a mistake, not something to coerce
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class StudyTable(_Table):
    name: str
    n_trials: PositiveInt
    direction: Literal["minimize", "maximize"] = "minimize"  # the metric's
    seed: NonNegativeInt = 0
    # a metric value to reach: each batch size is tuned for the fewest steps to it (Shallue et al. 2019),
    # a run stops when it gets there, and the trial's value is the steps it took (minimized)
    goal: float | None = Field(None, allow_inf_nan=False)

    @property
    def objective(self) -> Literal["minimize", "maximize"]:
        """What the Optuna study optimizes: the metric, or with a ``goal`` the steps to it (fewer is better)."""
        return "minimize" if self.goal is not None else self.direction

    @field_validator("name")
    @classmethod
    def _not_blank(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("must not be blank")
        return name


class SearchTable(_Table):
    lr: Annotated[list[PositiveFloat], Field(min_length=2, max_length=2)]
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)]
    sampler: Literal["valley", "tpe", "random"] = "valley"
    startup_trials: PositiveInt = 4
    shares: Literal["auto", "adaptive", "even"] = "auto"  # auto: adaptive from ADAPTIVE_FROM trials per batch size
    warm_start: bool | None = None  # None: on below WARM_START_BELOW trials per batch size, or with a goal
    replicates: Literal["auto"] | Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = "auto"
    pruner: Literal["valley", "median", "none"] = "valley"
    pruner_startup_trials: NonNegativeInt = PRUNER_STARTUP_TRIALS
    pruner_warmup_samples: NonNegativeInt = 0

    @field_validator("lr", mode="before")
    @classmethod
    def _a_pair(cls, lr: Any) -> Any:
        if not isinstance(lr, list) or len(lr) != 2:
            raise ValueError(f"expected [low, high], got {lr!r}")
        return lr

    @field_validator("lr")
    @classmethod
    def _low_below_high(cls, lr: list[float]) -> list[float]:
        if not lr[0] < lr[1]:
            raise ValueError(f"needs low < high, got [{lr[0]:g}, {lr[1]:g}]")
        return lr

    @field_validator("batch_sizes")
    @classmethod
    def _distinct_ascending(cls, sizes: list[int]) -> list[int]:
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"lists a batch size twice: {sizes}")
        return sorted(sizes)


class WorkloadTable(BaseModel):
    """What trains: ``target``, a callable ``train(run)`` (a built-in name or "module:callable"), or
    ``command``, a training script run as one process per trial (``tuner.command``). Every other key
    is the workload's own option: ``run.options`` for a callable, a ``{placeholder}`` for a command."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    target: str | None = None
    command: Annotated[list[str], Field(min_length=1)] | None = None
    cwd: str | None = None             # a command's working directory (default: the study file's folder)
    env: dict[str, str] | None = None  # set in a command's environment, over the tuner's own
    timeout: Duration | None = None    # a command's limit per trial, e.g. "30m"
    grace: Duration = "10s"            # how long a command stopped by the pruner may take to exit

    @model_validator(mode="after")
    def _one_kind(self) -> WorkloadTable:
        if self.target is None and self.command is None:
            raise ValueError("target: required key is missing (or command = [...] to run a training script)")
        if self.target is not None and self.command is not None:
            raise ValueError("give target (a callable) or command (a script), not both")
        if self.target is not None:
            extra = [key for key in COMMAND_KEYS if key in self.model_fields_set]
            if extra:
                raise ValueError(f"{extra[0]}: only for a command workload (this one has a target)")
        if self.command is not None and not self.command[0].strip():
            raise ValueError("command[0]: the program to run must not be blank")
        # the spec is stored in the study as JSON, where nan and inf cannot go (they became None)
        for key, value in (self.model_extra or {}).items():
            if _not_finite(value):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def trains_like(self, other: WorkloadTable) -> bool:
        """The same training: everything but how long a command may take (a resumed study may
        lengthen a timeout)."""
        limits = {"timeout", "grace"}
        return self.model_dump(exclude=limits) == other.model_dump(exclude=limits)


def _not_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_not_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_not_finite(v) for v in value)
    return False


class StudySpec(_Table):
    study: StudyTable
    search: SearchTable
    workload: WorkloadTable

    @model_validator(mode="after")
    def _pruner_for_the_goal(self) -> StudySpec:
        if self.study.goal is not None and self.search.pruner == "median":
            raise ValueError("[search] pruner = \"median\" compares the metric at equal samples, but with a [study] "
                             "goal the trials are scored by the steps to it; use \"valley\" (stops a run once it "
                             "took twice the steps of the fastest) or \"none\"")
        return self

    def to_stored(self) -> dict[str, Any]:
        """Plain JSON for the study's user attributes (the spec travels with the study)."""
        stored = self.model_dump(mode="json")
        stored["workload"] = self.workload.model_dump(mode="json", exclude_unset=True)  # the keys given
        return stored

    def with_overrides(self, *, name: str | None = None, n_trials: int | None = None) -> StudySpec:
        study = self.study.model_dump()
        if name is not None:
            study["name"] = name
        if n_trials is not None:
            study["n_trials"] = n_trials
        return parse_spec({**self.to_stored(), "study": study}, source="command line")

    def check_continues(self, stored: StudySpec) -> None:
        """Raise InputError unless this spec can resume a study run with ``stored``.

        The workload and direction must match; the search may only grow (more batch sizes, a wider
        LR range), so every finished trial stays inside the search space.
        """
        name = self.study.name
        if not self.workload.trains_like(stored.workload):
            raise InputError(
                f"study '{name}' was run with workload {_show(stored.workload)}, this spec has "
                f"{_show(self.workload)}; use a new study name (--study-name) for a different workload"
            )
        if self.study.goal != stored.study.goal:
            raise InputError(f"study '{name}' was run {_goal_text(stored.study.goal)}, this spec "
                             f"{_goal_text(self.study.goal)}; use a new study name (--study-name) for another goal")
        if self.study.direction != stored.study.direction:
            raise InputError(f"study '{name}' was run to {stored.study.direction} the metric, "
                             f"this spec says {self.study.direction}")
        dropped = sorted(set(stored.search.batch_sizes) - set(self.search.batch_sizes))
        if dropped:
            raise InputError(f"study '{name}' has trials at batch sizes {dropped} that this spec drops; "
                             "batch sizes may be added on resume, not removed")
        (low, high), (old_low, old_high) = self.search.lr, stored.search.lr
        if low > old_low or high < old_high:
            raise InputError(f"study '{name}' searched lr in [{old_low:g}, {old_high:g}]; this spec's "
                             f"[{low:g}, {high:g}] does not cover it (the range may grow, not shrink)")


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file; raises InputError naming the file, key and problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such study file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML: {e}") from None
    return parse_spec(data, source=str(path))


def parse_spec(data: dict[str, Any], source: str = "study spec") -> StudySpec:
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        raise InputError(f"{source}: {describe_error(e)}") from None


def describe_error(error: ValidationError, table: str | None = None,
                   model: type[BaseModel] | None = None) -> str:
    """The first problem as one line: '[search] batch_sizes[2]: must be > 0, got 0'.

    With ``table`` and ``model``, the error is one from validating that table's ``model``
    (a built-in workload's options) and is located and explained accordingly.
    """
    problems = error.errors(include_url=False)
    first = problems[0]
    loc = (table, *first["loc"]) if table else first["loc"]
    where = _location(loc)
    kind, given = first["type"], first.get("input")
    if kind == "missing":
        text = f"{where}: required {'table' if len(loc) == 1 else 'key'} is missing"
    elif kind == "extra_forbidden":
        known = f" (known keys: {', '.join(model.model_fields)})" if model else _known_keys(loc)
        text = f"{where}: unknown key{known}"
    else:
        message = first["msg"].removeprefix("Value error, ")
        # a table's own check names the key itself: '[workload] noise must be a finite number'
        text = f"{where}{' ' if kind == 'value_error' and len(loc) == 1 else ': '}{message[:1].lower()}{message[1:]}"
        if kind != "value_error":
            text += f", got {given!r}"
    more = len(problems) - 1
    return text + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _location(loc: tuple[Any, ...]) -> str:
    if not loc:
        return "study file"
    table, *rest = loc
    if not rest:
        return f"[{table}]"
    where = f"[{table}] {rest[0]}"
    return where + "".join(f"[{i}]" for i in rest[1:])


_TABLES = {"study": StudyTable, "search": SearchTable, "workload": WorkloadTable}


def _known_keys(loc: tuple[Any, ...]) -> str:
    if len(loc) == 1:
        return f" (tables are {', '.join(f'[{t}]' for t in _TABLES)})"
    table = _TABLES.get(loc[0])
    return f" (known keys: {', '.join(table.model_fields)})" if table else ""


def _goal_text(goal: float | None) -> str:
    return "for the final metric" if goal is None else f"for the fewest steps to goal = {goal:g}"


def _show(workload: WorkloadTable) -> str:
    options = ", ".join(f"{k}={v!r}" for k, v in sorted(workload.options.items()))
    what = workload.target if workload.target is not None else " ".join(workload.command)
    return f"'{what}'" + (f" ({options})" if options else "")
