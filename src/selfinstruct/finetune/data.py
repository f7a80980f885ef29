"""Read every fine-tuning format the project writes (and the original release's) into one list.

Formats, detected per record so that a file may even mix them:

* ``all_generated_instances.jsonl`` and any JSONL of ``{"instruction", "input", "output"}``;
* ``alpaca_data.json``: a JSON list of the same objects;
* ``openai_chat_finetuning_data.jsonl``: ``{"messages": [system?, user, assistant]}``;
* ``trl_prompt_completion.jsonl``: ``{"prompt": [user], "completion": [assistant]}`` (TRL);
* ``sharegpt_data.jsonl``: ``{"conversations": [{"from": "human"|"gpt", "value"}, ...]}``;
* a folder written by ``selfinstruct export`` (its default config's train split, Parquet), or
  one Parquet file of instruction/input/output rows;
* ``gpt3_finetuning_data_*.jsonl`` (ours and the release's): ``{"prompt", "completion"}``
  encoded with one of the paper's templates, completion ending in ``<|endoftext|>``;
* the task format of ``seed_tasks.jsonl`` and ``user_oriented_instructions.jsonl``:
  ``{"id", "instruction", "instances": [{"input", "output"}, ...]}`` (one example an instance).

Every reader yields the same `records.Example` as the run's readers: the instruction and input
where the text lets us recover them, else the raw prompt. The user turn a model is trained on
is `Example.user`: the instruction, then a blank line and the input when there is one (the chat
file's own rendering), so an example trains the same whichever file it came from.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from selfinstruct.errors import DataFileError
from selfinstruct.formats import (
    dataset_split_files,
    read_parquet,
    split_prompt,
    split_user,
    strip_completion,
)
from selfinstruct.io import iter_jsonl
from selfinstruct.records import Example

Warn = Callable[[str], None]


# --- one record -----------------------------------------------------------------------------


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataFileError(f"{where}: field {key!r} must be a string")
    return value


def examples_from_record(record: dict[str, Any], where: str) -> list[Example]:
    """The examples of one record in any supported format; DataFileError names the line."""
    rid = record.get("id")
    rid = None if rid is None else str(rid)
    if "messages" in record:
        return [_from_chat(record["messages"], where, rid)]
    if "conversations" in record:
        return [_from_chat(_sharegpt_messages(record["conversations"], where), where, rid)]
    if isinstance(record.get("prompt"), list) and isinstance(record.get("completion"), list):
        return [_from_chat(record["prompt"] + record["completion"], where, rid)]
    if "instances" in record and "instruction" in record:
        instruction = _text(record, "instruction", where).strip()
        instances = record["instances"]
        if not isinstance(instances, list):
            raise DataFileError(f"{where}: 'instances' must be a list")
        out = []
        for k, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise DataFileError(f"{where}: instance {k} must be an object")
            iid = rid if len(instances) == 1 else f"{rid}#{k}" if rid else None
            out.append(
                Example(
                    output=_text(inst, "output", where).strip(),
                    instruction=instruction,
                    input=_text(inst, "input", where).strip(),
                    id=iid,
                )
            )
        return out
    if "instruction" in record and ("output" in record or "target" in record):
        # the instances format, or the release's predictions format (target = the reference)
        key = "output" if "output" in record else "target"
        return [
            Example(
                output=_text(record, key, where).strip(),
                instruction=_text(record, "instruction", where).strip(),
                input=_text(record, "input", where).strip(),
                id=rid,
            )
        ]
    if "prompt" in record and "completion" in record:
        prompt = _text(record, "prompt", where)
        output = strip_completion(_text(record, "completion", where))
        split = split_prompt(prompt)
        if split is None:
            return [Example(output=output, prompt=prompt.strip(), id=rid)]
        return [Example(output=output, instruction=split[0], input=split[1], id=rid)]
    if "prompt" in record and "response" in record:
        return [
            Example(
                output=_text(record, "response", where).strip(),
                prompt=_text(record, "prompt", where).strip(),
                id=rid,
            )
        ]
    keys = ", ".join(sorted(record)) or "none"
    raise DataFileError(
        f"{where}: not a fine-tuning record (fields: {keys}); expected instruction/input/output,"
        " prompt/completion, messages, or id/instruction/instances"
    )


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "system": "system"}


def _sharegpt_messages(turns: Any, where: str) -> list[dict[str, Any]]:
    """ShareGPT's {"from", "value"} turns as chat messages."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise DataFileError(f"{where}: 'conversations' must be a list of objects")
    return [
        {
            "role": _SHAREGPT_ROLES.get(str(t.get("from")), str(t.get("from"))),
            "content": t.get("value"),
        }
        for t in turns
    ]


