"""The `tuner` command. Bad input exits with code 2 and one line on stderr, and writes nothing."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from tuner.errors import InputError, WorkloadFailing

STORAGE_HELP = ("Optuna storage: sqlite:///FILE, postgresql+psycopg://USER:PASSWORD@HOST/DB, or a journal "
                "file path. Default: $TUNER_STORAGE, else tuner.journal in the working directory.")
storage_option = click.option("--storage", metavar="URL", help=STORAGE_HELP)


class _OneLineErrors(click.Group):
    """Reports every usage error as one line ('Error: ...'), exit code 2, never a traceback."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except InputError as e:
            _fail(str(e), 2)
        except WorkloadFailing as e:
            _fail(str(e), 1)
        except click.Abort:
            _fail("aborted", 130)


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lr-batch-tuner")
def cli() -> None:
    """Measure the best learning rate at every batch size on your own workload.

    \b
    Examples:
      tuner run studies/quadratic.toml     search every batch size, then fit the rule
      tuner studies                        what the storage holds
    """


@cli.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(path_type=Path))
@storage_option
@click.option("--n-trials", type=click.IntRange(min=1), metavar="N",
              help="Finished trials to reach, across all workers (overrides the study file).")
@click.option("--study-name", metavar="NAME", help="Study name (overrides the study file).")
@click.option("--no-fit", is_flag=True, help="Do not fit the LR-versus-batch-size rules at the end.")
def run(spec_file: Path, storage: str | None, n_trials: int | None, study_name: str | None,
        no_fit: bool) -> None:
    """Search the learning rate at every batch size of the study file SPEC, then fit the rules.

    Trials are shared evenly among batch sizes and pruned only against their own batch size.
    An existing study resumes until it holds n_trials finished (complete or pruned) trials;
    batch sizes and the learning-rate range may grow between runs. The fit (as `tuner fit`)
    is stored in the study.

    \b
    Examples:
      tuner run studies/quadratic.toml
      tuner run studies/digits-mlp-sgd.toml --storage sqlite:///studies.db --n-trials 200
    """
    import optuna

    from tuner.progress import TrialProgress
    from tuner.runner import open_study, run_study
    from tuner.spec import load_spec
    from tuner.storage import open_storage, redact, storage_url
    from tuner.summary import format_table, summarize
    from tuner.workload import load_workload

    spec = load_spec(spec_file).with_overrides(name=study_name, n_trials=n_trials)
    workload = load_workload(spec, spec_file.parent)
    url = storage_url(storage)
    opened = open_storage(url, create=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported by the progress callback
    study = open_study(spec, opened)
    progress = TrialProgress(study, spec.study.n_trials, spec.search.batch_sizes)
    try:
        run_study(study, spec, workload, callbacks=[progress])
    except KeyboardInterrupt:
        progress.close()
        _fail(f"interrupted; finished trials are kept in {redact(url)}: run the same command to resume", 130)
    progress.close()
    click.echo(f"study '{spec.study.name}' in {redact(url)}:")
    click.echo(format_table(summarize(study, spec.search.batch_sizes)))
    if not no_fit:
        try:
            _fit_and_show(study)
        except InputError as e:  # the search itself succeeded; say why there is no fit yet
            click.echo(f"\nnot fitted yet: {e}")


@cli.command()
@click.argument("study_name", metavar="STUDY")
@storage_option
def fit(study_name: str, storage: str | None) -> None:
    """Fit the optimal learning rate as a function of batch size from the trials of STUDY.

    Estimates the optimum at each batch size with an interval, fits the linear, square-root,
    power-law and saturating rules, compares them, and stores the result in the study (user
    attribute lr_batch_fit, a note and a figure for optuna-dashboard). Re-fitting replaces them.

    \b
    Examples:
      tuner fit quadratic
      tuner fit digits-mlp-sgd --storage sqlite:///studies.db
    """
    _fit_and_show(_load_study(study_name, storage))


def _load_study(study_name: str, storage: str | None):
    import optuna

    from tuner.storage import open_storage, redact, storage_url

    url = storage_url(storage)
    opened = open_storage(url, create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(opened, include_best_trial=False)]
    if study_name not in names:
        known = f"; it has {', '.join(sorted(names))}" if names else "; it holds no studies"
        raise InputError(f"no study named '{study_name}' in {redact(url)}{known}")
    return optuna.load_study(study_name=study_name, storage=opened)


def _fit_and_show(study) -> None:
    from tuner.fit import fit_study, format_fit, save_fit

    result = fit_study(study)
    save_fit(study, result)
    click.echo("\n" + format_fit(result))


@cli.command()
@storage_option
def studies(storage: str | None) -> None:
    """List the studies in a storage, with trials per batch size.

    \b
    Example:
      tuner studies --storage sqlite:///studies.db
    """
    import optuna

    from tuner.runner import stored_spec
    from tuner.storage import open_storage, redact, storage_url
    from tuner.summary import format_table, summarize

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
        click.echo(f"{summary.study_name}  ({summary.direction.name.lower()}, {done} of {target})")
        click.echo(format_table(rows) + "\n")


def main() -> None:
    sys.exit(cli())
