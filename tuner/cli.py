"""The `tuner` command. Bad input exits with code 2 and one line on stderr, and writes nothing."""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import click

from tuner.errors import InputError, Interrupted, StorageFailing, TunerWarning, WorkloadFailing
from tuner.export import FORMATS

STORAGE_HELP = ("Optuna storage: sqlite:///FILE, postgresql+psycopg://USER:PASSWORD@HOST/DB, or a journal "
                "file path. Default: $TUNER_STORAGE, else tuner.journal in the working directory.")
storage_option = click.option("--storage", metavar="URL", help=STORAGE_HELP)


class _OneLineErrors(click.Group):
    """Reports every usage error as one line ('Error: ...'), exit code 2, never a traceback."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        warnings.showwarning = _one_line_warning
        try:
            return super().main(*args, **kwargs)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except InputError as e:
            _fail(str(e), 2)
        except (WorkloadFailing, StorageFailing) as e:
            _fail(str(e), 1)
        except Interrupted as e:
            _fail(str(e), e.exit_code)
        except click.Abort:
            _fail("aborted", 130)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, TunerWarning):
        click.echo(f"Warning: {message}", err=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def _quoted(storage: str) -> str:
    """The storage as the user may retype it: a URL's password masked by a shell variable."""
    from tuner.storage import is_url, redact

    shown = redact(storage)
    return shown.replace(":***@", ":$PASSWORD@") if is_url(storage) else shown


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lr-batch-tuner")
def cli() -> None:
    """Measure the best learning rate at every batch size on your own workload.

    \b
    Examples:
      tuner run studies/quadratic.toml                 search every batch size, then fit the rules
      tuner studies                                    what the storage holds
      tuner export quadratic --format python -o lr_rule.py
      tuner dashboard                                  browse it in optuna-dashboard
    """


@cli.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(path_type=Path))
@storage_option
@click.option("--n-trials", type=click.IntRange(min=1), metavar="N",
              help="Finished trials to reach, across all workers (overrides the study file).")
