"""Answer a task file with any model, and score answers against references.

Task files: the user-oriented evaluation set of the paper (``{"id", "instruction",
"instances"}``), a held-out split of generated data (``{"instruction", "input", "output"}``, as
``selfinstruct finetune`` writes to ``OUT/heldout.jsonl``) or any other fine-tuning format
(see `selfinstruct.finetune.data`).

Predictions are written in the release's format (``prompt, instruction, input, response,
target``, plus ``id``), one line per answer as it arrives, so an interrupted run resumes: ids
already answered are skipped. The release's own prediction files score the same way.

Scores: ROUGE-L F1 of the response against the target (the project's exact rouge-score
implementation), exact match after stripping surrounding whitespace, and the response's length
in words.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct.engine import Engine, EngineSettings, Request, run_sync
from selfinstruct.errors import ConfigError, DataFileError
from selfinstruct.finetune.data import Example, read_examples
from selfinstruct.io import JsonlAppender, iter_jsonl
from selfinstruct.models.base import Completion, Model, Sampling
from selfinstruct.models.spec import ReplicaSettings
from selfinstruct.progress import Reporter
from selfinstruct.similarity import rouge_l

PROMPT_FORMATS = ("user", "release")


# --- prompts ---------------------------------------------------------------------------------


def release_prompt(instruction: str, input: str) -> str:
    """The prompt of the release's prediction files (GPT-3, plain completion)."""
    instruction, input = instruction.strip(), input.strip()
    if input:
        return f"{instruction}\n\nInput: {input}\nOutput:"
    return f"{instruction}\nOutput:"


def build_prompt(example: Example, prompt_format: str) -> str:
    if prompt_format == "release" and example.instruction is not None:
        return release_prompt(example.instruction, example.input)
    return example.user


def example_ids(examples: list[Example]) -> list[str]:
    """Stable ids: the file's own, else the example's position; duplicates get a suffix."""
    seen: dict[str, int] = {}
    out = []
    for k, e in enumerate(examples):
        base = e.id if e.id is not None else str(k)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}#{n}")
    return out


# --- scoring ---------------------------------------------------------------------------------


@dataclass
class Scores:
    name: str
    n: int
    rouge_l: float  # mean F1, 0..1
    exact_match: float  # fraction, 0..1
    mean_length: float  # words of the response
    per_item: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The scores at full precision (fractions 0..1, not percentages); tables round."""
        return {
            "file": self.name,
            "n": self.n,
            "rouge_l": self.rouge_l,
            "exact_match": self.exact_match,
            "mean_length": self.mean_length,
        }


def score_pair(response: str, target: str) -> tuple[float, bool, int]:
    return (
        rouge_l(target, response).fmeasure,
        response.strip() == target.strip(),
        len(response.split()),
    )


def score_records(records: Iterable[dict[str, Any]], name: str) -> Scores:
    rouge, exact, length = [], [], []
    items = []
    for k, record in enumerate(records):
        response, target = record.get("response"), record.get("target")
        if not isinstance(response, str) or not isinstance(target, str):
            raise DataFileError(
                f"{name}: record {k + 1} lacks a 'response' or 'target' string (the"
                " predictions format: prompt, instruction, input, response, target)"
            )
        r, e, n = score_pair(response, target)
        rouge.append(r)
        exact.append(e)
        length.append(n)
        items.append({"id": record.get("id", k), "rouge_l": r, "exact_match": e})
    if not rouge:
        return Scores(name, 0, 0.0, 0.0, 0.0)
    return Scores(
        name,
        len(rouge),
        statistics.fmean(rouge),
        sum(exact) / len(exact),
        statistics.fmean(length),
        items,
    )


def score_file(path: str | Path, *, ids: set[str] | None = None) -> Scores:
    """Scores of a predictions file; with `ids`, only of those predictions."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such predictions file")
    records = iter_jsonl(path)
    if ids is not None:
        records = (r for r in records if str(r.get("id")) in ids)
    return score_records(records, str(path))


def format_table(scores: list[Scores], *, ranked: bool = False) -> str:
    """A plain-text table: file, n, ROUGE-L F1 (mean, x100), exact match (%), mean length
    (words); `ranked` sorts by ROUGE-L, best first, and numbers the rows."""
    rows = sorted(scores, key=lambda s: -s.rouge_l) if ranked else list(scores)
    header = ["#", "file", "n", "ROUGE-L", "exact match %", "mean length (words)"]
    body = [
        [
            str(k),
            Path(s.name).name if len(scores) > 1 else s.name,
            str(s.n),
            f"{100 * s.rouge_l:.2f}",
            f"{100 * s.exact_match:.1f}",
            f"{s.mean_length:.1f}",
        ]
        for k, s in enumerate(rows, start=1)
    ]
    if not ranked:
        header, body = header[1:], [r[1:] for r in body]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            text_col = header[i] == "file"
            parts.append(cell.ljust(width) if text_col else cell.rjust(width))
        return "  ".join(parts).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in body)])


def format_json(scores: list[Scores], *, ranked: bool = False) -> str:
    """One JSON document: a list of score objects (`Scores.to_dict`, full precision), one per
    file, even for a single file; `ranked` orders it by ROUGE-L, best first, as the table."""
    rows = sorted(scores, key=lambda s: -s.rouge_l) if ranked else list(scores)
    return json.dumps([s.to_dict() for s in rows], indent=2)


