"""The pipeline commands: the four steps one by one, and `run` for all of them.

Each command builds a `Pipeline` from its options and calls one of its methods: the files,
budgets, lock and run.json are the library's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from selfinstruct.cli import cli
from selfinstruct.cli.options import (
    BatchOptions,
    ModelOptions,
    batch_options,
    batch_price_option,
    first_instructions_option,
    lag_option,
    language_option,
    model_options,
    parse_price,
    request_batch_size_option,
    run_folder_option,
    seed_option,
    seed_tasks_option,
)
from selfinstruct.errors import ConfigError
from selfinstruct.runfile import RunFile

CLASSIFICATION_ONLY = click.option(
    "--use-clf-seed-tasks-only",
    "--use_clf_seed_tasks_only",
    "classification_only",
    is_flag=True,
    help="Prompt with classification seed tasks only (more classification tasks).",
)
LOWERCASE_REST = click.option(
    "--lowercase-rest",
    is_flag=True,
    help="Lower-case all but the first letter of each new instruction, exactly as the"
    " original script's str.capitalize() did  [default: keep the model's casing]",
)
MAX_INSTANCES = click.option(
    "--max-instances-to-generate",
    "--max_instances_to_generate",
    "--max-instances",
    "max_instances",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Instances to ask for per task.",
)
LENIENT_LABELS = click.option(
    "--lenient-labels",
    is_flag=True,
    help="Step 2: count an answer such as 'Yes.' or 'yes, it is' as yes  [default: off: only an"
    " exact Yes/yes/YES, as the original scripts]",
)
MIN_RATING = click.option(
    "--min-rating",
    type=click.Choice(["A", "B", "C", "D"]),
    default=None,
    help="Keep only examples the judge rated this well or better (run 'selfinstruct judge'"
    " first; unrated examples are dropped)  [default: no rating filter]",
)
DECONTAMINATE = click.option(
    "--decontaminate",
    "decontaminate",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Drop examples overlapping this evaluation set (13-gram or ROUGE-L > 0.7), repeatable"
    "  [default: the paper's user-oriented tasks where found ($SELFINSTRUCT_EVAL_DIR)]",
)
NO_DECONTAMINATE = click.option(
    "--no-decontaminate", is_flag=True, help="Skip the decontamination check."
)
# `run`'s target, and what `estimate` forecasts: one option, so the two read the same
RUN_NUM_INSTRUCTIONS = click.option(
    "--num-instructions",
    "num_instructions",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Machine instructions to generate (the paper: 52K; its script: 100).",
)
INCLUDE_SEEDS_HELP = "Add the seed tasks' instances to the fine-tuning data."


# --- step 1 -------------------------------------------------------------------------------


@cli.command("generate-instructions")
@run_folder_option
@seed_tasks_option
@click.option(
    "--num-instructions-to-generate",
    "--num_instructions_to_generate",
    "--num-instructions",
    "num_instructions",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Machine instructions to reach (the paper: 52K).",
)
@CLASSIFICATION_ONLY
@click.option(
    "--num-prompt-instructions",
    "--num_prompt_instructions",
    type=click.IntRange(min=2),
    default=8,
    show_default=True,
    help="Instructions listed in each prompt (2 of them machine-generated).",
)
@request_batch_size_option
@click.option(
    "--similarity-threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Keep a candidate only if its max ROUGE-L F1 to the pool is <= this"
    "  [default: 0.7 in English; the language's calibrated value otherwise]",
)
@LOWERCASE_REST
@lag_option
@language_option
@seed_option(42)
@model_options
@batch_options
def generate_instructions_cmd(
    batch_dir: Path, seed_tasks: Path | None, seed: int, num_instructions: int, **kwargs: Any
) -> None:
    """Step 1: bootstrap new instructions from the seed tasks."""
    opts, batch = ModelOptions.pop(kwargs), BatchOptions.pop(kwargs)
    with opts.pipeline(
        batch_dir,
        seed=seed,
        seeds=seed_tasks,
        command="generate-instructions",
        batch=batch,
        language=kwargs.pop("language"),
    ) as p:
        p.generate_instructions(num_instructions, **kwargs)


# --- step 2 -------------------------------------------------------------------------------


@cli.command("identify-clf")
@run_folder_option
@first_instructions_option
@click.option(
    "--template",
    type=click.Choice(["template_1"]),
    default="template_1",
    show_default=True,
    help="Few-shot template (the original's name).",
)
@request_batch_size_option
@LENIENT_LABELS
@seed_option(42)
@model_options
@batch_options
def identify_clf_cmd(batch_dir: Path, seed: int, template: str, **kwargs: Any) -> None:
    """Step 2: ask the model whether each instruction is a classification task."""
    opts, batch = ModelOptions.pop(kwargs), BatchOptions.pop(kwargs)
    with opts.pipeline(batch_dir, seed=seed, command="identify-clf", batch=batch) as p:
        p.identify_classification(**kwargs)


# --- step 3 -------------------------------------------------------------------------------


@cli.command("generate-instances")
@run_folder_option
@click.option(
    "--input-file",
    "--input_file",
    default=None,
    help="Instructions file in the run folder  [default: machine_generated_instructions.jsonl]",
)
@click.option(
    "--output-file",
    "--output_file",
    default=None,
    help="Instances file in the run folder  [default: machine_generated_instances.jsonl]",
)
@click.option(
    "--classification-file",
    default=None,
    help="is_clf_or_not_*.jsonl to read  [default: the folder's only one]",
)
@first_instructions_option
@request_batch_size_option
@MAX_INSTANCES
@click.option(
    "--generation-tasks-only",
    "--generation_tasks_only",
    is_flag=True,
    help="Only tasks labelled not classification.",
)
@click.option(
    "--classification-tasks-only",
    "--classification_tasks_only",
    is_flag=True,
    help="Only tasks labelled classification.",
)
@seed_option(42)
@model_options
@batch_options
def generate_instances_cmd(batch_dir: Path, seed: int, max_instances: int, **kwargs: Any) -> None:
    """Step 3: generate instances, output-first for classification tasks, input-first otherwise."""
    opts, batch = ModelOptions.pop(kwargs), BatchOptions.pop(kwargs)
    with opts.pipeline(batch_dir, seed=seed, command="generate-instances", batch=batch) as p:
        p.generate_instances(max_instances_to_generate=max_instances, **kwargs)


# --- step 4 -------------------------------------------------------------------------------


@cli.command("prepare")
@run_folder_option
@click.option(
    "--instance-files",
    "--instance_files",
    multiple=True,
    help="Instances files in the run folder, repeatable"
    "  [default: machine_generated_instances.jsonl]",
)
@click.option(
    "--classification-type-files",
    "--classification_type_files",
    "classification_files",
    multiple=True,
    help="is_clf_or_not files, repeatable  [default: the folder's only one]",
)
@click.option(
    "--output-dir",
    "--output_dir",
    default=None,
    help="Output folder, inside the run folder  [default: finetuning_data]",
)
@click.option(
    "--num-instructions",
    "--num_instructions",
    type=click.IntRange(min=1),
    default=None,
    help="Also write a sample of N instructions' instances  [default: no sample]",
)
@click.option(
    "--include-seed-tasks/--no-include-seed-tasks",
    "--include_seed_tasks",
    default=False,
    show_default=True,
    help=INCLUDE_SEEDS_HELP,
)
@seed_tasks_option
@click.option(
    "--max-instances-per-task",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Instances kept per task.",
)
@click.option(
    "--end-token",
    default="<|endoftext|>",
    show_default=True,
    help="Appended to each completion of the prompt/completion file.",
)
@MIN_RATING
@DECONTAMINATE
@NO_DECONTAMINATE
@language_option
@seed_option(123)
@click.option("--quiet", "-q", is_flag=True, help="No summary.")
def prepare_cmd(
    batch_dir: Path,
    seed_tasks: Path | None,
    seed: int,
    quiet: bool,
    decontaminate: tuple[Path, ...],
    no_decontaminate: bool,
    language: str | None,
    **kwargs: Any,
) -> None:
    """Step 4: filter the instances and write fine-tuning files (GPT-3, OpenAI chat, Alpaca)."""
    from selfinstruct.pipeline import Pipeline

    for name in ("instance_files", "classification_files"):
        kwargs[name] = list(kwargs[name]) or None
    eval_sets = eval_sets_option(decontaminate, no_decontaminate)
    with Pipeline(
        batch_dir, seeds=seed_tasks, progress=not quiet, command="prepare", language=language
    ) as p:
        report = p.prepare(seed=seed, decontaminate=eval_sets, **kwargs)
        for path in report.outputs:
            p.reporter.info(f"wrote {path}")


# --- run ----------------------------------------------------------------------------------


@cli.command("run")
@run_folder_option
@seed_tasks_option
@RUN_NUM_INSTRUCTIONS
@MAX_INSTANCES
@CLASSIFICATION_ONLY
@request_batch_size_option
@LOWERCASE_REST
@lag_option
@LENIENT_LABELS
@click.option(
    "--include-seed-tasks/--no-include-seed-tasks",
    default=True,
    show_default=True,
    help=INCLUDE_SEEDS_HELP,
)
@DECONTAMINATE
@NO_DECONTAMINATE
@language_option
@seed_option(42)
@model_options
@batch_options
def run_cmd(
    batch_dir: Path,
    seed_tasks: Path | None,
    seed: int,
    num_instructions: int,
    lowercase_rest: bool,
    lag: int,
    lenient_labels: bool,
    decontaminate: tuple[Path, ...],
    no_decontaminate: bool,
    language: str | None,
    **kwargs: Any,
) -> None:
    """Run all four steps into one folder; rerun it to resume."""
    opts, batch = ModelOptions.pop(kwargs), BatchOptions.pop(kwargs)
    eval_sets = eval_sets_option(decontaminate, no_decontaminate)
    with opts.pipeline(
        batch_dir, seed=seed, seeds=seed_tasks, command="run", batch=batch, language=language
    ) as p:
        p.run(
            num_instructions,
            instructions={"lowercase_rest": lowercase_rest, "lag": lag},
            classification={"lenient_labels": lenient_labels},
            prepare={"decontaminate": eval_sets},
            **kwargs,
        )
        usage = RunFile(p.folder).data.get("usage", {})
        p.reporter.info(
            f"done: {batch_dir}  ({usage.get('requests', 0)} requests,"
            f" {usage.get('total_tokens', 0):,} tokens in all; details in run.json)"
        )


# --- the forecast -------------------------------------------------------------------------


@cli.command("estimate")
@run_folder_option
@seed_tasks_option
@RUN_NUM_INSTRUCTIONS
@click.option(
    "--step",
    type=click.Choice(["all", "instructions", "classify", "instances", "judge"]),
    default="all",
    show_default=True,
    help="Forecast one step only; 'all' is what `run` sends (steps 1-3; step 4 makes no call).",
)
@request_batch_size_option
@click.option(
    "--pilot",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="First send N real step-1 requests (and steps 2-4 on what they keep, into RUN/pilot)"
    " and forecast from their yields instead of the paper's  [default: no model call]",
)
@click.option(
    "--latency",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds one request takes online  [default: the pilot's, else 1 s + 50 tokens/s]",
)
@click.option("--json", "as_json", is_flag=True, help="Print the forecast as JSON.")
@seed_option(42)
@model_options
@batch_price_option
def estimate_cmd(
    batch_dir: Path,
    seed_tasks: Path | None,
    seed: int,
    num_instructions: int,
    step: str,
    request_batch_size: int,
    pilot: int,
    latency: float | None,
    as_json: bool,
    batch_price: str | None,
    **kwargs: Any,
) -> None:
    """Forecast a run before paying: requests, tokens, cost online and in Batch API mode, time.

    From the prompts the steps would send and the paper's yields, with no model call; with
    --pilot N from N real requests' yields. Written to RUN/forecast.json, which `report` shows
    beside what the run then did.
    """
    import json

    opts = ModelOptions.pop(kwargs)
    with opts.pipeline(batch_dir, seed=seed, seeds=seed_tasks, command="estimate") as p:
        price = parse_price(batch_price, "--batch-price")
        if price is not None:
            p.batch_price = price
        result = p.estimate(
            num_instructions,
            steps=None if step == "all" else (step,),
            pilot=pilot,
            request_batch_size=request_batch_size,
            seconds_per_request=latency,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    width = max(len(label) for label, _ in result.rows())
    for label, value in result.rows():
        click.echo(f"{label:<{width}}  {value}")


def eval_sets_option(files: tuple[Path, ...], off: bool) -> list[Path] | None:
    """--decontaminate / --no-decontaminate as Pipeline.prepare takes them."""
    if off and files:
        raise ConfigError("--decontaminate and --no-decontaminate exclude each other")
    return [] if off else (list(files) or None)