@click.option("--study-name", metavar="NAME", help="Study name (overrides the study file).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="Local worker processes (one CUDA device each when there are several).")
@click.option("--no-fit", is_flag=True, help="Do not fit the LR-versus-batch-size rules at the end.")
def run(spec_file: Path, storage: str | None, n_trials: int | None, study_name: str | None,
        workers: int, no_fit: bool) -> None:
    """Search the learning rate at every batch size of the study file SPEC, then fit the rules.

    Every batch size gets trials (more where its optimum is still uncertain), each pruned only
    against its own batch size. With [study] goal = VALUE, each batch size is tuned instead for
    the fewest steps to that metric value, runs stop there, and the fit reads the critical batch
    size (see studies/quadratic-goal.toml).
    An existing study resumes until it holds n_trials finished (complete or pruned) trials;
    batch sizes and the learning-rate range may grow between runs. The fit (as `tuner fit`)
    is stored in the study. The same command on several machines, with one PostgreSQL
    --storage, shares the study among them. The workload is a Python callable
    ([workload] target) or your own training script, run once per trial
    ([workload] command; see examples/script-study.toml).

    \b
    Examples:
      tuner run studies/quadratic.toml
      tuner run studies/digits-mlp-sgd.toml --storage sqlite:///studies.db --n-trials 200
      tuner run studies/digits-mlp-sgd.toml --workers 4
      tuner run examples/script-study.toml
      tuner run studies/quadratic-goal.toml
    """
    from tuner import runner

    report = runner.run(spec_file, storage, n_trials=n_trials, study_name=study_name, workers=workers,
                        fit=not no_fit)
    _show_search(report)
    if report.not_fitted:  # the search itself succeeded; say why there is no fit yet
        click.echo(f"\nnot fitted yet: {report.not_fitted}")
    elif report.fit is not None:
        _show_fit(report.fit)
        where = "" if storage is None else f" --storage {_quoted(storage)}"
        click.echo(f"\nNext: browse it with `tuner dashboard{where}` (http://127.0.0.1:8080/dashboard/), or take "
                   f"the rule with `tuner export {report.spec.study.name}{where} --format python -o lr_rule.py`.")


@cli.command()
@click.argument("study_name", metavar="STUDY")
@storage_option
@click.option("--quiet", is_flag=True, help="No progress bar or summary (failed trials are still reported).")
def worker(study_name: str, storage: str | None, quiet: bool) -> None:
    """Join STUDY as one more worker, with the study file stored in it.

    Run it on as many machines as you like, pointed at the same database: together the workers
    stop at the study's n_trials. Workload modules are imported from the working directory.

    \b
    Example:
      tuner worker digits-mlp-sgd --storage postgresql+psycopg://tuner:PASSWORD@db-host/studies
    """
    from tuner import runner

    report = runner.join(study_name, storage, quiet=quiet)
    if not quiet:
        _show_search(report)


def _show_search(report) -> None:
    """Per batch size: trials by outcome and the best learning rate so far."""
    from tuner.storage import redact
    from tuner.summary import format_table, summarize

    click.echo(f"study '{report.spec.study.name}' in {redact(report.url)}:")
    click.echo(format_table(summarize(report.study, report.spec.search.batch_sizes)))


@cli.command()
@click.argument("study_name", metavar="STUDY")
@storage_option
@click.option("--target", type=float, metavar="VALUE", callback=lambda ctx, param, value: _finite(value),
              help="The metric the steps-to-target reading counts to (which batch size to use). Default: the "
                   "best value at least three runs of every batch size reach.")
def fit(study_name: str, storage: str | None, target: float | None) -> None:
    """Fit the optimal learning rate as a function of batch size from the trials of STUDY.

    Estimates the optimum at each batch size with an interval, fits the linear, square-root,
    power-law, saturating and surge (rises, then falls) rules, compares them, and stores the
    result in the study (user attribute lr_batch_fit, a note and a figure for optuna-dashboard).
    From the learning curves it also reads the steps each batch size needs to reach a target and
    the critical batch size past which a larger batch mostly burns samples. Re-fitting replaces them.

    \b
    Examples:
      tuner fit quadratic
      tuner fit quadratic --target 1.5
      tuner fit digits-mlp-sgd --storage sqlite:///studies.db
    """
    from tuner.runner import fit_and_save
    from tuner.storage import load_study

    _show_fit(fit_and_save(load_study(study_name, storage), target=target))


@cli.command()
@click.argument("study_name", metavar="STUDY")
@storage_option
@click.option("--batch-sizes", "batch_sizes", metavar="B1,B2,...", callback=lambda ctx, param, value: _integers(value),
              help="Held-out batch sizes to train at. Default: about three geometric midpoints between "
                   "the studied ones; one outside the studied range is an extrapolation.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, metavar="N",
              help="Seeds per learning rate (the same seeds at every learning rate).")
@click.option("--rules", default="recommended,linear,sqrt", show_default=True, metavar="R1,R2,...",
              help="Rules to verify: recommended, linear, sqrt (both scaled from the reference batch size), "
                   "power, saturating, surge.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def verify(study_name: str, storage: str | None, batch_sizes: list[int] | None, seeds: int, rules: str,
           quiet: bool) -> None:
    """Measure what following each rule costs at batch sizes STUDY never searched.

    At each held-out batch size it trains each rule's learning rate and four around the
    recommended one (×0.5, ×0.71, ×1.41, ×2; further out, ×2 at a time up to ×8, while the best
    is the lowest or highest of them) with every seed and no pruning, then stores the
    regret of each rule against the best learning rate measured there in the study's fit (key
    verify; a sentence ends the verdict). The trainings are queued in the study: `tuner worker`
    processes elsewhere run them too, and a rerun after an interruption trains only what is missing.

    \b
    Examples:
      tuner verify quadratic
      tuner verify digits-mlp-sgd --batch-sizes 24,96,768 --seeds 5 --storage sqlite:///studies.db
      tuner verify quadratic --rules recommended,linear,sqrt,power,saturating --seeds 1
    """
    from tuner import verify as verification
    from tuner.fit._report import format_verification

    plan = verification.prepare(study_name, storage, batch_sizes=batch_sizes, seeds=seeds,
                                rules=[r.strip() for r in rules.split(",") if r.strip()])
    click.echo(plan.describe())
    result = verification.run(plan, quiet=quiet)
    click.echo("\n" + format_verification(result))


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}")
    return value


