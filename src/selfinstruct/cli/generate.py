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
    continue_anyway_option,
    first_instructions_option,
    given,
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
    "--max_instances_to_gen",
    "--max-instances",
    "max_instances",
    type=click.IntRange(min=1),
    default=5,
    help="Instances to ask for per task  [default: the run's, else 5]",
)
LENIENT_LABELS = click.option(
    "--lenient-labels",
    is_flag=True,
    help="Step 2: count an answer such as 'Yes.' or 'yes, it is' as yes  [default: off: only an"
    " exact Yes/yes/YES, as the original scripts]",
)
NUM_PROMPT_INSTRUCTIONS = click.option(
    "--num-prompt-instructions",
    "--num_prompt_instructions",
    type=click.IntRange(min=2),
    default=8,
    help="Instructions listed in each prompt (2 of them machine-generated)"
    "  [default: the run's, else 8]",
)
SIMILARITY_THRESHOLD = click.option(
    "--similarity-threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Keep a candidate only if its max ROUGE-L F1 to the pool is <= this"
    "  [default: the run's, else 0.7 in English and the language's calibrated value otherwise]",
)
MAX_INSTANCES_PER_TASK = click.option(
    "--max-instances-per-task",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Instances kept per task.",
)
END_TOKEN = click.option(
    "--end-token",
    default="<|endoftext|>",
    show_default=True,
    help="Appended to each completion of the prompt/completion file.",
)
MIN_RATING = click.option(
    "--min-rating",
    type=click.Choice(["A", "B", "C", "D"], case_sensitive=False),
    metavar="[A|B|C|D]",
    default=None,
    callback=lambda _ctx, _param, value: value.upper() if value else None,
    help="Keep only generated examples the judge rated this well or better (run 'selfinstruct"
    " judge' first; unrated ones are dropped; the human seed tasks are always kept); the kept"
    " set goes to its own file  [default: no rating filter]",
)
JUDGE = click.option(
    "--judge",
    "judge_model",
    default=None,
    metavar="MODEL",
    help="With --min-rating, whose ratings to use when several judges rated the run: the"
    " judge's model as judgments.jsonl names it  [default: the only one]",
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
@NUM_PROMPT_INSTRUCTIONS
@request_batch_size_option
@SIMILARITY_THRESHOLD
@LOWERCASE_REST
@lag_option
@language_option
@seed_option(42, from_run=True)
@continue_anyway_option
@model_options
@batch_options
def generate_instructions_cmd(
    batch_dir: Path,
    seed_tasks: Path | None,
    seed: int | None,
    num_instructions: int,
    changed_settings: str,
    **kwargs: Any,
) -> None:
    """Step 1: bootstrap new instructions from the seed tasks."""
    opts, batch = ModelOptions.pop(kwargs), BatchOptions.pop(kwargs)
    with opts.pipeline(
        batch_dir,
        seed=seed,
        seeds=seed_tasks,
        command="generate-instructions",
        changed_settings=changed_settings,
        batch=batch,
        language=kwargs.pop("language"),
    ) as p:
        finish(p, [p.generate_instructions(num_instructions, **given(kwargs))])


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
@seed_option(42, from_run=True)
@continue_anyway_option
@model_options
@batch_options
def identify_clf_cmd(
    batch_dir: Path, seed: int | None, template: str, changed_settings: str, **kwargs: Any
) -> None:
    """Step 2: ask the model whether each instruction is a classification task."""
    opts, batch = ModelOptions.pop(kwargs), BatchOptions.pop(kwargs)
    with opts.pipeline(
        batch_dir,
        seed=seed,
        command="identify-clf",
        changed_settings=changed_settings,
        batch=batch,
    ) as p:
        finish(p, [p.identify_classification(**given(kwargs))])


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
@seed_option(42, from_run=True)
@continue_anyway_option
@model_options
@batch_options
def generate_instances_cmd(
    batch_dir: Path, seed: int | None, changed_settings: str, **kwargs: Any
) -> None:
    """Step 3: generate instances, output-first for classification tasks, input-first otherwise."""
    opts, batch = ModelOptions.pop(kwargs), BatchOptions.pop(kwargs)
    options = given(kwargs)
    if "max_instances" in options:
        options["max_instances_to_generate"] = options.pop("max_instances")
    with opts.pipeline(
        batch_dir,
        seed=seed,
        command="generate-instances",
        changed_settings=changed_settings,
        batch=batch,
    ) as p:
        finish(p, [p.generate_instances(**options)])


# --- step 4 -------------------------------------------------------------------------------


@cli.command("prepare")
@run_folder_option(default_help="the folder of the first --instance-files, as the original script")
@click.option(
    "--instance-files",
    "--instance_files",
    multiple=True,
    help="Instances files, repeatable: a path, or a name in the run folder"
    "  [default: machine_generated_instances.jsonl]",
)
@click.option(
    "--classification-type-files",
    "--classification_type_files",
    "classification_files",
    multiple=True,
    help="is_clf_or_not files, repeatable: a path, or a name in the run folder"
    "  [default: the folder's only one]",
)
@click.option(
    "--output-dir",
    "--output_dir",
    default=None,
    help="Output folder: a path inside the run folder, or a name in it  [default: finetuning_data]",
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
    default=True,
    help=INCLUDE_SEEDS_HELP + "  [default: the run's choice, else on]",
)
@seed_tasks_option
@MAX_INSTANCES_PER_TASK
@END_TOKEN
@MIN_RATING
@JUDGE
@DECONTAMINATE
@NO_DECONTAMINATE
@language_option
@seed_option(123)
@continue_anyway_option
@click.option("--quiet", "-q", is_flag=True, help="No summary.")
def prepare_cmd(
    batch_dir: Path | None,
    seed_tasks: Path | None,
    seed: int,
    quiet: bool,
    decontaminate: tuple[Path, ...],
    no_decontaminate: bool,
    language: str | None,
    changed_settings: str,
    **kwargs: Any,
) -> None:
    """Step 4: filter the instances and write fine-tuning files (GPT-3, OpenAI chat, Alpaca)."""
    from selfinstruct.pipeline import Pipeline

    options = given(kwargs)
    folder = prepare_folder(batch_dir, options)
    options["seed"] = seed
    eval_sets = eval_sets_option(decontaminate, no_decontaminate)
    with Pipeline(
        folder,
        seeds=seed_tasks,
        progress=not quiet,
        command="prepare",
        changed_settings=changed_settings,
        language=language,
    ) as p:
        report = p.prepare(decontaminate=eval_sets, **options)
        finish(p, [report])


def prepare_folder(batch_dir: Path | None, options: dict[str, Any]) -> Path:
    """The run folder, and prepare's file options as names in it. The original script took
    paths (`--instance_files data/run/machine_generated_instances.jsonl`, no --batch_dir), so
    a path that exists as given is made relative to the run folder."""
    files = list(options.get("instance_files", ()))
    if batch_dir is None:
        if not files:
            raise click.UsageError("give --batch-dir (or --instance-files, as the original script)")
        batch_dir = Path(files[0]).parent
    for name in ("instance_files", "classification_files"):
        if name in options:
            options[name] = [_in_run(batch_dir, f) for f in options[name]]
    if "output_dir" in options:
        options["output_dir"] = _in_run(batch_dir, options["output_dir"])
    return batch_dir


def _in_run(folder: Path, name: str) -> str:
    """A file option as a name relative to the run folder: a path under the folder as given
    from the working directory (the original scripts' way), else a name in the folder."""
    path = Path(name)
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        if path.is_absolute():
            raise click.UsageError(f"{name}: not inside the run folder {folder}") from None
        return name


# --- run ----------------------------------------------------------------------------------


@cli.command("run")
@run_folder_option
@seed_tasks_option
@RUN_NUM_INSTRUCTIONS
@NUM_PROMPT_INSTRUCTIONS
@SIMILARITY_THRESHOLD
@MAX_INSTANCES
@CLASSIFICATION_ONLY
@request_batch_size_option
@LOWERCASE_REST
@lag_option
@LENIENT_LABELS
@click.option(
    "--include-seed-tasks/--no-include-seed-tasks",
    default=True,
    help=INCLUDE_SEEDS_HELP + "  [default: the run's choice, else on]",
)
@MAX_INSTANCES_PER_TASK
@END_TOKEN
@MIN_RATING
@JUDGE
@DECONTAMINATE
@NO_DECONTAMINATE
@language_option
@seed_option(42, from_run=True)
@continue_anyway_option
@model_options
@batch_options
def run_cmd(
    batch_dir: Path,
    seed_tasks: Path | None,
    seed: int | None,
    num_instructions: int,
    decontaminate: tuple[Path, ...],
    no_decontaminate: bool,
    language: str | None,
    changed_settings: str,
    **kwargs: Any,
) -> None:
    """Run all four steps into one folder; rerun it to resume."""
    opts, batch = ModelOptions.pop(kwargs), BatchOptions.pop(kwargs)
    options = given(kwargs)
    steps: dict[str, dict[str, Any]] = {"instructions": {}, "classification": {}, "prepare": {}}
    for name, step in RUN_OPTIONS.items():
        if name in options:
            steps[step][name] = options.pop(name)
    steps["prepare"]["decontaminate"] = eval_sets_option(decontaminate, no_decontaminate)
    with opts.pipeline(
        batch_dir,
        seed=seed,
        seeds=seed_tasks,
        command="run",
        changed_settings=changed_settings,
        batch=batch,
        language=language,
    ) as p:
        reports = p.run(
            num_instructions,
            instructions=steps["instructions"],
            classification=steps["classification"],
            prepare=steps["prepare"],
            **options,
        )
        finish(p, list(reports.values()))


# The options of `run` that go to one step each (the others are `Pipeline.run`'s own).
RUN_OPTIONS = {
    "num_prompt_instructions": "instructions",
    "similarity_threshold": "instructions",
    "lowercase_rest": "instructions",
    "lag": "instructions",
    "lenient_labels": "classification",
    "max_instances_per_task": "prepare",
    "end_token": "prepare",
    "min_rating": "prepare",
    "judge_model": "prepare",
}


# What to run after each step.
NEXT_COMMAND = {
    "instructions": "selfinstruct identify-clf --batch-dir {run}",
    "classify": "selfinstruct generate-instances --batch-dir {run}",
    "instances": "selfinstruct prepare --batch-dir {run}",
    "prepare": "selfinstruct report {run}  (then: selfinstruct finetune {data} --out FOLDER)",
}


def finish(p: Any, reports: list[Any]) -> None:
    """A command's last lines: what it wrote, what it cost, and the next command to run."""
    from selfinstruct.runfile import RunFile

    for report in reports:
        for path in report.outputs:
            p.reporter.info(f"wrote {path}")
    last = reports[-1]
    if last.step == "prepare":
        c = last.counts
        p.reporter.info(
            f"training examples: {c.get('generated_instances', 0)} generated,"
            f" {c.get('seed_instances_included', 0)} from the seed tasks"
        )
    usage = RunFile(p.folder).data.get("usage", {})
    if usage.get("requests"):
        p.reporter.info(
            f"run {p.folder.path}: {usage['requests']} requests,"
            f" {usage.get('total_tokens', 0):,} tokens in all (details in run.json)"
        )
    if last.complete:
        data = p.folder.alpaca if last.step == "prepare" else ""
        p.reporter.info("next: " + NEXT_COMMAND[last.step].format(run=p.folder.path, data=data))


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
