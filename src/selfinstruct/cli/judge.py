"""The `judge` command: rate step 4's examples with an LLM, or calibrate the judge first."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from selfinstruct.cli import cli
from selfinstruct.cli.options import (
    BatchOptions,
    ModelOptions,
    batch_options,
    model_options,
    request_batch_size_option,
    seed_option,
)
from selfinstruct.errors import ConfigError

JUDGE_EPILOG = """\b
Examples:
  selfinstruct judge runs/x --model openai:gpt-4o-mini --calibrate   # agreement first
  selfinstruct judge runs/x --model openai:gpt-4o-mini               # then rate every example
  selfinstruct judge runs/x --calibrate --ratings rated.jsonl --calibration-sample 0
"""


@cli.command(
    "judge",
    epilog=JUDGE_EPILOG,
)
@click.argument("run", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--batch-dir",
    "--batch_dir",
    "batch_dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="The run folder, as the pipeline commands name it (or give it as RUN).",
)
@click.option(
    "--num-examples",
    type=click.IntRange(min=1),
    default=None,
    help="Rate only the first N examples of all_generated_instances.jsonl  [default: all]",
)
@request_batch_size_option
@click.option(
    "--max-field-chars",
    type=click.IntRange(min=100),
    default=3000,
    show_default=True,
    help="Characters of instruction, input and output each shown to the judge (longer ones"
    " are cut, marked), so that a prompt fits a small model's context.",
)
@click.option(
    "--max-unreadable",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Stop asking about an example after this many answers the judge's parser cannot read;"
    " it stays unrated, counted by reason.",
)
@click.option(
    "--calibrate",
    is_flag=True,
    help="Measure the judge's agreement with people instead of rating the run: the review"
    " page's ratings, --ratings, and the paper's human evaluation.",
)
@click.option(
    "--ratings",
    "ratings_file",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="[calibrate] JSONL of examples people rated: instruction, input, output, rating (A-D),"
    " optionally valid_instruction, input_fits, output_correct  [default: none]",
)
@click.option(
    "--predictions-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="[calibrate] The release's human_eval/predictions folder  [default:"
    " ../shared/data/self-instruct/human_eval_predictions beside the project, if present]",
)
@click.option(
    "--calibration-sample",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="[calibrate] Tasks of the paper's 252 judged per released model (the same tasks for"
    " all 8 models); 0 skips the paper comparison.",
)
@click.option(
    "--no-reviews",
    is_flag=True,
    help="[calibrate] Leave out the ratings of the review page (reviews.jsonl).",
)
@seed_option(42)
@model_options
@batch_options
def judge_cmd(
    run: Path | None,
    batch_dir: Path | None,
    seed: int,
    calibrate: bool,
    ratings_file: Path | None,
    predictions_dir: Path | None,
    calibration_sample: int,
    no_reviews: bool,
    **kwargs: Any,
) -> None:
    """Rate each example of RUN's step 4 file A-D with the paper's rubric, or --calibrate.

    Every answer is appended to RUN/judgments.jsonl as it arrives; a rerun rates only what this
    model has not rated yet. Calibrate before filtering on the ratings.
    """
    from selfinstruct.judge import JudgeSettings

    opts, batch = ModelOptions.pop(kwargs), BatchOptions.pop(kwargs)
    calibrating = calibrate or ratings_file is not None or predictions_dir is not None
    folder = _run_folder(run, batch_dir, create=calibrating)
    settings = JudgeSettings(
        num_examples=kwargs["num_examples"],
        request_batch_size=kwargs["request_batch_size"],
        max_field_chars=kwargs["max_field_chars"],
        max_unreadable=kwargs["max_unreadable"],
    )
    if calibrating and batch.batch_api:
        raise ConfigError("--batch-api rates a run's examples; --calibrate runs online")
    if calibrating:
        _calibrate(
            folder, opts, seed, settings, ratings_file, predictions_dir, calibration_sample,
            not no_reviews,
        )  # fmt: skip
    else:
        _judge(folder, opts, seed, settings, batch)


def _run_folder(run: Path | None, batch_dir: Path | None, *, create: bool):  # -> RunFolder
    from selfinstruct.runfolder import RunFolder

    if run is not None and batch_dir is not None and run.resolve() != batch_dir.resolve():
        raise ConfigError(f"two run folders given: RUN {run} and --batch-dir {batch_dir}")
    path = run or batch_dir
    if path is None:
        raise ConfigError("which run folder? give it as RUN (selfinstruct judge runs/x ...)")
    if not create and not path.is_dir():
        raise ConfigError(f"{path}: no such run folder")
    return RunFolder(path)


def _judge(folder, opts: ModelOptions, seed: int, settings, batch: BatchOptions) -> None:
    from selfinstruct.judge import agreement, model_id

    folder.read_examples()  # no step 4 file, or a bad one: one line, before any model is loaded
    with opts.pipeline(folder.path, seed=seed, command="judge", batch=batch) as pipeline:
        report = pipeline.judge(**dataclasses.asdict(settings))
        reporter = pipeline.reporter
        reviews = folder.reviews(warn=reporter.warn)
        if reviews:
            judged = folder.judgments(model=model_id(pipeline.model), rated_only=True)
            both = agreement(
                (r.record, judged[k].record) for k, r in reviews.items() if k in judged
            )
            if both.n:
                reporter.info(
                    f"agreement with the review page: exact {both.exact:.2f}, within one level"
                    f" {both.within_one:.2f}, n = {both.n} (judge --calibrate for the full"
                    " figures)"
                )
        reporter.info(f"wrote {folder.judgments_file}")
        if report.complete:
            reporter.info(
                f"next: selfinstruct prepare --batch-dir {folder.path} --min-rating B"
                f" --judge '{model_id(pipeline.model)}'"
            )


def _calibrate(
    folder,
    opts: ModelOptions,
    seed: int,
    settings,
    ratings_file: Path | None,
    predictions_dir: Path | None,
    sample: int,
    use_reviews: bool,
) -> None:
    from selfinstruct.judge import CalibrationSettings

    calibration = CalibrationSettings(
        use_reviews=use_reviews,
        ratings_file=ratings_file,
        predictions_dir=predictions_dir,
        sample_per_model=sample,
        seed=seed,
        judge=settings,
    )
    with opts.pipeline(folder.path, seed=seed, command="judge --calibrate") as pipeline:
        result = pipeline.calibrate_judge(calibration)
    click.echo(result.format())
    pipeline.reporter.info(f"wrote {folder.calibration_report}")
