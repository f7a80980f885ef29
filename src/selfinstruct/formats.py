"""The fine-tuning formats, written and read back in one place.

`prepare` encodes each (instruction, input, output) with one of the original release's 13
prompt/completion templates, chosen at random, and also renders the formats trainers read as they
are (`EXAMPLE_FORMATS`: OpenAI chat `messages`, TRL's conversational prompt/completion, ShareGPT,
Alpaca). `finetune` and `evaluate` read those files back with the same templates: each
template's prompt is turned into a pattern, so a new template needs adding only here.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from selfinstruct.errors import DataFileError, MissingExtraError
from selfinstruct.io import write_atomic, write_jsonl_atomic
from selfinstruct.records import render_user

END_TOKEN = "<|endoftext|>"

# (prompt, completion) templates of the original release; {end} is the end token.
TEMPLATES_WITH_INPUT = (
    ("{instruction}\nInput: {input}\nOutput:", " {output}{end}"),
    ("{instruction}\n\nInput: {input}\n\nOutput:", " {output}{end}"),
    ("Task: {instruction}\nInput: {input}\nOutput:", " {output}{end}"),
    ("{instruction}\n\n{input}\n\nOutput:", " {output}{end}"),
    ("{instruction}\n\n{input}\n\n", "{output}{end}"),
    ("{instruction}\n{input}\n\n", "{output}{end}"),
    ("Task: {instruction}\n\n{input}\n\n", "{output}{end}"),
)
TEMPLATES_WITHOUT_INPUT = (
    ("{instruction} Output:", " {output}{end}"),
    ("{instruction}\nOutput:", " {output}{end}"),
    ("{instruction}\n\nOutput:", " {output}{end}"),
    ("{instruction}\n", "{output}{end}"),
    ("{instruction}\n\n", "{output}{end}"),
    ("Task: {instruction}\n\n", "{output}{end}"),
)

_FIELD_NAME = re.compile(r"(\w+):")


def encode(
    instruction: str, input: str, output: str, rng: random.Random, end_token: str = END_TOKEN
) -> dict[str, str]:
    """A prompt/completion record with one of the release's templates, chosen with `rng`."""
    instruction, input, output = instruction.strip(), input.strip(), output.strip()
    templates = TEMPLATES_WITH_INPUT if input else TEMPLATES_WITHOUT_INPUT
    prompt_t, completion_t = rng.choice(templates)
    return {
        "prompt": prompt_t.format(instruction=instruction, input=input),
        "completion": completion_t.format(output=output, end=end_token),
    }


def vary_input(input: str, rng: random.Random) -> str:
    """Half the time, drop a lone field name ("Sentence: ...") and fold blank lines (the paper)."""
    if rng.random() < 0.5:
        if len(set(_FIELD_NAME.findall(input))) == 1:
            input = input.split(":", 1)[1].strip()
        else:
            input = input.strip()
        input = input.replace("\n\n", "\n")
    return input


def chat_record(instruction: str, input: str, output: str) -> dict[str, Any]:
    """One line of the OpenAI chat fine-tuning format."""
    return {
        "messages": [
            {"role": "user", "content": render_user(instruction, input)},
            {"role": "assistant", "content": output.strip()},
        ]
    }


def trl_record(instruction: str, input: str, output: str) -> dict[str, Any]:
    """One line of TRL's conversational prompt/completion format: SFTTrainer applies the chat
    template and, for this type, computes the loss on the completion only."""
    user, assistant = chat_record(instruction, input, output)["messages"]
    return {"prompt": [user], "completion": [assistant]}


def sharegpt_record(instruction: str, input: str, output: str) -> dict[str, Any]:
    """One line of ShareGPT (`conversations` of human/gpt turns), as LLaMA-Factory, Axolotl and
    torchtune read it."""
    return {
        "conversations": [
            {"from": "human", "value": render_user(instruction, input)},
            {"from": "gpt", "value": output.strip()},
        ]
    }


