"""Step 4: parse, filter and encode the generated instances for fine-tuning.

It follows the paper's post-processing: parse each raw answer, drop invalid instances (output
empty or equal to the input, input or output ending with a colon), drop a task whose instances
give one input two outputs, remove duplicates, keep at most 5 instances a task, then encode each
with one of the original prompt/completion templates chosen at random. It also writes the modern
formats: OpenAI chat fine-tuning JSONL and Alpaca JSON. No model is called; a rerun rewrites the
same files (atomically) from the same inputs.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct.io import read_jsonl, write_atomic, write_jsonl_atomic
from selfinstruct.progress import Reporter
from selfinstruct.records import (
    ALL_INSTANCES_FILE,
    ALPACA_FILE,
    CHAT_FINETUNING_FILE,
    FINETUNING_DIR,
    GPT3_FINETUNING_FILE_PATTERN,
    INSTANCES_FILE,
    SeedTask,
    TrainingExample,
)
from selfinstruct.steps import StepReport, finish_reason_of
from selfinstruct.steps.instances import read_labels

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

_OUTPUT_MARK = re.compile(r"Output\s*\d*\s*:")
_INPUT_MARK = re.compile(r"Input\s*\d*\s*:")
_LEADING_INPUT_MARK = re.compile(r"^Input\s*\d*\s*:")
_EXAMPLE_MARK = re.compile(r"Example\s?\d*\.?")
_FIELD_NAME = re.compile(r"(\w+):")


@dataclass
class PrepareSettings:
    instance_files: list[str] = field(default_factory=lambda: [INSTANCES_FILE])
    classification_files: list[str] | None = None  # default: the folder's is_clf_or_not file
    output_dir: str = FINETUNING_DIR
    num_instructions: int | None = None
    include_seed_tasks: bool = False
    max_instances_per_task: int = 5
    end_token: str = END_TOKEN
    seed: int = 123


Triple = tuple[str, str, str]  # instruction, input, output


def parse_input_output(text: str) -> tuple[str, str]:
    if _OUTPUT_MARK.search(text):
        parts = _OUTPUT_MARK.split(text)
        inp, out = parts[0].strip(), parts[1].strip()
    else:
        inp, out = "", text.strip()
    # Several input/output pairs run together: keep the first output only.
    if _INPUT_MARK.search(out):
        out = _INPUT_MARK.split(out)[0].strip()
    inp = _LEADING_INPUT_MARK.sub("", inp).strip()
    return inp, out


def parse_generation_instances(raw: str, instruction: str) -> list[Triple]:
    raw = raw.strip()
    if _EXAMPLE_MARK.search(raw):
        pieces = [p.strip() for p in _EXAMPLE_MARK.split(raw) if p.strip()]
    elif _OUTPUT_MARK.search(raw):
        pieces = [raw]
    else:
        return []
    return [(instruction.strip(), *map(str.strip, parse_input_output(p))) for p in pieces]


def parse_classification_instances(raw: str, instruction: str) -> list[Triple]:
    if "Class label:" not in raw:
        return []
    instances = []
    for piece in raw.split("Class label:")[1:]:
        label, _, inp = piece.strip().partition("\n")
        instances.append((instruction.strip(), inp.strip(), label.strip()))
    return instances


def invalid_reason(instance: Triple) -> str | None:
    _, inp, out = instance
    if inp == out:
        return "invalid_input_equals_output"
    if out == "":
        return "invalid_empty_output"
    if inp.strip().endswith(":") or out.strip().endswith(":"):
        return "invalid_ends_with_colon"
    return None


def has_conflicting_outputs(instances: list[Triple]) -> bool:
    """One non-empty input with two different outputs: the task is unreliable."""
    outputs: dict[str, str] = {}
    for _, inp, out in instances:
        if inp == "":
            continue
        if outputs.setdefault(inp, out) != out:
            return True
    return False


def clean_task_instances(
    raw: str,
    instruction: str,
    is_classification: bool,
    finish_reason: str | None,
    dropped: Counter[str],
) -> list[Triple]:
    parse = parse_classification_instances if is_classification else parse_generation_instances
    instances = parse(raw, instruction)
    if not instances:
        dropped["tasks_unparsable"] += 1
        return []
    if finish_reason == "length":
        # The last instance was cut by the token limit.
        instances = instances[:-1]
        dropped["cut_by_length"] += 1
    valid = []
    for instance in instances:
        reason = invalid_reason(instance)
        if reason is None:
            valid.append(instance)
        else:
            dropped[reason] += 1
    if has_conflicting_outputs(valid):
        dropped["conflicting_outputs"] += len(valid)
        return []
    unique = list(dict.fromkeys(valid))
    dropped["duplicate_instance"] += len(valid) - len(unique)
    return unique


def encode(instance: Triple, rng: random.Random, end_token: str = END_TOKEN) -> dict[str, str]:
    instruction, inp, out = instance
    instruction, inp, out = instruction.strip(), inp.strip(), out.strip()
    if inp:
        prompt_t, completion_t = rng.choice(TEMPLATES_WITH_INPUT)
    else:
        prompt_t, completion_t = rng.choice(TEMPLATES_WITHOUT_INPUT)
    return {
        "prompt": prompt_t.format(instruction=instruction, input=inp),
        "completion": completion_t.format(output=out, end=end_token),
    }


def vary_input(inp: str, rng: random.Random) -> str:
    """Half the time, drop a lone field name ("Sentence: ...") and fold blank lines (the paper)."""
    if rng.random() < 0.5:
        if len(set(_FIELD_NAME.findall(inp))) == 1:
            inp = inp.split(":", 1)[1].strip()
        else:
            inp = inp.strip()
        inp = inp.replace("\n\n", "\n")
    return inp


def chat_record(example: TrainingExample) -> dict[str, Any]:
    user = example.instruction if not example.input else f"{example.instruction}\n\n{example.input}"
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": example.output},
        ]
    }


def prepare_finetuning(
    batch_dir: str | Path,
    settings: PrepareSettings | None = None,
    *,
    seeds: list[SeedTask] | None = None,
    reporter: Reporter | None = None,
) -> StepReport:
    s = settings or PrepareSettings()
    reporter = reporter or Reporter(quiet=True)
    batch_dir = Path(batch_dir)
    out_dir = batch_dir / s.output_dir
    rng = random.Random(s.seed)
    dropped: Counter[str] = Counter()

    from selfinstruct.steps.classify import find_classification_file

    clf_files = (
        [batch_dir / f for f in s.classification_files]
        if s.classification_files
        else [find_classification_file(batch_dir)]
    )
    labels: dict[str, bool] = {}
    for path in clf_files:
        labels.update(read_labels(path, reporter))

    tasks: list[dict[str, Any]] = []
    for name in s.instance_files:
        tasks.extend(read_jsonl(batch_dir / name, warn=reporter.warn))

    generated: list[Triple] = []
    seen_tasks: set[str] = set()
    for task in tasks:
        instruction = task.get("instruction")
        if not isinstance(instruction, str) or instruction in seen_tasks:
            continue
        seen_tasks.add(instruction)
        if instruction not in labels:
            dropped["tasks_unlabelled"] += 1
            continue
        finish = finish_reason_of(task.get("instance_metadata") or {})
        instances = clean_task_instances(
            task.get("raw_instances") or "", instruction, labels[instruction], finish, dropped
        )
        if len(instances) > s.max_instances_per_task:
            dropped["over_per_task_cap"] += len(instances) - s.max_instances_per_task
        instances = rng.sample(instances, min(len(instances), s.max_instances_per_task))
        generated.extend(instances)

    unique_instructions = list(dict.fromkeys(t[0] for t in generated))
    outputs = []
    write_jsonl_atomic(
        out_dir / ALL_INSTANCES_FILE,
        (TrainingExample(*t).to_dict() for t in generated),
    )
    outputs.append(out_dir / ALL_INSTANCES_FILE)

    if s.num_instructions is not None and s.num_instructions < len(unique_instructions):
        chosen = set(rng.sample(unique_instructions, s.num_instructions))
        generated = [t for t in generated if t[0] in chosen]
        sampled = out_dir / f"sampled_generated_instances_{s.num_instructions}.jsonl"
        write_jsonl_atomic(sampled, (TrainingExample(*t).to_dict() for t in generated))
        outputs.append(sampled)

    training = list(generated)
    if s.include_seed_tasks and seeds:
        for seed_task in seeds:
            for instance in seed_task.instances:
                training.append((seed_task.instruction, instance.input, instance.output))

    encoded = []
    seen_pairs: set[tuple[str, str]] = set()
    for instruction, inp, out in training:
        record = encode((instruction, vary_input(inp, rng), out), rng, s.end_token)
        pair = (record["prompt"], record["completion"])
        if pair in seen_pairs:
            dropped["duplicate_prompt_completion"] += 1
            continue
        seen_pairs.add(pair)
        encoded.append(record)
    rng.shuffle(encoded)

    gpt3_path = out_dir / GPT3_FINETUNING_FILE_PATTERN.format(count=len(encoded))
    for stale in out_dir.glob(GPT3_FINETUNING_FILE_PATTERN.format(count="*")):
        if stale != gpt3_path:
            stale.unlink()  # an earlier run's file under another count
    write_jsonl_atomic(gpt3_path, encoded)
    outputs.append(gpt3_path)

    examples = list(
        dict.fromkeys(TrainingExample(i.strip(), n.strip(), o.strip()) for i, n, o in training)
    )
    write_jsonl_atomic(out_dir / CHAT_FINETUNING_FILE, (chat_record(e) for e in examples))
    outputs.append(out_dir / CHAT_FINETUNING_FILE)
    write_atomic(
        out_dir / ALPACA_FILE,
        json.dumps([e.to_dict() for e in examples], ensure_ascii=False, indent=2) + "\n",
    )
    outputs.append(out_dir / ALPACA_FILE)

    clf_instructions = sum(1 for i in unique_instructions if labels.get(i))
    report = StepReport("prepare", outputs=[str(p) for p in outputs])
    report.counts = {
        "tasks_read": len(seen_tasks),
        "generated_instances": len(generated),
        "unique_instructions": len(unique_instructions),
        "classification_instructions": clf_instructions,
        "other_instructions": len(unique_instructions) - clf_instructions,
        "seed_instances_included": len(training) - len(generated),
        "finetuning_examples": len(encoded),
    }
    report.dropped = dict(dropped)
    return report
