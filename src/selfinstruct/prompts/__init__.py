"""The method's prompts. Few-shot templates live beside this file as text.

Each template ends at "Task:"; a prompt appends " <instruction>\n" and, for classification, the
question line, exactly as the paper's scripts assembled theirs. The few-shot examples are our own.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

BOOTSTRAP_HEADER = "Come up with a series of tasks:\n"
BOOTSTRAP_CLASSIFICATION_HEADER = (
    "Come up with a series of classification tasks. "
    "Try to specify the possible output labels when possible.\n"
)
CLASSIFICATION_QUESTION = "Is it classification?"


@cache
def template(name: str) -> str:
    text = resources.files("selfinstruct.prompts").joinpath(f"{name}.txt").read_text("utf-8")
    return text.rstrip("\n")


def bootstrap_prompt(instructions: list[str], *, classification: bool = False) -> str:
    """A numbered list of instructions that stops at the next number, for the model to continue."""
    lines = [BOOTSTRAP_CLASSIFICATION_HEADER if classification else BOOTSTRAP_HEADER]
    for number, instruction in enumerate(instructions, start=1):
        one_line = re.sub(r"\s+", " ", instruction).strip().rstrip(":")
        lines.append(f"{number}. {one_line}\n")
    lines.append(f"{len(instructions) + 1}.")
    return "".join(lines)


def classification_prompt(instruction: str) -> str:
    return f"{template('classification')} {instruction.strip()}\n{CLASSIFICATION_QUESTION}"


def instance_prompt(instruction: str, *, is_classification: bool) -> str:
    name = "instances_output_first" if is_classification else "instances_input_first"
    return f"{template(name)} {instruction.strip()}\n"
