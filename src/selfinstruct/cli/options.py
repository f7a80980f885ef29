"""Options shared by the commands, each declared once, and what they become.

`model_options` is everything a model-calling command takes: the model spec, the connection,
and the engine's concurrency, retries, rates, budgets and prices. `ModelOptions` turns them into
a `Pipeline`, a `Model` or `EngineSettings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from selfinstruct.engine import EngineSettings
from selfinstruct.errors import ConfigError
from selfinstruct.identity import CONTINUE, REFUSE
from selfinstruct.models import ReplicaSettings
from selfinstruct.steps.instructions import InstructionSettings

DEFAULT_MODEL = "local"


def _apply(f: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        f = option(f)
    return f


def _split_urls(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[str, ...]:
    """Every --base-url, each of which (like OPENAI_BASE_URL) may hold a comma-separated list."""
    from selfinstruct.models import base_urls

    if isinstance(value, str):
        value = (value,)
    return tuple(base_urls(list(value or ())))


BASE_URL = click.option(
    "--base-url",
    "base_url",
    multiple=True,
    envvar="OPENAI_BASE_URL",
    callback=_split_urls,
    help="OpenAI-compatible server URL; repeat it (or list several, comma-separated) to spread"
    " requests over several servers  [default: $OPENAI_BASE_URL or OpenAI's]",
)
API_KEY = click.option(
    "--api-key",
    "--api_key",
    "api_key",
    default=None,
    help="API key  [default: $OPENAI_API_KEY; never written to any file]",
)
QUIET = click.option(
    "--quiet", "-q", is_flag=True, help="No progress bars or summaries (errors still show)."
)


RUN_ARGUMENT = click.argument(
    "run", metavar="RUN", type=click.Path(file_okay=False, path_type=Path)
)


def run_argument(f: Callable) -> Callable:
    """The run folder, as the commands that look at a finished run take it."""
    return RUN_ARGUMENT(f)


def one_url(urls: tuple[str, ...], what: str) -> str | None:
    """The one --base-url of a command that talks to a single server."""
    if len(urls) > 1:
        raise ConfigError(f"--base-url: {what} go to one server; {len(urls)} were given")
    return urls[0] if urls else None


def connection_options(f: Callable) -> Callable:
    """--base-url and --api-key, for commands that reach an OpenAI-compatible server."""
    return _apply(f, [BASE_URL, API_KEY])


def quiet_option(f: Callable) -> Callable:
    return QUIET(f)


def model_options(f: Callable) -> Callable:
    """The model spec, its connection, and the engine's limits and budgets."""
    options = [
        click.option(
            "--model",
            "-m",
            "model_spec",
            default=DEFAULT_MODEL,
            show_default=True,
            help="Model spec: 'local' (embedded SmolLM2-135M-Instruct), 'local:PATH.gguf',"
            " 'openai:MODEL' (chat API) or 'openai:MODEL?api=completions'. See README.",
        ),
        click.option(
            "--engine",
            "engine_name",
            default=None,
            metavar="NAME",
            help="The original scripts' option: an OpenAI completions engine ('davinci' is"
            " 'openai:davinci?api=completions'), or a model spec as --model.",
        ),
        BASE_URL,
        API_KEY,
        click.option(
            "--replicas",
            type=click.IntRange(min=1),
            default=None,
            help="Copies of a local or vllm: model on a Ray cluster, each a Ray actor"
            "  [default: 1, in this process, for local; 1 Ray replica for vllm:]",
        ),
        click.option(
            "--ray-address",
            default=None,
            help="Ray cluster for --replicas ('auto', HOST:PORT, ray://HOST:10001)"
            "  [default: start a local Ray for this run and stop it after]",
        ),
        click.option(
            "--replica-cpus",
            type=click.FloatRange(min=0, min_open=True),
            default=1.0,
            show_default=True,
            help="CPUs per replica (a llama.cpp replica's threads).",
        ),
        click.option(
            "--replica-gpus",
            type=click.FloatRange(min=0),
            default=None,
            help="GPUs per replica  [default: 1 for vllm:, 0 for local]",
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
        QUIET,
    ]
    return _apply(f, options)


def seed_option(default: int, *, from_run: bool = False) -> Callable:
    """--seed; `from_run`: left out, the run's recorded seed (else `default`)."""
    help = (
        "Sampling seed: step 1's prompts (and the embedded model's decoding) are"
        " reproducible with it, at any concurrency."
    )
    if from_run:
        return click.option(
            "--seed", type=int, default=None, help=f"{help}  [default: the run's, else {default}]"
        )
    return click.option("--seed", type=int, default=default, show_default=True, help=help)


CONTINUE_ANYWAY = click.option(
    "--continue-anyway",
    "changed_settings",
    flag_value=CONTINUE,
    default=REFUSE,
    help="Continue a run with settings other than those it was made with; its data then mixes"
    " both, and run.json's history records the change  [default: refuse]",
)


def continue_anyway_option(f: Callable) -> Callable:
    return CONTINUE_ANYWAY(f)


# How the CLI spells the settings of a run's identity, where it is not --the-name.
SETTING_FLAGS = {
    "classification_only": "--use-clf-seed-tasks-only",
    "num_machine_in_prompt": "num_machine_in_prompt (library only)",
    "sampling": "sampling (library only)",
    "templates": "prompt templates (another selfinstruct version)",
}
WAYS_OUT = (
    "Rerun with the run's settings to resume it, use --out with a new folder for a new run,"
    " or add --continue-anyway to mix them (recorded in run.json's history)"
)


def setting_flag(name: str) -> str:
    return SETTING_FLAGS.get(name, "--" + name.replace("_", "-"))


def given(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave (on the command line or in the environment): one left out
    takes the run's recorded value, else the library's default."""
    ctx = click.get_current_context()
    return {
        k: v
        for k, v in kwargs.items()
        if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT
    }


def lag_option(f: Callable) -> Callable:
    return click.option(
        "--lag",
        type=click.IntRange(min=1),
        default=None,
        help="Step 1: the prompts of request i come from the pool as it stood once request"
        " i-LAG was decided; at most LAG requests are undecided, so a higher --concurrency"
        " waits (1: the original's serial loop). The data depends on it, not on concurrency."
        f"  [default: {InstructionSettings.lag}; with --batch-api, the round: a quarter of the"
        " requests the target needs, at most 50,000]",
    )(f)


def seed_tasks_option(f: Callable) -> Callable:
    return click.option(
        "--seed-tasks",
        "--seed-tasks-path",
        "--seed_tasks_path",
        "seed_tasks",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Seed tasks: the original seed_tasks.jsonl format, or a .txt of instructions"
        "  [default: the run's own (its copy, seed_tasks.jsonl), else our 175 built-in tasks]",
    )(f)


def _known_language(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An unknown code stops before any work, with one line naming the option."""
    from selfinstruct import language

    if value is not None and value.strip().lower() != language.AUTO:
        language.get(value)
    return value


def language_option(f: Callable) -> Callable:
    """--language: the seeds' language, for the similarity tokenizer, threshold and filters."""
    return click.option(
        "--language",
        "language",
        default=None,
        metavar="CODE",
        callback=_known_language,
        help="Language of the seed tasks and instructions: an ISO 639-1 code (zh, ja, ko, ru,"
        " ar, hi, ...) or 'auto' (detected from the seed tasks). Chooses the ROUGE-L tokenizer,"
        " the similarity threshold and the filters (docs/multilingual.md)"
        "  [default: the language the run folder recorded, else en]",
    )(f)


def run_folder_option(f: Callable | None = None, *, default_help: str | None = None) -> Any:
    """--batch-dir/--out, required; with `default_help`, optional and its default said so."""
    optional: dict[str, Any] = {"default": None} if default_help else {"required": True}
    option = click.option(
        "--batch-dir",
        "--batch_dir",
        "--out",
        "-o",
        "batch_dir",
        **optional,
        type=click.Path(file_okay=False, path_type=Path),
        help="Run folder that holds every step's files"
        + (f"  [default: {default_help}]" if default_help else "."),
    )
    return option if f is None else option(f)


def request_batch_size_option(f: Callable) -> Callable:
    return click.option(
        "--request-batch-size",
        "--request_batch_size",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Prompts per request where the API takes a list.",
    )(f)


def first_instructions_option(f: Callable) -> Callable:
    return click.option(
        "--num-instructions",
        "--num_instructions",
        type=click.IntRange(min=1),
        default=None,
        help="Only the first N instructions  [default: all]",
    )(f)


def engine_spec(engine: str) -> str:
    """--engine as the original scripts meant it: a bare name is an OpenAI completions engine
    (their only API); anything with a backend is a model spec."""
    from selfinstruct.models.spec import BACKENDS

    if ":" in engine or "?" in engine or engine.strip().lower() in BACKENDS:
        return engine
    return f"openai:{engine.strip()}?api=completions"


@dataclasses.dataclass
class ModelOptions:
    model_spec: str
    base_url: tuple[str, ...]
    api_key: str | None
    replicas: int | None
    ray_address: str | None
    replica_cpus: float
    replica_gpus: float | None
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
        engine = kwargs.pop("engine_name")
        options = cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)})
        if engine is not None:
            options.model_spec = engine_spec(engine)
        return options

    def engine(self) -> EngineSettings:
        return EngineSettings(
            concurrency=self.concurrency,
            max_attempts=self.max_attempts,
            requests_per_minute=self.rpm,
            tokens_per_minute=self.tpm,
            max_requests=self.max_requests,
            max_tokens_total=self.max_tokens_total,
        )

    def replica_settings(self) -> ReplicaSettings | None:
        """Ray replicas when any replica option is given (vllm: models always use them)."""
        if self.replicas is None and self.ray_address is None and self.replica_gpus is None:
            return None
        return ReplicaSettings(
            replicas=self.replicas or 1,
            address=self.ray_address,
            num_cpus=self.replica_cpus,
            num_gpus=self.replica_gpus,
        )

    def urls(self) -> list[str] | None:
        return list(self.base_url) or None

    def parsed_price(self) -> tuple[float, float] | None:
        return parse_price(self.price, "--price")

    def pipeline(
        self,
        out: Path,
        *,
        seed: int | None,
        seeds: Path | None = None,
        command: str = "",
        changed_settings: str = REFUSE,
        batch: BatchOptions | None = None,
        language: str | None = None,
    ):  # -> selfinstruct.pipeline.Pipeline
        from selfinstruct.pipeline import Pipeline

        return Pipeline(
            out,
            self.model_spec,
            seeds=seeds,
            engine=self.engine(),
            base_url=self.urls(),
            api_key=self.api_key,
            replicas=self.replica_settings(),
            timeout=self.timeout,
            seed=seed,
            price=self.parsed_price(),
            progress=not self.quiet,
            command=command,
            **(batch.pipeline_options() if batch is not None else {}),
            language=language,
            changed_settings=changed_settings,
        )


