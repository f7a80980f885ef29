"""The pipeline commands: the four steps one by one, and `run` for all of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from selfinstruct.cli import cli
from selfinstruct.cli.options import (
    ModelOptions,
    first_instructions_option,
    model_options,
    request_batch_size_option,
    run_folder_option,
    seed_option,
    seed_tasks_option,
)
from selfinstruct.engine import EngineSettings
from selfinstruct.errors import ConfigError, SelfInstructError
from selfinstruct.progress import Reporter
from selfinstruct.records import FINETUNING_DIR, INSTANCES_FILE, INSTRUCTIONS_FILE, SeedTask
from selfinstruct.runfile import RunFile
from selfinstruct.steps import StepContext, StepReport

def _load_seeds(path: Path | None) -> list[SeedTask]:
    from selfinstruct import seeds

    return seeds.default() if path is None else seeds.load_seed_tasks(path)


def _settings_dict(settings: Any) -> dict[str, Any]:
    out = dataclasses.asdict(settings)
    if "sampling" in out:
        out["sampling"]["stop"] = list(out["sampling"]["stop"])
    return out


def _finish(
    report: StepReport, reporter: Reporter, title: str, *, hint_resume: bool = True
) -> None:
    reporter.summary(title, report.rows())
    if report.engine is not None and report.engine.budget_stop:
        raise _BudgetStop(report.engine.budget_stop)
    if hint_resume and not report.complete:
        reporter.warn(
            f"{report.step}: not complete (see the counts above); rerun the same command to"
            " continue where it stopped"
        )


class _BudgetStop(SelfInstructError):
    exit_code = 4

    def __init__(self, which: str):
        super().__init__(
            f"stopped at the --{which.replace('_', '-')} budget; the folder is consistent:"
            " rerun with a larger budget to continue"
        )


def _run_step(
    batch_dir: Path,
    opts: ModelOptions,
    seed: int,
    command: str,
    step: Callable[..., StepReport],
    settings: Any,
    *args: Any,
    **kwargs: Any,
) -> StepReport:
    reporter = Reporter(quiet=opts.quiet)
    price = opts.parsed_price()
    model = opts.open(seed)
    batch_dir.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(model=model, engine=opts.engine(), reporter=reporter)
    # Each step releases its connections as its event loop ends (run_sync's `release`).
    report = step(ctx, *args, settings=settings, **kwargs)
    RunFile(batch_dir).record_step(
        report,
        command=command,
        config={**_settings_dict(settings), "model": opts.model_spec},
        model=model.info,
        seed=seed,
        price=price,
    )
    return report


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="selfinstruct")
def cli() -> None:
    """Self-Instruct: grow an instruction-tuning dataset from a few seed tasks, on any model."""


# --- step 1 -------------------------------------------------------------------------------


def _instruction_options(f: Callable) -> Callable:
    for option in reversed(
        [
            click.option(
                "--num-instructions-to-generate",
                "--num_instructions_to_generate",
                "--num-instructions",
                "num_instructions",
                type=click.IntRange(min=1),
                default=100,
                show_default=True,
                help="Machine instructions to reach (the paper: 52K).",
            ),
            click.option(
                "--use-clf-seed-tasks-only",
                "--use_clf_seed_tasks_only",
                is_flag=True,
                help="Prompt with classification seed tasks only (more classification tasks).",
            ),
            click.option(
                "--num-prompt-instructions",
                "--num_prompt_instructions",
                type=click.IntRange(min=2),
                default=8,
                show_default=True,
                help="Instructions listed in each prompt (2 of them machine-generated).",
            ),
            request_batch_size_option,
            click.option(
                "--similarity-threshold",
                type=click.FloatRange(0, 1),
                default=0.7,
                show_default=True,
                help="Keep a candidate only if its max ROUGE-L F1 is <= this.",
            ),
        ]
    ):
        f = option(f)
    return f


def _instruction_settings(kwargs: dict[str, Any], seed: int):  # type: ignore[no-untyped-def]
    from selfinstruct.steps.instructions import InstructionSettings

    return InstructionSettings(
        num_instructions=kwargs["num_instructions"],
        num_prompt_instructions=kwargs["num_prompt_instructions"],
        request_batch_size=kwargs["request_batch_size"],
        classification_only=kwargs["use_clf_seed_tasks_only"],
        similarity_threshold=kwargs["similarity_threshold"],
        seed=seed,
    )


@cli.command("generate-instructions")
@run_folder_option
@seed_tasks_option
@_instruction_options
@seed_option(42)
@model_options
def generate_instructions_cmd(
    batch_dir: Path, seed_tasks: Path | None, seed: int, **kwargs: Any
) -> None:
    """Step 1: bootstrap new instructions from the seed tasks."""
    from selfinstruct.steps.instructions import generate_instructions

    opts = ModelOptions.pop(kwargs)
    seeds = _load_seeds(seed_tasks)
    settings = _instruction_settings(kwargs, seed)
    report = _run_step(
        batch_dir,
        opts,
        seed,
        "generate-instructions",
        generate_instructions,
        settings,
        seeds,
        batch_dir,
    )
    _finish(report, Reporter(quiet=opts.quiet), "Step 1: instructions")


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
@seed_option(42)
@model_options
def identify_clf_cmd(
    batch_dir: Path,
    num_instructions: int | None,
    template: str,
    request_batch_size: int,
    seed: int,
    **kwargs: Any,
) -> None:
    """Step 2: ask the model whether each instruction is a classification task."""
    from selfinstruct.steps.classify import ClassifySettings, identify_classification

    opts = ModelOptions.pop(kwargs)
    settings = ClassifySettings(
        num_instructions=num_instructions, request_batch_size=request_batch_size
    )
    report = _run_step(
        batch_dir, opts, seed, "identify-clf", identify_classification, settings, batch_dir
    )
    _finish(report, Reporter(quiet=opts.quiet), "Step 2: classification")


# --- step 3 -------------------------------------------------------------------------------


def _instance_options(f: Callable) -> Callable:
    for option in reversed(
        [
            click.option(
                "--max-instances-to-generate",
                "--max_instances_to_generate",
                "--max-instances",
                "max_instances",
                type=click.IntRange(min=1),
                default=5,
                show_default=True,
                help="Instances to ask for per task.",
            ),
            click.option(
                "--generation-tasks-only",
                "--generation_tasks_only",
                is_flag=True,
                help="Only tasks labelled not classification.",
            ),
            click.option(
                "--classification-tasks-only",
                "--classification_tasks_only",
                is_flag=True,
                help="Only tasks labelled classification.",
            ),
        ]
    ):
        f = option(f)
    return f


@cli.command("generate-instances")
@run_folder_option
@click.option(
    "--input-file",
    "--input_file",
    default=INSTRUCTIONS_FILE,
    show_default=True,
    help="Instructions file in the run folder.",
)
@click.option(
    "--output-file",
    "--output_file",
    default=INSTANCES_FILE,
    show_default=True,
    help="Instances file in the run folder.",
)
@click.option(
    "--classification-file",
    default=None,
    help="is_clf_or_not_*.jsonl to read  [default: the folder's only one]",
)
@first_instructions_option
@request_batch_size_option
@_instance_options
@seed_option(42)
@model_options
def generate_instances_cmd(batch_dir: Path, seed: int, **kwargs: Any) -> None:
    """Step 3: generate instances, output-first for classification tasks, input-first otherwise."""
    from selfinstruct.steps.instances import InstanceSettings, generate_instances

    opts = ModelOptions.pop(kwargs)
    settings = InstanceSettings(
        max_instances_to_generate=kwargs["max_instances"],
        num_instructions=kwargs["num_instructions"],
        request_batch_size=kwargs["request_batch_size"],
        generation_tasks_only=kwargs["generation_tasks_only"],
        classification_tasks_only=kwargs["classification_tasks_only"],
        input_file=kwargs["input_file"],
        output_file=kwargs["output_file"],
        classification_file=kwargs["classification_file"],
    )
    report = _run_step(
        batch_dir, opts, seed, "generate-instances", generate_instances, settings, batch_dir
    )
    _finish(report, Reporter(quiet=opts.quiet), "Step 3: instances")


# --- step 4 -------------------------------------------------------------------------------


@cli.command("prepare")
@run_folder_option
@click.option(
    "--instance-files",
    "--instance_files",
    multiple=True,
    default=[INSTANCES_FILE],
    show_default=True,
    help="Instances files in the run folder (repeat the option).",
)
@click.option(
    "--classification-type-files",
    "--classification_type_files",
    multiple=True,
    default=None,
    help="is_clf_or_not files  [default: the folder's only one]",
)
@click.option(
    "--output-dir",
    "--output_dir",
    default=FINETUNING_DIR,
    show_default=True,
    help="Output folder, inside the run folder.",
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
    help="Add the seed tasks' instances.",
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
@seed_option(123)
@click.option("--quiet", "-q", is_flag=True, help="No summary.")
def prepare_cmd(
    batch_dir: Path, seed_tasks: Path | None, quiet: bool, seed: int, **kwargs: Any
) -> None:
    """Step 4: filter the instances and write fine-tuning files (GPT-3, OpenAI chat, Alpaca)."""
    from selfinstruct.steps.prepare import PrepareSettings

    settings = PrepareSettings(
        instance_files=list(kwargs["instance_files"]),
        classification_files=list(kwargs["classification_type_files"] or []) or None,
        output_dir=kwargs["output_dir"],
        num_instructions=kwargs["num_instructions"],
        include_seed_tasks=kwargs["include_seed_tasks"],
        max_instances_per_task=kwargs["max_instances_per_task"],
        end_token=kwargs["end_token"],
        seed=seed,
    )
    _prepare(batch_dir, settings, seed_tasks, Reporter(quiet=quiet))


def _prepare(batch_dir: Path, settings: Any, seed_tasks: Path | None, reporter: Reporter) -> None:
    from selfinstruct.steps.prepare import prepare_finetuning

    seeds = _load_seeds(seed_tasks) if settings.include_seed_tasks else None
    report = prepare_finetuning(batch_dir, settings, seeds=seeds, reporter=reporter)
    RunFile(batch_dir).record_step(
        report, command="prepare", config=_settings_dict(settings), model=None, seed=None
    )
    reporter.summary("Step 4: fine-tuning data", report.rows())
    for path in report.outputs:
        reporter.info(f"wrote {path}")


# --- run ----------------------------------------------------------------------------------


@cli.command("run")
@run_folder_option
@seed_tasks_option
@click.option(
    "--num-instructions",
    "num_instructions",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Machine instructions to generate (the paper: 52K; its script: 100).",
)
@click.option(
    "--max-instances",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Instances to ask for per task.",
)
@click.option(
    "--use-clf-seed-tasks-only", is_flag=True, help="Prompt with classification seed tasks only."
)
@request_batch_size_option
@click.option(
    "--include-seed-tasks/--no-include-seed-tasks",
    default=True,
    show_default=True,
    help="Add the seed tasks' instances to the fine-tuning data.",
)
@seed_option(42)
@model_options
def run_cmd(
    batch_dir: Path,
    seed_tasks: Path | None,
    num_instructions: int,
    max_instances: int,
    use_clf_seed_tasks_only: bool,
    request_batch_size: int,
    include_seed_tasks: bool,
    seed: int,
    **kwargs: Any,
) -> None:
    """Run all four steps into one folder; rerun it to resume."""
    from selfinstruct.steps.classify import ClassifySettings, identify_classification
    from selfinstruct.steps.instances import InstanceSettings, generate_instances
    from selfinstruct.steps.instructions import InstructionSettings, generate_instructions
    from selfinstruct.steps.prepare import PrepareSettings

    opts = ModelOptions.pop(kwargs)
    reporter = Reporter(quiet=opts.quiet)
    seeds = _load_seeds(seed_tasks)  # a bad seed file stops here, before any model call
    price = opts.parsed_price()
    model = opts.open(seed)
    batch_dir.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(model=model, engine=opts.engine(), reporter=reporter)
    run_file = RunFile(batch_dir)
    steps: list[tuple[str, Callable[[], StepReport], Any]] = []
    s1 = InstructionSettings(
        num_instructions=num_instructions,
        request_batch_size=request_batch_size,
        classification_only=use_clf_seed_tasks_only,
        seed=seed,
    )
    s2 = ClassifySettings(request_batch_size=request_batch_size)
    s3 = InstanceSettings(
        max_instances_to_generate=max_instances, request_batch_size=request_batch_size
    )
    steps = [
        ("Step 1: instructions", lambda: generate_instructions(ctx, seeds, batch_dir, s1), s1),
        ("Step 2: classification", lambda: identify_classification(ctx, batch_dir, s2), s2),
        ("Step 3: instances", lambda: generate_instances(ctx, batch_dir, s3), s3),
    ]
    for title, step, settings in steps:
        report = step()
        # The budgets are for the whole invocation: what this step spent is gone for the next.
        ctx.engine = _remaining_budget(ctx.engine, report)
        run_file.record_step(
            report,
            command="run",
            config={**_settings_dict(settings), "model": opts.model_spec},
            model=model.info,
            seed=seed,
            price=price,
        )
        _finish(report, reporter, title)
        if not report.complete:
            raise SelfInstructError(
                f"{report.step} did not complete (see the summary); rerun to continue"
            )
    s4 = PrepareSettings(include_seed_tasks=include_seed_tasks)
    _prepare(batch_dir, s4, seed_tasks, reporter)
    if not opts.quiet:
        usage = run_file.data.get("usage", {})
        reporter.info(
            f"done: {batch_dir}  ({usage.get('requests', 0)} requests,"
            f" {usage.get('total_tokens', 0):,} tokens in all; details in run.json)"
        )


def _remaining_budget(settings: EngineSettings, report: StepReport) -> EngineSettings:
    spent_requests = report.engine.requests if report.engine is not None else 0
    return dataclasses.replace(
        settings,
        max_requests=None
        if settings.max_requests is None
        else max(0, settings.max_requests - spent_requests),
        max_tokens_total=None
        if settings.max_tokens_total is None
        else max(0, settings.max_tokens_total - report.usage.total_tokens),
    )

