"""Step 4: parse, filter and encode the generated instances for fine-tuning.

It follows the paper's post-processing: parse each raw answer, drop invalid instances (output
empty or equal to the input, input or output ending with a colon), drop a task whose instances
give one input two outputs, remove duplicates, keep at most 5 instances a task, then encode each
with one of the original prompt/completion templates chosen at random. It also writes the formats
trainers read as they are (`formats.EXAMPLE_FORMATS`: OpenAI chat, TRL, ShareGPT, Alpaca). No
model is called; a rerun rewrites the same files (atomically) from the same inputs.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from selfinstruct.formats import END_TOKEN, EXAMPLE_FORMATS, encode, vary_input, write_examples
from selfinstruct.io import write_jsonl_atomic
from selfinstruct.progress import Reporter
from selfinstruct.records import Example, SeedTask
from selfinstruct.runfolder import RunFolder
from selfinstruct.steps import StepReport, finish_reason_of
from selfinstruct.validation import check_values

_OUTPUT_MARK = re.compile(r"Output\s*\d*\s*:")
_INPUT_MARK = re.compile(r"Input\s*\d*\s*:")
_LEADING_INPUT_MARK = re.compile(r"^Input\s*\d*\s*:")
_EXAMPLE_MARK = re.compile(r"Example\s?\d*\.?")


@dataclass
class PrepareSettings:
    instance_files: list[str] | None = None  # default: the run folder's instances file
    classification_files: list[str] | None = None  # default: the folder's is_clf_or_not file
    output_dir: str | None = None  # default: the run folder's finetuning_data/
    num_instructions: int | None = None
    include_seed_tasks: bool = True  # as `run` and the released shell script
    max_instances_per_task: int = 5
    end_token: str = END_TOKEN
    seed: int = 123

    def __post_init__(self) -> None:
        check_values(self, {"num_instructions": (1, None), "max_instances_per_task": (1, None)})


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


def parse_generation_instances(raw: str, instruction: str) -> list[Example]:
    raw = raw.strip()
    if _EXAMPLE_MARK.search(raw):
        pieces = [p.strip() for p in _EXAMPLE_MARK.split(raw) if p.strip()]
    elif _OUTPUT_MARK.search(raw):
        pieces = [raw]
    else:
        return []
    return [Example(instruction.strip(), *map(str.strip, parse_input_output(p))) for p in pieces]


def parse_classification_instances(raw: str, instruction: str) -> list[Example]:
    if "Class label:" not in raw:
        return []
    instances = []
    for piece in raw.split("Class label:")[1:]:
        label, _, inp = piece.strip().partition("\n")
        instances.append(Example(instruction.strip(), inp.strip(), label.strip()))
    return instances


def parse_instances(raw: str, instruction: str, is_classification: bool) -> list[Example]:
    """A task's raw answer as instances, with the parser its step-2 label calls for."""
    parse = parse_classification_instances if is_classification else parse_generation_instances
    return parse(raw, instruction)


def labelled_tasks(
    tasks: Iterable[dict], labels: Mapping[str, bool], dropped: Counter[str]
) -> Iterator[tuple[dict, bool]]:
    """Each task once (its first record) with its step-2 label; a task step 2 did not label
    cannot be parsed: counted in `dropped["tasks_unlabelled"]` and skipped."""
    seen: set[str] = set()
    for task in tasks:
        instruction = task.get("instruction")
        if not isinstance(instruction, str) or instruction in seen:
            continue
        seen.add(instruction)
        if instruction not in labels:
            dropped["tasks_unlabelled"] += 1
            continue
        yield task, labels[instruction]


def invalid_reason(instance: Example) -> str | None:
    inp, out = instance.input, instance.output
    if inp == out:
        return "invalid_input_equals_output"
    if out == "":
        return "invalid_empty_output"
    if inp.strip().endswith(":") or out.strip().endswith(":"):
        return "invalid_ends_with_colon"
    return None


def has_conflicting_outputs(instances: list[Example]) -> bool:
    """One non-empty input with two different outputs: the task is unreliable."""
    outputs: dict[str, str] = {}
    for e in instances:
        if e.input == "":
            continue
        if outputs.setdefault(e.input, e.output) != e.output:
            return True
    return False