def parse_price(text: str | None, option: str) -> tuple[float, float] | None:
    """'IN,OUT' USD per million prompt and completion tokens."""
    if text is None:
        return None
    try:
        prompt, completion = (float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected two numbers, e.g. 0.15,0.60") from None
    return prompt, completion


BATCH_API = click.option(
    "--batch-api",
    is_flag=True,
    help="Send the requests through OpenAI's Batch API: half the price, answers within 24 h."
    " Step 1 runs in rounds; batch ids are kept in the run folder, so a rerun resumes instead"
    " of paying twice. Needs an 'openai:' model. See docs/batch.md.",
)
BATCH_PRICE = click.option(
    "--batch-price",
    default=None,
    metavar="IN,OUT",
    help="USD per million prompt and completion tokens in Batch API mode"
    "  [default: half of --price, OpenAI's batch discount]",
)
BATCH_POLL = click.option(
    "--batch-poll",
    type=click.FloatRange(min=0.01),
    default=30.0,
    show_default=True,
    help="Seconds between two looks at a running batch.",
)


def batch_options(f: Callable) -> Callable:
    """Batch API mode: --batch-api, its price and how often to look at a running batch."""
    return _apply(f, [BATCH_API, BATCH_PRICE, BATCH_POLL])


def batch_price_option(f: Callable) -> Callable:
    return BATCH_PRICE(f)


@dataclasses.dataclass
class BatchOptions:
    batch_api: bool
    batch_price: str | None
    batch_poll: float

    @classmethod
    def pop(cls, kwargs: dict[str, Any]) -> BatchOptions:
        return cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)})

    def pipeline_options(self) -> dict[str, Any]:
        """What `Pipeline` takes: batch_api (its settings) and batch_price."""
        from selfinstruct.batchapi import BatchSettings

        price = parse_price(self.batch_price, "--batch-price")
        if price is not None and not self.batch_api:
            raise ConfigError("--batch-price needs --batch-api")
        if not self.batch_api:
            return {}
        return {"batch_api": BatchSettings(poll_seconds=self.batch_poll), "batch_price": price}
