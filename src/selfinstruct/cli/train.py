"""The `finetune` and `evaluate` commands. Heavy imports (torch, transformers, openai) happen
inside the commands, so that `selfinstruct --help` stays fast and works without the extra."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from selfinstruct.cli import cli
from selfinstruct.cli.options import (
    ModelOptions,
    connection_options,
    model_options,
    one_url,
    quiet_option,
    seed_option,
)
from selfinstruct.errors import BudgetExhausted, ConfigError, SelfInstructError

if TYPE_CHECKING:
    from selfinstruct.progress import Reporter

FINETUNE_EPILOG = """\b
Examples:
  selfinstruct finetune run/finetuning_data/alpaca_data.json --out runs/ft
  selfinstruct evaluate --model 'local?lora=runs/ft' --tasks runs/ft/heldout.jsonl \\
      --out runs/ft/pred.jsonl
  selfinstruct finetune data.jsonl --out runs/oai --backend openai \\
      --model gpt-4o-mini-2024-07-18
"""


@cli.command(
    "finetune",
    epilog=FINETUNE_EPILOG,
)
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: adapter.gguf, peft/, finetune.json, heldout.jsonl, checkpoint/.",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "openai"]),
    default="local",
    show_default=True,
    help="local: transformers + peft on this machine; openai: the fine-tuning API.",
)
@click.option(
    "--base",
    default="local",
    show_default=True,
    help="[local] Base model spec: 'local' (embedded SmolLM2-135M-Instruct) or"
    " 'local:PATH.gguf' (a llama-architecture GGUF).",
)
@click.option(
    "--model",
    "openai_model",
    default="gpt-4o-mini-2024-07-18",
    show_default=True,
    help="[openai] Base model to fine-tune.",
)
@click.option(
    "--full",
    is_flag=True,
    help="[local] Train every weight instead of a LoRA; writes OUT/model.gguf  [default: LoRA]",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Passes over the training data  [default: 3 local; the server's choice for openai]",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="[local] Peak learning rate (linear warm-up, then linear decay)"
    "  [default: 1e-3 LoRA, 5e-5 --full]",
)
@click.option(
    "--lora-r", type=click.IntRange(min=1), default=16, show_default=True, help="[local] LoRA rank."
)
@click.option(
    "--lora-alpha",
    type=click.FloatRange(min=0, min_open=True),
    default=32.0,
    show_default=True,
    help="[local] LoRA alpha: updates are scaled by alpha / rank.",
)
@click.option(
    "--lora-dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="[local] Dropout on the LoRA path (fraction).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Examples per optimiser step  [default: 8 local; the server's choice for openai]",
)
@click.option(
    "--max-length",
    type=click.IntRange(min=16),
    default=512,
    show_default=True,
    help="[local] Tokens per example (prompt + response); longer responses are cut.",
)
@click.option(
    "--eval-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.05,
    show_default=True,
    help="Fraction of examples held out (OUT/heldout.jsonl; validation file for openai).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the split, the data order and the initial LoRA weights.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "bf16", "fp32"]),
    default="auto",
    show_default=True,
    help="[local] Autocast dtype; auto: bf16 only where the CPU has native bf16"
    " (AVX512-BF16/AMX), else fp32.",
)
@click.option("--fp32", is_flag=True, help="[local] Same as --precision fp32.")
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="[local] Stop training after this many minutes in this invocation; the adapter is"
    " still written and a rerun continues  [default: no limit]",
)
@click.option(
    "--max-train-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="[local] Stop once this many tokens were trained, reruns included  [default: no limit]",
)
@click.option(
    "--checkpoint-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="[local] Minutes between checkpoints (also at each epoch's end and on Ctrl-C).",
)
@click.option(
    "--gguf-type",
    type=click.Choice(["f16", "q8_0", "f32"]),
    default="f16",
    show_default=True,
    help="[local --full] Weight type of OUT/model.gguf.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="[local] CPU threads for training  [default: all cores]",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Discard OUT's checkpoint or job record and start over (openai: a new, paid job).",
)
@connection_options
@click.option("--suffix", default=None, help="[openai] Suffix of the fine-tuned model's name.")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="[openai] Seconds before the first status poll; grows 1.5x a poll up to 120 s.",
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="[openai] Start (or check) the job and exit; rerun the command to resume polling.",
)
@quiet_option
def finetune_command(data: Path, out: Path, backend: str, **opts: Any) -> None:
    """Fine-tune a model on DATA and write the result to OUT.

    DATA may be any file the pipeline writes (gpt3_finetuning_data_*.jsonl,
    openai_chat_finetuning_data.jsonl, trl_prompt_completion.jsonl, sharegpt_data.jsonl,
    alpaca_data.json, all_generated_instances.jsonl), a folder written by 'selfinstruct export'
    (its training examples), or the original release's gpt3_finetuning_data.jsonl. The local
    backend trains a LoRA on the embedded model (no download) and writes OUT/adapter.gguf: use
    it at once with --model 'local?lora=OUT'. A rerun of an interrupted command continues where
    it stopped.
    """
    from selfinstruct.progress import Reporter

    reporter = Reporter(quiet=opts["quiet"])
    if backend == "openai":
        _finetune_openai(data, out, opts, reporter)
    else:
        _finetune_local(data, out, opts, reporter)


# Options that only the openai backend reads: given to the local one, they are an error.
_OPENAI_ONLY = ("api_key", "suffix", "no_wait")


def _finetune_local(data: Path, out: Path, opts: dict[str, Any], reporter: Reporter) -> None:
    from selfinstruct.finetune.local import LocalConfig, train_local

    for name in _OPENAI_ONLY:
        if opts.get(name):
            raise ConfigError(f"--{name.replace('_', '-')} applies to --backend openai only")
    fields = {f.name for f in dataclasses.fields(LocalConfig)}
    config = LocalConfig(**{k: v for k, v in opts.items() if k in fields and v is not None})
    if opts["fp32"]:
        config.precision = "fp32"
    result = train_local(data, out, config, reporter=reporter)
    report = result.report
    training, loss = report.get("training", {}), report.get("loss", {})
    rows = [
        ("status", result.status + (f" ({result.stop_reason})" if result.stop_reason else "")),
        ("examples train / held out", f"{report['data']['train']} / {report['data']['held_out']}"),
        ("steps", f"{training.get('steps')} / {training.get('total_steps')}"),
        ("tokens trained", training.get("tokens")),
        ("tokens/s", training.get("tokens_per_second")),
        ("train loss first -> last", f"{loss.get('train_first')} -> {loss.get('train_last')}"),
        (
            "held-out loss before -> after",
            f"{loss.get('held_out_before')} -> {loss.get('held_out_after')}",
        ),
        ("peak memory (MiB)", training.get("peak_rss_mib")),
    ]
    reporter.summary(f"fine-tuning ({report.get('method')})", rows)
    if result.status != "complete":
        reporter.warn(
            f"stopped at --{str(result.stop_reason).replace('_', '-')}; the adapter so far is"
            " written; rerun the same command (with a larger limit) to continue"
        )
    click.echo(report["model_spec"])


def _finetune_openai(data: Path, out: Path, opts: dict[str, Any], reporter: Reporter) -> None:
    from selfinstruct.finetune.openai_jobs import OpenAIConfig, run_openai_finetune

    if opts["full"] or opts["lr"] is not None:
        raise ConfigError("--full and --lr apply to --backend local only")
    config = OpenAIConfig(
        model=opts["openai_model"],
        epochs=opts["epochs"],
        batch_size=opts["batch_size"],
        seed=opts["seed"],
        suffix=opts["suffix"],
        eval_fraction=opts["eval_fraction"],
        poll_interval=opts["poll_interval"],
        wait=not opts["no_wait"],
        restart=opts["restart"],
    )
    result = run_openai_finetune(
        data,
        out,
        config,
        api_key=opts["api_key"],
        base_url=one_url(opts["base_url"], "fine-tuning jobs"),
        reporter=reporter,
    )
    if result.fine_tuned_model:
        click.echo(result.fine_tuned_model)
    else:
        click.echo(
            f"job {result.job_id} is {result.status}; rerun the same command to wait for it",
            err=True,
        )


EVALUATE_EPILOG = """\b
Examples:
  selfinstruct evaluate --model local --tasks user_oriented_instructions.jsonl --out base.jsonl
  selfinstruct evaluate --model 'local?lora=runs/ft' --tasks runs/ft/heldout.jsonl \\
      --out ft.jsonl
  selfinstruct evaluate --predictions ft.jsonl
  selfinstruct evaluate --compare base.jsonl ft.jsonl human_eval_predictions/*.jsonl
"""


@cli.command(
    "evaluate",
    epilog=EVALUATE_EPILOG,
)
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--tasks",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Tasks to answer: user-oriented tasks JSONL (id, instruction, instances), a held-out"
    " split (instruction, input, output) or any fine-tuning format.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Predictions JSONL (prompt, instruction, input, response, target); a rerun skips ids"
    " already there.",
)
@click.option(
    "--predictions",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Score an existing predictions file instead of generating (repeatable).",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Score the FILES given as arguments and rank them by ROUGE-L, side by side.",
)
@click.option(
    "--prompt-format",
    type=click.Choice(["user", "release"]),
    default="user",
    show_default=True,
    help="user: instruction, blank line, input, as one chat turn (what fine-tuning trains);"
    " release: the paper's '...Input: ...\\nOutput:' completion prompt.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Most tokens per answer.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Sampling temperature (0: greedy).",
)
@click.option("--stop", multiple=True, help="Stop sequence (repeatable)  [default: none]")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Answer only the first N tasks  [default: all]",
)
@seed_option(0)
@click.option(
    "--format",
    "table_format",
    type=click.Choice(["table", "markdown", "json"]),
    default="table",
    show_default=True,
    help="How scores are printed on stdout. table and markdown round; json prints one"
    " document, a list with one object per file (even for one file) with file, n, rouge_l and"
    " exact_match (fractions 0..1) and mean_length (words), at full precision.",
)
@click.option(
    "--training-data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Warn when the tasks overlap this training file (13-gram or ROUGE-L > 0.7)  [default:"
    " the data a 'local?lora=DIR' model was fine-tuned on, per DIR/finetune.json]",
)
@model_options
def evaluate_command(
    files: tuple[Path, ...],
    tasks: Path | None,
    out: Path | None,
    predictions: tuple[Path, ...],
    compare: bool,
    prompt_format: str,
    max_tokens: int,
    temperature: float,
    stop: tuple[str, ...],
    limit: int | None,
    seed: int,
    table_format: str,
    training_data: Path | None,
    **kwargs: Any,
) -> None:
    """Answer a task file with a model and score it (ROUGE-L F1, exact match, length), score
    existing prediction files, or compare several side by side.

    \b
    Three modes:
      --model SPEC --tasks FILE --out PRED.jsonl   generate (resumable), then score
      --predictions FILE [--predictions FILE ...]  score files in the release's format
      --compare A.jsonl B.jsonl ...                 score and rank by ROUGE-L
    """
    from selfinstruct import evaluation

    opts = ModelOptions.pop(kwargs)
    generating = tasks is not None or out is not None
    if sum([generating, bool(predictions), compare]) != 1:
        raise ConfigError(
            "choose one mode: --model/--tasks/--out, --predictions FILE, or --compare FILES"
        )
    if files and not compare:
        raise ConfigError("file arguments are read with --compare only")
    if compare and not files:
        raise ConfigError("--compare needs at least one predictions file")
    if compare or predictions:
        scores = [evaluation.score_file(f) for f in files or predictions]
        _print_scores(scores, table_format, ranked=compare)
        return
    if tasks is None or out is None:
        raise ConfigError("generating needs --tasks and --out (and --model, default: local)")
    opts.parsed_price()  # a malformed --price stops before any model call
    _warn_if_tasks_were_trained_on(tasks, training_data, opts.model_spec)
    from selfinstruct.models.base import Sampling
    from selfinstruct.progress import Reporter

    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed)
    result = evaluation.evaluate(
        opts.model_spec,
        tasks,
        out,
        prompt_format=prompt_format,
        sampling=sampling,
        engine=opts.engine(),
        limit=limit,
        reporter=Reporter(quiet=opts.quiet),
        base_url=opts.urls(),
        api_key=opts.api_key,
        timeout=opts.timeout,
        seed=seed,
        replicas=opts.replica_settings(),
    )
    _print_scores([result.scores], table_format, ranked=False)
    _raise_if_unfinished(result, out)


def _warn_if_tasks_were_trained_on(tasks: Path, training: Path | None, model_spec: str) -> None:
    """One line when the task file overlaps the model's training data (given, or found)."""
    from selfinstruct.decontaminate import overlap_warning, training_data_of

    training = training or training_data_of(model_spec)
    if training is not None:
        warning = overlap_warning(tasks, training)
        if warning is not None:
            click.echo(f"warning: {warning}", err=True)


def _raise_if_unfinished(result: Any, out: Path) -> None:
    if result.engine.get("budget_stop"):
        which = result.engine["budget_stop"].replace("_", "-")
        raise BudgetExhausted(
            f"stopped at the --{which} budget; {out} keeps every answer: rerun to continue"
        )
    if result.failed:
        raise SelfInstructError(
            f"{result.failed} task(s) got no answer after their retries; rerun the same command"
            " to answer them"
        )


def _print_scores(scores: list, table_format: str, *, ranked: bool) -> None:
    from selfinstruct import evaluation

    formatter = {
        "json": evaluation.format_json,
        "markdown": evaluation.format_markdown,
        "table": evaluation.format_table,
    }[table_format]
    click.echo(formatter(scores, ranked=ranked))