def clean_task_instances(
    raw: str,
    instruction: str,
    is_classification: bool,
    finish_reason: str | None,
    dropped: Counter[str],
) -> list[Example]:
    instances = parse_instances(raw, instruction, is_classification)
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


# A filter looks at a batch of examples and returns, for each, None to keep it or a dict that
# says why it goes: {"reason": ..., and any details}. Batches, because some filters (the
# decontaminator) are much faster over many examples at once.
ExampleFilter = Callable[[list[Example]], list[dict | None]]


def prepare_finetuning(
    run: str | Path | RunFolder,
    settings: PrepareSettings | None = None,
    *,
    seeds: list[SeedTask] | None = None,
    reporter: Reporter | None = None,
    filters: list[ExampleFilter] = (),
    ratings: Mapping[str, str] | None = None,
    rating_filter: ExampleFilter | None = None,
) -> StepReport:
    """Step 4. `filters` drop examples with a reason (decontamination plugs in here); every
    drop is counted by reason and written, with its details, to
    `finetuning_data/dropped_examples.jsonl`. With `ratings` (example key -> the judge's
    rating), each record of all_generated_instances.jsonl carries its rating.

    `rating_filter` (the judge's minimum rating) applies to the generated examples only, after
    all_generated_instances.jsonl is written whole (the judge and the review page read it): the
    kept ones go to their own file and on to training. The seed tasks' examples were written by
    people and are never rated, so it never drops them."""
    s = settings or PrepareSettings()
    reporter = reporter or Reporter(quiet=True)
    rf = run if isinstance(run, RunFolder) else RunFolder(run)
    out = rf.with_finetuning_dir(s.output_dir) if s.output_dir else rf
    rng = random.Random(s.seed)
    dropped: Counter[str] = Counter()

    clf_paths = [rf.path / f for f in s.classification_files] if s.classification_files else None
    labels = rf.read_labels(clf_paths, warn=reporter.warn)
    instance_paths = [rf.path / f for f in s.instance_files] if s.instance_files else None
    tasks = _in_step_order(rf, rf.read_instance_generations(instance_paths, warn=reporter.warn))
    generated, tasks_read = _generated_instances(tasks, labels, s, rng, dropped)
    removed: list[dict] = []
    generated = _apply_filters(generated, filters, dropped, removed)
    unique_instructions = list(dict.fromkeys(e.instruction for e in generated))

    outputs = [out.all_instances]
    write_jsonl_atomic(out.all_instances, (_with_rating(e, ratings).to_dict() for e in generated))
    if rating_filter is not None:
        generated = _apply_filters(generated, [rating_filter], dropped, removed)
        write_jsonl_atomic(
            out.rated_instances, (_with_rating(e, ratings).to_dict() for e in generated)
        )
        outputs.append(out.rated_instances)
    else:
        out.rated_instances.unlink(missing_ok=True)  # an earlier run's, with another minimum
    if s.num_instructions is not None and s.num_instructions < len(unique_instructions):
        chosen = set(rng.sample(unique_instructions, s.num_instructions))
        generated = [e for e in generated if e.instruction in chosen]
        sampled = out.sampled_instances(s.num_instructions)
        write_jsonl_atomic(sampled, (e.to_dict() for e in generated))
        outputs.append(sampled)

    training = list(generated)
    if s.include_seed_tasks and seeds:
        seed_instances = [
            Example(task.instruction, i.input, i.output) for task in seeds for i in task.instances
        ]
        training += _apply_filters(seed_instances, filters, dropped, removed, prefix="seed_")
    written, n_encoded = _write_training_files(out, training, rng, s.end_token, dropped)
    outputs += written
    write_jsonl_atomic(out.dropped_examples, removed)
    outputs.append(out.dropped_examples)

    clf_instructions = sum(1 for i in unique_instructions if labels.get(i))
    report = StepReport("prepare", outputs=[str(p) for p in outputs])
    report.counts = {
        "tasks_read": tasks_read,
        "generated_instances": len(generated),
        "unique_instructions": len(unique_instructions),
        "classification_instructions": clf_instructions,
        "other_instructions": len(unique_instructions) - clf_instructions,
        "seed_instances_included": len(training) - len(generated),
        "finetuning_examples": n_encoded,
    }
    report.dropped = dict(dropped)
    return report