def _integers(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"batch sizes must be positive integers separated by commas, got {value!r}") from None


def _show_fit(result) -> None:
    from tuner.fit import format_fit

    click.echo("\n" + format_fit(result))


@cli.command()
@click.argument("study_name", metavar="STUDY")
@storage_option
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="json/yaml: the stored fit result; python: a module with lr_for_batch_size(); "
                   "markdown: a report (with -o, its figure as a PNG beside it).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write to FILE instead of standard output.")
def export(study_name: str, storage: str | None, fmt: str, output: Path | None) -> None:
    """Export the fitted rule of STUDY (run `tuner fit` first) for your training code.

    \b
    Examples:
      tuner export quadratic --format python -o lr_rule.py
      tuner export quadratic --format markdown -o report.md
      tuner export quadratic --format json
    """
    from tuner.export import export_fit, report_figures
    from tuner.storage import load_study
    from tuner.trials import FIT_ATTR

    study = load_study(study_name, storage)
    fit = study.user_attrs.get(FIT_ATTR)
    if fit is None:
        raise InputError(f"study '{study_name}' has no fit yet: run `tuner fit {study_name}` first")
    text = export_fit(fit, fmt, output)
    if output is None:
        click.echo(text, nl=False)
    else:
        written = [output, *(report_figures(fit, output) if fmt == "markdown" else [])]
        click.echo(f"wrote {', '.join(map(str, written))}", err=True)


@cli.command()
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
def dashboard(storage: str | None, host: str, port: int) -> None:
    """Browse the studies, their fitted rules and figures in optuna-dashboard.

    The fit's verdict is the study's note; its figure is on the study's page.

    \b
    Examples:
      tuner dashboard
      tuner dashboard --storage sqlite:///studies.db --port 8081
    """
    from tuner.dashboard import is_loopback, make_server
    from tuner.storage import redact, storage_url

    url = storage_url(storage)
    try:
        server = make_server(url, host, port)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if not is_loopback(host):
        click.echo(f"Warning: optuna-dashboard has no login; anyone who can reach {host}:{port} can read "
                   "and change these studies", err=True)
    click.echo(f"optuna-dashboard for {redact(url)} on http://{host}:{port}/dashboard/ (Ctrl+C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@cli.command()
@storage_option
def studies(storage: str | None) -> None:
    """List the studies in a storage, with trials per batch size and those still running.

    \b
    Example:
      tuner studies --storage sqlite:///studies.db
    """
    import optuna

    from tuner.runner import stored_spec
    from tuner.storage import open_storage, redact, storage_url
    from tuner.summary import describe_running, describe_verification, format_table, summarize

    url = storage_url(storage)
    opened = open_storage(url, create=False)
    summaries = optuna.get_all_study_summaries(opened, include_best_trial=False)
    if not summaries:
        click.echo(f"no studies in {redact(url)}")
    for summary in summaries:
        study = optuna.load_study(study_name=summary.study_name, storage=opened)
        spec = stored_spec(study)
        rows = summarize(study, spec.search.batch_sizes if spec else None)
        target = f"{spec.study.n_trials} finished trials" if spec else "not made by tuner run"
        done = sum(r.finished for r in rows)
        scored = f"steps to {spec.study.goal:g}, " if spec and spec.study.goal is not None else ""
        click.echo(f"{summary.study_name}  ({scored}{summary.direction.name.lower()}, {done} of {target})")
        click.echo("\n".join([format_table(rows), *describe_running(study), *describe_verification(study)]) + "\n")


def main() -> None:
    sys.exit(cli())