def format_markdown(scores: list[Scores], *, ranked: bool = True) -> str:
    rows = sorted(scores, key=lambda s: -s.rouge_l) if ranked else list(scores)
    out = ["| rank | model | n | ROUGE-L | exact match % | mean length (words) |"]
    out.append("|---:|---|---:|---:|---:|---:|")
    for k, s in enumerate(rows, start=1):
        out.append(
            f"| {k} | {Path(s.name).stem.removesuffix('_predictions')} | {s.n} |"
            f" {100 * s.rouge_l:.2f} |"
            f" {100 * s.exact_match:.1f} | {s.mean_length:.1f} |"
        )
    return "\n".join(out)


# --- generating ------------------------------------------------------------------------------


@dataclass
class EvalResult:
    predictions: Path
    scores: Scores
    generated: int  # answers made by this invocation
    resumed: int  # answers found from an earlier invocation
    failed: int  # requests given up after their retries (rerun to try again)
    engine: dict[str, Any] = field(default_factory=dict)


def load_answering_model(
    spec: str,
    *,
    prompt_format: str = "user",
    base_url: str | list[str] | None = None,
    api_key: str | None = None,
    timeout: float = 120.0,
    seed: int = 0,
    replicas: ReplicaSettings | None = None,
) -> Model:
    """The model a spec names. With the `user` prompt format, a local model without an explicit
    `api=` option answers through its chat template, the way fine-tuning trained it."""
    from selfinstruct.models import load_model
    from selfinstruct.models.spec import ModelSpec, parse_spec

    parsed = parse_spec(spec)
    if prompt_format == "user" and parsed.backend == "local" and "api" not in parsed.options:
        parsed = ModelSpec(parsed.backend, parsed.name, {**parsed.options, "api": "chat"})
    return load_model(
        parsed, base_url=base_url, api_key=api_key, timeout=timeout, seed=seed, replicas=replicas
    )


def evaluate_model(
    model: Model,
    tasks: str | Path,
    out: str | Path,
    *,
    prompt_format: str = "user",
    sampling: Sampling | None = None,
    engine: EngineSettings | None = None,
    limit: int | None = None,
    reporter: Reporter | None = None,
    check: bool = False,
) -> EvalResult:
    """Answer every example of `tasks` not yet in `out`, append the answers, score `out`.
    With `check`, the model is checked first (server reachable, key accepted)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"`prompt_format` must be one of {', '.join(PROMPT_FORMATS)}")
    reporter = reporter or Reporter(quiet=True)
    sampling = sampling or Sampling(max_tokens=256, temperature=0.0)
    examples = read_examples(tasks, warn=reporter.warn)
    if limit is not None:
        examples = examples[:limit]
    ids = example_ids(examples)
    out = Path(out)
    done: set[str] = set()
    if out.exists():
        for record in iter_jsonl(out, repair=True, warn=reporter.warn):
            done.add(str(record.get("id")))
    todo = [(i, e) for i, e in zip(ids, examples, strict=True) if i not in done]
    resumed = len(examples) - len(todo)
    if resumed:
        reporter.info(f"{out}: {resumed} answer(s) already there; answering the other {len(todo)}")

    by_key = {i: e for i, e in todo}
    requests = [Request([build_prompt(e, prompt_format)], sampling, key=i) for i, e in todo]
    failed = 0
    stats: dict[str, Any] = {}
    with (
        JsonlAppender(out, warn=reporter.warn) as appender,
        reporter.bar("evaluate", total=len(examples), completed=resumed) as bar,
    ):

        def on_result(request: Request, completions: list[Completion]) -> None:
            example = by_key[request.key]
            appender.write(
                {
                    "id": request.key,
                    "prompt": request.prompts[0],
                    "instruction": example.instruction if example.instruction is not None else "",
                    "input": example.input,
                    "response": completions[0].text,
                    "target": example.output,
                }
            )
            bar.advance()

        def on_failure(request: Request, error: BaseException) -> None:
            nonlocal failed
            failed += 1
            reporter.warn(f"no answer for {request.key}: {error}")

        if requests:
            eng = Engine(model, engine or EngineSettings())

            async def answer() -> None:
                if check:
                    await model.check()
                await eng.run(requests, on_result, on_failure)

            # One event loop for the check and the answers; its connections are released.
            run_sync(answer(), release=model)
            stats = eng.stats.to_dict()
    scores = score_file(out, ids=set(ids))
    return EvalResult(out, scores, len(todo) - failed, resumed, failed, stats)


def evaluate(
    model: str | Model,
    tasks: str | Path,
    out: str | Path,
    *,
    prompt_format: str = "user",
    sampling: Sampling | None = None,
    engine: EngineSettings | None = None,
    limit: int | None = None,
    reporter: Reporter | None = None,
    base_url: str | list[str] | None = None,
    api_key: str | None = None,
    timeout: float = 120.0,
    seed: int = 0,
    replicas: ReplicaSettings | None = None,
) -> EvalResult:
    """Answer `tasks` with `model` (a spec or a `Model`) into the predictions file `out`, then
    score it. Resumable: answers already in `out` are kept and not asked again. `base_url` may
    list several servers; `replicas` puts copies of a local model on Ray (see `load_model`)."""
    loaded = isinstance(model, str)
    if isinstance(model, str):
        model = load_answering_model(
            model,
            prompt_format=prompt_format,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            seed=seed,
            replicas=replicas,
        )
    try:
        return evaluate_model(
            model,
            tasks,
            out,
            prompt_format=prompt_format,
            sampling=sampling,
            engine=engine,
            limit=limit,
            reporter=reporter,
            check=True,
        )
    finally:
        if loaded:
            model.close()  # a local Ray started for it, if any
