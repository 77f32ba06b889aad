"""`tuner export`: a stored fit in the forms people use it.

* ``json`` and ``yaml``: the stored fit result (``study.user_attrs["lr_batch_fit"]``) unchanged, key
  order kept, floats exact: ``json.loads(text) == fit`` and ``yaml.safe_load(text) == fit``.
* ``python``: a self-contained module (standard library only) with ``lr_for_batch_size(batch_size)``
  for the recommended rule, generated from its parameters so that it gives the fit's own predictions;
  its docstring says where the rule came from, and how to use it in timm, MMEngine or Lightning.
* ``markdown``: a report a person reads (verdict, per-batch table, rule comparison, the rule in
  timm/MMEngine/PyTorch terms); with ``-o report.md`` its figure is drawn beside it as ``report.png``,
  and where the fit read steps to a target, the steps-against-samples figure as ``report-critical.png``.

    from tuner.export import export_fit

    text = export_fit(study.user_attrs["lr_batch_fit"], "python", Path("lr_rule.py"))

No format ever holds the storage URL: the fit does not record it, and a fit that holds a URL with a
password is refused rather than exported.
"""
from __future__ import annotations

import contextlib
import json
import keyword
import os
import re
from collections.abc import Callable
from pathlib import Path

from tuner.errors import InputError

FORMATS = ("json", "yaml", "python", "markdown")
# a URL that carries a password: scheme://user:password@host
_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/@:]*:[^\s/@]+@", re.IGNORECASE)


def export_fit(fit: dict, fmt: str, output: Path | None = None) -> str:
    """The stored fit ``fit`` as ``fmt`` (json, yaml, python or markdown).

    With ``output`` the text is also written there (UTF-8); for markdown the figure is written
    beside it as a PNG (``report.md`` -> ``report.png``), and where the fit read steps to a target
    the steps-against-samples figure too (``report-critical.png``); the report links them. Without
    ``output`` nothing is written, and the markdown says how to get the figure.

    Raises:
        ValueError: an unknown format.
        InputError: the fit holds a URL with a password (nothing is written).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}; got {fmt!r}")
    _refuse_credentials(fit)
    output = Path(output) if output is not None else None
    # report.png, and report-critical.png where the fit read steps to a target
    figures = report_figures(fit, output) if output is not None and fmt == "markdown" else []
    figure, critical = (figures + [None, None])[:2]
    for path in filter(None, (output, figure, critical)):
        _check_writable(path)
    if fmt == "json":
        text = to_json(fit)
    elif fmt == "yaml":
        text = to_yaml(fit)
    else:  # the fit's own views (imported here: they load numpy, scipy and optuna, which json needs not)
        from tuner.fit import FitResult, save_png, to_python, to_report
        from tuner.fit._figure import save_critical_png
        from tuner.fit._frameworks import DEFAULT_MODULE

        result = FitResult.model_validate(fit)
        if fmt == "python":
            stem = "" if output is None else output.stem
            module = stem if stem.isidentifier() and not keyword.iskeyword(stem) else DEFAULT_MODULE
            text = to_python(result, module_name=module)
        else:
            text = to_report(result, figure_name=None if figure is None else figure.name,
                             critical_figure_name=None if critical is None else critical.name)
    if output is not None:
        files = {output: lambda path: path.write_text(text, encoding="utf-8")}
        if figure is not None:
            files[figure] = lambda path: save_png(result, path)
        if critical is not None:
            files[critical] = lambda path: save_critical_png(result, path)
        _write_all(files)
    return text


def _check_writable(path: Path) -> None:
    """An export replaces a regular file, or makes a new one in a folder that exists."""
    if path.exists() and not path.is_file():
        raise InputError(f"cannot write {path}: it is not a regular file")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: folder {path.parent} does not exist")


def _write_all(files: dict[Path, Callable[[Path], None]]) -> None:
    """Write every file to a temporary file beside it, then rename them over their targets: a full
    disk or a folder that refuses writes leaves the earlier files as they were, never half-written."""
    temporary = {path: path.with_name(f".{path.name}.{os.getpid()}.tmp") for path in files}
    path = next(iter(files))
    try:
        for path, write in files.items():
            write(temporary[path])
        for path in files:
            os.replace(temporary[path], path)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}; no file was left half-written") from None
    finally:
        for path in temporary.values():
            with contextlib.suppress(OSError):  # never made (a read-only folder says so, too)
                path.unlink()


# --- json and yaml: the stored result, unchanged --------------------------------------------------

def to_json(fit: dict) -> str:
    return json.dumps(fit, indent=2, ensure_ascii=False) + "\n"


def to_yaml(fit: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        """Lists of numbers on one line ([8, 16, 32]); everything else in block style."""

    def represent_list(dumper, data):
        flat = all(v is None or isinstance(v, (int, float)) for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)

    Dumper.add_representer(list, represent_list)
    return yaml.dump(fit, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)


def figure_path(report: Path) -> Path:
    """Where the report's figure goes: report.md -> report.png (never the report itself)."""
    path = report.with_suffix(".png")
    return path if path != report else report.with_name(report.stem + "-figure.png")


def critical_figure_path(figure: Path) -> Path:
    """Where the steps-against-samples figure goes, beside the first: report.png -> report-critical.png."""
    return figure.with_name(f"{figure.stem}-critical.png")


def report_figures(fit: dict, report: Path) -> list[Path]:
    """The PNGs ``export_fit(fit, "markdown", report)`` writes beside the report."""
    from tuner.fit import FitResult
    from tuner.fit._figure import critical_series

    figure = figure_path(report)
    return [figure, *([critical_figure_path(figure)] if critical_series(FitResult.model_validate(fit)) else [])]


# --- nothing secret leaves ----------------------------------------------------------------------------

def _refuse_credentials(fit: dict) -> None:
    """A fit never records its storage; if a URL with a password got in anyway, export nothing."""
    for key, text in _strings(fit, ""):
        if _CREDENTIALS.search(text):
            raise InputError(f"the stored fit holds a URL with a password (at {key or 'the top'}); "
                             "refusing to export it")


def _strings(value, where: str):
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(str(k), where)
            yield from _strings(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")