def _in_step_order(rf: RunFolder, tasks: list[dict]) -> list[dict]:
    """Step 3 appends each answer as it arrives, so its file's order depends on the
    concurrency; read in step 1's order (the order steps 2 and 3 take the instructions in), the
    seeded draws below give the same files at any concurrency. Tasks that step 1's file does
    not hold keep their order, after the others."""
    positions = rf.instruction_positions()
    last = len(positions)

    def position(task: dict) -> int:
        instruction = task.get("instruction")
        return positions.get(instruction, last) if isinstance(instruction, str) else last

    return sorted(tasks, key=position)  # stable: the same instruction twice keeps its order


def _with_rating(example: Example, ratings: Mapping[str, str] | None) -> Example:
    rating = ratings.get(example.key) if ratings else None
    return example if rating is None else dataclasses.replace(example, rating=rating)


def _generated_instances(
    tasks: list[dict],
    labels: dict[str, bool],
    s: PrepareSettings,
    rng: random.Random,
    dropped: Counter[str],
) -> tuple[list[Example], int]:
    """Each task's parsed, cleaned instances, at most `max_instances_per_task` of them."""
    generated: list[Example] = []
    for task, is_classification in labelled_tasks(tasks, labels, dropped):
        finish = finish_reason_of(task.get("instance_metadata") or {})
        instances = clean_task_instances(
            task.get("raw_instances") or "", task["instruction"], is_classification, finish, dropped
        )
        if len(instances) > s.max_instances_per_task:
            dropped["over_per_task_cap"] += len(instances) - s.max_instances_per_task
        generated.extend(rng.sample(instances, min(len(instances), s.max_instances_per_task)))
    tasks_read = len({t["instruction"] for t in tasks if isinstance(t.get("instruction"), str)})
    return generated, tasks_read


def _apply_filters(
    examples: list[Example],
    filters: list[ExampleFilter],
    dropped: Counter[str],
    removed: list[dict],
    prefix: str = "",
) -> list[Example]:
    """The examples no filter drops; each drop counted by reason and kept in `removed`."""
    for f in filters:
        verdicts = f(examples)
        kept = []
        for example, verdict in zip(examples, verdicts, strict=True):
            if verdict is None:
                kept.append(example)
                continue
            reason = prefix + verdict["reason"]
            dropped[reason] += 1
            removed.append({**example.to_dict(), **verdict, "reason": reason})
        examples = kept
    return examples


def _write_training_files(
    out: RunFolder,
    training: list[Example],
    rng: random.Random,
    end_token: str,
    dropped: Counter[str],
) -> tuple[list[Path], int]:
    """The GPT-3 prompt/completion file and one file per `EXAMPLE_FORMATS`; and how many
    prompt/completion records there are."""
    encoded = []
    seen_pairs: set[tuple[str, str]] = set()
    for e in training:
        record = encode(e.instruction, vary_input(e.input, rng), e.output, rng, end_token)
        pair = (record["prompt"], record["completion"])
        if pair in seen_pairs:
            dropped["duplicate_prompt_completion"] += 1
            continue
        seen_pairs.add(pair)
        encoded.append(record)
    rng.shuffle(encoded)

    gpt3_path = out.gpt3_finetuning(len(encoded))
    for stale in out.gpt3_finetuning_files():
        if stale != gpt3_path:
            stale.unlink()  # an earlier run's file under another count
    write_jsonl_atomic(gpt3_path, encoded)

    examples = list(dict.fromkeys(Example(*(text.strip() for text in e.texts)) for e in training))
    files = [out.example_file(fmt) for fmt in EXAMPLE_FORMATS]
    for fmt, path in zip(EXAMPLE_FORMATS, files, strict=True):
        write_examples(path, fmt, [e.texts for e in examples])
    return [gpt3_path, *files], len(encoded)