def alpaca_record(instruction: str, input: str, output: str) -> dict[str, str]:
    return {"instruction": instruction.strip(), "input": input.strip(), "output": output.strip()}


# The example files step 4 writes beside the GPT-3 file, one record a unique example: the format's
# name (the run folder names its file) and its renderer. Alpaca is one JSON list, the rest JSONL.
# The chat file's `messages` lines are also what TRL, Axolotl and torchtune read as chat data.
EXAMPLE_FORMATS: dict[str, Callable[[str, str, str], dict[str, Any]]] = {
    "chat": chat_record,
    "trl": trl_record,
    "sharegpt": sharegpt_record,
    "alpaca": alpaca_record,
}


def write_examples(path: Path, fmt: str, examples: Iterable[tuple[str, str, str]]) -> None:
    """Write (instruction, input, output) triples in one of `EXAMPLE_FORMATS`, atomically."""
    render = EXAMPLE_FORMATS[fmt]
    records = (render(*e) for e in examples)
    if fmt == "alpaca":
        text = json.dumps(list(records), ensure_ascii=False, indent=2) + "\n"
        write_atomic(path, text)
    else:
        write_jsonl_atomic(path, records)


def split_user(user: str) -> tuple[str, str]:
    """(instruction, input) of a user turn rendered by `render_user`."""
    head, sep, tail = user.strip().partition("\n\n")
    return head.strip(), tail.strip() if sep else ""


# --- reading prompt/completion records back --------------------------------------------------


def _pattern(prompt_template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{instruction\}|\{input\})", prompt_template)
    fields = {"{instruction}": "(?P<i>.+?)", "{input}": "(?P<x>.+)"}
    return re.compile("(?s)" + "".join(fields.get(p, re.escape(p)) for p in parts) + r"\Z")


# Each template's pattern, and how many fixed characters it has: with several matches, the most
# specific template wins ("Task: {i}\n\n" over "{i}\n\n").
_PATTERNS = [
    (_pattern(p), len(re.sub(r"\{\w+\}", "", p)))
    for p, _ in TEMPLATES_WITH_INPUT + TEMPLATES_WITHOUT_INPUT
]


def split_prompt(prompt: str) -> tuple[str, str] | None:
    """(instruction, input) of a prompt made with one of the release's templates, else None.

    Some templates cannot be told apart by shape alone ("{i}\\n\\n{x}\\n\\n" and "{i}\\n\\n");
    the rule that settles them: an instruction is one line (step 1 folds each onto one line).
    """
    candidates = []
    for pattern, fixed in _PATTERNS:
        m = pattern.match(prompt)
        if m is None:
            continue
        instruction = m.group("i").strip()
        input = (m.groupdict().get("x") or "").strip()
        candidates.append(("\n" in instruction, -fixed, instruction, input))
    if not candidates:
        return None
    _, _, instruction, input = min(candidates)
    return instruction, input


def strip_completion(completion: str, end_token: str = END_TOKEN) -> str:
    text = completion
    if text.endswith(end_token):
        text = text[: -len(end_token)]
    return text.strip()


# --- a dataset folder as `selfinstruct export` writes it ----------------------------------------
# One Parquet file a config and split, where the Hub's and `datasets`' conventions look for them.

DATASET_DATA_DIR = "data"


def dataset_file(folder: Path, config: str, split: str) -> Path:
    return Path(folder) / DATASET_DATA_DIR / config / f"{split}-00000-of-00001.parquet"


def dataset_split_files(folder: Path, config: str = "default", split: str = "train") -> list[Path]:
    return sorted((Path(folder) / DATASET_DATA_DIR / config).glob(f"{split}-*.parquet"))


def read_parquet(path: Path) -> list[dict[str, Any]]:
    """The rows of a Parquet file as dicts (needs the `hub` extra's pyarrow)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtraError(
            f"{path}: reading Parquet needs pyarrow: pip install 'selfinstruct[hub]'"
        ) from None
    try:
        return pq.read_table(path).to_pylist()
    except pa.ArrowException as e:
        raise DataFileError(f"{path}: not a readable Parquet file ({e})") from None