def _from_chat(messages: Any, where: str, rid: str | None) -> Example:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataFileError(f"{where}: 'messages' must be a list of objects")
    roles = [m.get("role") for m in messages]
    system = None
    if roles[:1] == ["system"]:
        system = str(messages[0].get("content") or "")
        messages, roles = messages[1:], roles[1:]
    if roles != ["user", "assistant"]:
        raise DataFileError(
            f"{where}: expected one user and one assistant message (after an optional system"
            f" message), got roles {roles}; multi-turn conversations are not supported"
        )
    user = str(messages[0].get("content") or "")
    output = str(messages[1].get("content") or "").strip()
    instruction, input = split_user(user)
    return Example(
        output=output,
        instruction=instruction,
        input=input,
        system=system,
        id=rid,
    )


# --- files ----------------------------------------------------------------------------------


def iter_records(path: str | Path, *, warn: Warn | None = None) -> Iterator[tuple[dict, str]]:
    """(record, "file:line") of a JSONL file or of a JSON list (Alpaca)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        yield from _parquet_records(path)
        return
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"["):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataFileError(f"{path}: not valid JSON ({e})") from None
        for k, record in enumerate(data):
            if not isinstance(record, dict):
                raise DataFileError(f"{path}: item {k} is not a JSON object")
            yield record, f"{path}: item {k}"
        return
    for number, record in enumerate(iter_jsonl(path, warn=warn), start=1):
        yield record, f"{path}:{number}"


def _parquet_records(path: Path) -> Iterator[tuple[dict, str]]:
    """The rows of a Parquet file, or of a dataset folder's default config, train split."""
    files = dataset_split_files(path) if path.is_dir() else [path]
    if not files:
        raise DataFileError(
            f"{path}: not a dataset folder written by 'selfinstruct export'"
            " (no data/default/train-*.parquet)"
        )
    for file in files:
        if not file.is_file():
            raise DataFileError(f"{file}: no such file")
        for k, record in enumerate(read_parquet(file)):
            yield record, f"{file}: row {k}"


def read_examples(
    path: str | Path, *, warn: Warn | None = None, skip_empty: bool = True
) -> list[Example]:
    """Every example of a file in any supported format, in file order.

    Examples with an empty output (or an empty user turn) teach nothing; they are skipped and
    counted in one warning when `skip_empty`.
    """
    out: list[Example] = []
    empty = 0
    for record, where in iter_records(path, warn=warn):
        for example in examples_from_record(record, where):
            if skip_empty and (not example.output or not example.user.strip()):
                empty += 1
                continue
            out.append(example)
    if empty and warn is not None:
        warn(f"{path}: skipped {empty} example(s) with an empty instruction or output")
    if not out:
        raise DataFileError(f"{path}: no usable example")
    return out


def split_examples(
    examples: list[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded shuffle, then (train, held-out); held-out gets round(n * fraction) examples."""
    if not 0 <= eval_fraction < 1:
        raise ValueError("eval_fraction must be in [0, 1)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(examples) * eval_fraction)
    if eval_fraction > 0 and len(examples) > 1:
        n_eval = max(1, n_eval)
    n_eval = min(n_eval, len(examples) - 1)
    held = sorted(order[:n_eval])
    train = sorted(order[n_eval:])
    return [examples[i] for i in train], [examples[i] for i in held]


def write_chat_jsonl(path: str | Path, examples: Iterable[Example]) -> int:
    """The OpenAI chat fine-tuning format."""
    from selfinstruct.io import write_jsonl_atomic

    return write_jsonl_atomic(path, ({"messages": e.chat_messages()} for e in examples))
