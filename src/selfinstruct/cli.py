"""The `selfinstruct` command: one thin command per pipeline step, plus run, dedup and seeds."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from selfinstruct.engine import EngineSettings, run_sync
from selfinstruct.errors import ConfigError, SelfInstructError
from selfinstruct.models import Model, load_model
from selfinstruct.progress import Reporter
from selfinstruct.records import FINETUNING_DIR, INSTANCES_FILE, INSTRUCTIONS_FILE, SeedTask
from selfinstruct.runfile import RunFile
from selfinstruct.steps import StepContext, StepReport

DEFAULT_MODEL = "local"
RESUME_HINT = "interrupted: everything accepted so far is saved; rerun the same command to resume"


def _model_options(f: Callable) -> Callable:
    options = [
        click.option(
            "--model",
            "--engine",
            "-m",
            "model_spec",
            default=DEFAULT_MODEL,
            show_default=True,
            help="Model spec: 'local' (embedded SmolLM2-135M-Instruct), 'local:PATH.gguf',"
            " 'openai:MODEL' (chat API) or 'openai:MODEL?api=completions'. See README.",
        ),
        click.option(
            "--base-url",
            default=None,
            envvar="OPENAI_BASE_URL",
            help="OpenAI-compatible server URL  [default: $OPENAI_BASE_URL or OpenAI's]",
        ),
        click.option(
            "--api-key",
            "--api_key",
            "api_key",
            default=None,
            help="API key  [default: $OPENAI_API_KEY; never written to any file]",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            default=120.0,
            show_default=True,
            help="Seconds to wait for one HTTP response before retrying.",
        ),
        click.option(
            "--concurrency",
            type=click.IntRange(min=1),
            default=None,
            help="Requests in flight at once  [default: 8 for HTTP servers, 1 for local]",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(min=1),
            default=8,
            show_default=True,
            help="Tries per request on timeouts, connection errors, 429 and 5xx.",
        ),
        click.option(
            "--rpm",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Rate limit: requests per minute  [default: none]",
        ),
        click.option(
            "--tpm",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Rate limit: tokens per minute (estimated before, counted after)  [default: none]",
        ),
        click.option(
            "--max-requests",
            type=click.IntRange(min=1),
            default=None,
            help="Stop cleanly after this many requests in this invocation  [default: none]",
        ),
        click.option(
            "--max-tokens-total",
            type=click.IntRange(min=1),
            default=None,
            help="Stop cleanly after this many tokens in this invocation  [default: none]",
        ),
        click.option(
            "--price",
            default=None,
            metavar="IN,OUT",
            help="USD per million prompt and completion tokens, for the cost in run.json.",
        ),
        click.option(
            "--quiet", "-q", is_flag=True, help="No progress bars or summaries (errors still show)."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _seed_option(default: int) -> Callable:
    return click.option(
        "--seed",
        type=int,
        default=default,
        show_default=True,
        help="Sampling seed: prompts and the local model's decoding are reproducible with it"
        " at concurrency 1.",
    )


def _seed_tasks_option(f: Callable) -> Callable:
    return click.option(
        "--seed-tasks",
        "--seed-tasks-path",
        "--seed_tasks_path",
        "seed_tasks",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Seed tasks: the original seed_tasks.jsonl format, or a .txt of instructions"
        "  [default: our 175 built-in tasks]",
    )(f)


def _batch_dir_option(f: Callable) -> Callable:
    return click.option(
        "--batch-dir",
        "--batch_dir",
        "--out",
        "-o",
        "batch_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Run folder that holds every step's files.",
    )(f)


def _request_batch_size_option(f: Callable) -> Callable:
    return click.option(
        "--request-batch-size",
        "--request_batch_size",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Prompts per request where the API takes a list.",
    )(f)


def _first_instructions_option(f: Callable) -> Callable:
    return click.option(
        "--num-instructions",
        "--num_instructions",
        type=click.IntRange(min=1),
        default=None,
        help="Only the first N instructions  [default: all]",
    )(f)


@dataclasses.dataclass
class ModelOptions:
    model_spec: str
    base_url: str | None
    api_key: str | None
    timeout: float
    concurrency: int | None
    max_attempts: int
    rpm: float | None
    tpm: float | None
    max_requests: int | None
    max_tokens_total: int | None
    price: str | None
    quiet: bool

    @classmethod
    def pop(cls, kwargs: dict[str, Any]) -> ModelOptions:
        return cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)})

    def engine(self) -> EngineSettings:
        return EngineSettings(
            concurrency=self.concurrency,
            max_attempts=self.max_attempts,
            requests_per_minute=self.rpm,
            tokens_per_minute=self.tpm,
            max_requests=self.max_requests,
            max_tokens_total=self.max_tokens_total,
        )

    def parsed_price(self) -> tuple[float, float] | None:
        if self.price is None:
            return None
        try:
            prompt, completion = (float(x) for x in self.price.split(","))
        except ValueError:
            raise ConfigError(
                f"--price {self.price!r}: expected two numbers, e.g. 0.15,0.60"
            ) from None
        return prompt, completion

    def open(self, seed: int) -> Model:
        model = load_model(
            self.model_spec,
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout,
            seed=seed,
        )
        run_sync(model.check(), release=model)
        return model


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
            _request_batch_size_option,
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
@_batch_dir_option
@_seed_tasks_option
@_instruction_options
@_seed_option(42)
@_model_options
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
@_batch_dir_option
@_first_instructions_option
@click.option(
    "--template",
    type=click.Choice(["template_1"]),
    default="template_1",
    show_default=True,
    help="Few-shot template (the original's name).",
)
@_request_batch_size_option
@_seed_option(42)
@_model_options
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
@_batch_dir_option
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
@_first_instructions_option
@_request_batch_size_option
@_instance_options
@_seed_option(42)
@_model_options
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
@_batch_dir_option
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
@_seed_tasks_option
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
@_seed_option(123)
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
@_batch_dir_option
@_seed_tasks_option
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
@_request_batch_size_option
@click.option(
    "--include-seed-tasks/--no-include-seed-tasks",
    default=True,
    show_default=True,
    help="Add the seed tasks' instances to the fine-tuning data.",
)
@_seed_option(42)
@_model_options
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


# --- dedup --------------------------------------------------------------------------------


@cli.command("dedup")
@click.argument("in_path", metavar="IN.jsonl", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the kept records.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=0.7,
    show_default=True,
    help="Drop a record whose ROUGE-L F1 to a kept one is above this.",
)
@click.option(
    "--field", default="instruction", show_default=True, help="JSON field that holds the text."
)
@click.option("--stem", is_flag=True, help="Porter-stem tokens (rouge-score's use_stemmer=True).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or report.")
def dedup_cmd(
    in_path: Path, out_path: Path, threshold: float, field: str, stem: bool, quiet: bool
) -> None:
    """Keep, in file order, each instruction whose ROUGE-L to every kept one is <= threshold."""
    from selfinstruct.dedup import dedup_jsonl

    reporter = Reporter(quiet=quiet)
    if not in_path.exists():
        raise ConfigError(f"{in_path}: no such file")
    total = sum(1 for _ in open(in_path, "rb"))
    with reporter.bar("dedup", total) as bar:
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            bar.advance(n - done)
            done = n

        report = dedup_jsonl(
            in_path, out_path, threshold=threshold, field=field, stem=stem, progress=progress
        )
    if not quiet:
        click.echo(report.format_table(), err=True)


# --- seeds --------------------------------------------------------------------------------


@cli.group("seeds")
def seeds_group() -> None:
    """Our built-in seed tasks, and a validator for yours."""


@seeds_group.command("show")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show only the first N.")
def seeds_show(limit: int | None) -> None:
    """Print the built-in seed tasks, one line each."""
    from selfinstruct import seeds

    tasks = seeds.default()
    for task in tasks[:limit]:
        kind = "clf" if task.is_classification else "gen"
        click.echo(f"{task.id}\t{kind}\t{len(task.instances)}\t{task.instruction}")
    if limit is None or limit >= len(tasks):
        n_clf = sum(t.is_classification for t in tasks)
        click.echo(f"{len(tasks)} tasks, {n_clf} classification", err=True)


@seeds_group.command("export")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def seeds_export(out: Path) -> None:
    """Write the built-in seed tasks to OUT in the original seed_tasks.jsonl format."""
    from selfinstruct import seeds

    tasks = seeds.default()
    seeds.write_seed_tasks(tasks, out)
    click.echo(f"wrote {len(tasks)} seed tasks to {out}", err=True)


@seeds_group.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
def seeds_validate(path: Path) -> None:
    """Check a seed file; print every problem with file and line; exit 1 if there is one."""
    from selfinstruct import seeds

    problems = seeds.validate_seed_file(path)
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        raise SystemExit(1)
    tasks = seeds.load_seed_tasks(path)
    n_clf = sum(t.is_classification for t in tasks)
    click.echo(f"{path}: {len(tasks)} tasks, {n_clf} classification: valid")


def _register_optional_commands() -> None:
    try:
        from selfinstruct.finetune.commands import evaluate_command, finetune_command
    except ImportError:
        return
    cli.add_command(finetune_command, "finetune")
    cli.add_command(evaluate_command, "evaluate")


_register_optional_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: typed errors become one line on stderr and an exit code."""
    try:
        cli.main(args=argv, prog_name="selfinstruct", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(RESUME_HINT, err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo(RESUME_HINT, err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except SelfInstructError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        click.echo(f"error: {e.filename or ''}: {e.strerror or e}", err=True)
        sys.exit(1)
