"""The fine-tuning formats, written and read back in one place.

`prepare` encodes each (instruction, input, output) with one of the original release's 13
prompt/completion templates, chosen at random, and also renders the modern formats (OpenAI chat
JSONL, Alpaca JSON). `finetune` and `evaluate` read those files back with the same templates:
each template's prompt is turned into a pattern, so a new template needs adding only here.
"""

from __future__ import annotations

import random
import re
from typing import Any

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
