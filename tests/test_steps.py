"""Each step's prompt building, parsing and filtering, against a model whose answers we script."""

from __future__ import annotations

import itertools
import json

import pytest
from rouge_score import rouge_scorer

from selfinstruct.engine import EngineSettings
from selfinstruct.errors import ConfigError
from selfinstruct.io import read_jsonl
from selfinstruct.records import SeedTask
from selfinstruct.steps import StepContext
from selfinstruct.steps.classify import ClassifySettings, identify_classification
from selfinstruct.steps.instances import InstanceSettings, generate_instances
from selfinstruct.steps.instructions import InstructionSettings, generate_instructions
from selfinstruct.steps.prepare import (
    PrepareSettings,
    clean_task_instances,
    parse_classification_instances,
    parse_generation_instances,
    prepare_finetuning,
)

try:
    from tests.helpers import WORDS, fresh_instructions, toy_seeds
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from helpers import WORDS, fresh_instructions, toy_seeds


def seeds(n: int = 12) -> list[SeedTask]:
    return toy_seeds(n, classification_every=4)


def ctx(model, **engine):
    return StepContext(model=model, engine=EngineSettings(**engine))


def test_step1_prompts_follow_the_paper(tmp_path, scripted):
    source = fresh_instructions()
    model = scripted(lambda p: f" {next(source)}\n10. {next(source)}")
    # A lag of 1: each prompt is drawn from the pool as the previous answer left it.
    settings = InstructionSettings(num_instructions=6, lag=1)
    generate_instructions(ctx(model), seeds(), tmp_path, settings)
    first, later = model.prompts[0], model.prompts[-1]
    assert first.startswith("Come up with a series of tasks:\n1. ")
    assert first.endswith("\n9.")
    seed_texts = {s.instruction for s in seeds()}
    listed = [line.split(". ", 1)[1] for line in first.split("\n")[1:9]]
    assert len(listed) == 8 and set(listed) <= seed_texts  # empty pool: all 8 from the seeds
    listed = [line.split(". ", 1)[1] for line in later.split("\n")[1:9]]
    assert sum(text not in seed_texts for text in listed) == 2  # 2 machine, 6 seed
    s = model.samplings[0]
    assert (s.temperature, s.top_p, s.presence_penalty, s.max_tokens) == (0.7, 0.5, 2.0, 1024)
    assert s.stop == ("\n\n", "\n16", "16.", "16 .")


def test_step1_filters_count_every_dropped_candidate(tmp_path, scripted):
    source = fresh_instructions()
    answers = iter(
        [
            "",  # empty answer
            ("garbage \x00 ~~~", "stop"),  # too short
            (f" {next(source)}\n10. {next(source)}", "length"),  # cut: whole answer dropped
            " Describe the image below in detail please\n10. Write a program to add numbers"
            "\n11. - Starts with punctuation here\n12. Über alles in der Welt heute",
            # near-duplicate of a seed, then an exact repeat inside one answer
            f" Describe the {WORDS[0]} and the {WORDS[1]} in one short paragraph please.\n"
            "10. Compose a limerick about a sleepy cat\n11. Compose a limerick about a sleepy cat",
        ]
    )

    def answer(prompt):
        scripted_answer = next(answers, None)
        return f" {next(source)}" if scripted_answer is None else scripted_answer

    model = scripted(answer)
    report = generate_instructions(
        ctx(model), seeds(), tmp_path, InstructionSettings(num_instructions=5, seed=1)
    )
    d = report.dropped
    assert d["empty_answer"] == 1
    assert d["too_short"] == 1
    assert d["cut_by_length"] == 2
    assert d["banned_word"] == 1 and d["write_a_program"] == 1
    assert d["leading_punctuation"] == 1 and d["non_ascii_start"] == 1
    assert d["too_similar"] == 2
    records = read_jsonl(tmp_path / "machine_generated_instructions.jsonl")
    assert len(records) == 5 and report.complete
    assert "Compose a limerick about a sleepy cat" in [r["instruction"] for r in records]


def test_step1_keeps_nothing_above_threshold_and_stores_the_original_fields(tmp_path, scripted):
    # Candidates that overlap heavily with each other: many must be rejected.
    counter = itertools.count()

    def answer(prompt):
        k = next(counter)
        a, b, c = WORDS[k % 36], WORDS[(k * 7 + 3) % 36], WORDS[(k * 11 + 5) % 36]
        # The second item repeats the first with one word more: always too similar.
        return f" Write a poem about {a} {b} {c}\n10. Write a poem about {a} {b} {c} today"

    model = scripted(answer)
    report = generate_instructions(
        ctx(model), seeds(), tmp_path, InstructionSettings(num_instructions=4)
    )
    records = read_jsonl(tmp_path / "machine_generated_instructions.jsonl")
    kept = [r["instruction"] for r in records]
    pool = [s.instruction for s in seeds()] + kept
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for i, text in enumerate(kept):
        others = pool[: len(seeds()) + i]
        assert max(scorer.score(o, text)["rougeL"].fmeasure for o in others) <= 0.7
    first = records[0]
    assert set(first) == {
        "instruction",
        "most_similar",
        "avg_similarity_score",
        "metadata",
        "request_idx",
        "candidate_idx",
    }
    assert len(first["most_similar"]) == 10
    scores = list(first["most_similar"].values())
    assert scores == sorted(scores, reverse=True)
    expected = scorer.score(seeds()[0].instruction, first["instruction"])["rougeL"].fmeasure
    assert first["most_similar"].get(seeds()[0].instruction, expected) == pytest.approx(expected)
    assert first["metadata"]["response"]["choices"][0]["finish_reason"] == "stop"
    assert report.dropped.get("too_similar", 0) > 0


def test_step1_resumes_without_duplicates(tmp_path, scripted):
    source = fresh_instructions()
    model = scripted(lambda p: f" {next(source)}\n10. {next(source)}")
    generate_instructions(ctx(model), seeds(), tmp_path, InstructionSettings(num_instructions=5))
    path = tmp_path / "machine_generated_instructions.jsonl"
    with open(path, "a") as f:
        f.write('{"instruction": "A torn li')  # what a kill mid-write leaves
    report = generate_instructions(
        ctx(model), seeds(), tmp_path, InstructionSettings(num_instructions=9)
    )
    records = read_jsonl(path)
    texts = [r["instruction"] for r in records]
    assert len(texts) == 9 == len(set(texts))
    assert report.counts["resumed_from"] == 5
    idx = [r["request_idx"] for r in records]
    assert idx == sorted(idx)


def test_step1_concurrency_keeps_the_threshold(tmp_path, scripted):
    source = fresh_instructions()
    model = scripted(lambda p: f" {next(source)}\n10. {next(source)}\n11. {next(source)}")
    generate_instructions(
        ctx(model, concurrency=16), seeds(), tmp_path, InstructionSettings(num_instructions=40)
    )
    texts = [
        r["instruction"] for r in read_jsonl(tmp_path / "machine_generated_instructions.jsonl")
    ]
    assert len(texts) == 40 == len(set(texts))


def write_instructions(path, instructions):
    path.write_text("".join(json.dumps({"instruction": i}) + "\n" for i in instructions))


def test_step2_stores_answers_and_counts_them(tmp_path, scripted):
    instructions = ["Is this review positive or negative?", "Write a poem", "Odd one"]
    write_instructions(tmp_path / "machine_generated_instructions.jsonl", instructions)
    replies = {
        "Is this review positive or negative?": " Yes",
        "Write a poem": "no.",
        "Odd one": "?",
    }

    def answer(prompt):
        task = prompt.rsplit("Task: ", 1)[1].split("\n")[0]
        return replies[task]

    model = scripted(answer, max_batch=5)
    report = identify_classification(ctx(model), tmp_path, ClassifySettings())
    out = read_jsonl(tmp_path / "is_clf_or_not_scripted_template_1.jsonl")
    # Stored as answered, as the paper's script did; "no." is neither an exact yes nor no.
    assert {r["instruction"]: r["is_classification"] for r in out} == replies
    assert (report.counts["yes"], report.counts["no"], report.counts["neither"]) == (1, 0, 2)
    s = model.samplings[0]
    assert (s.max_tokens, s.temperature, s.stop) == (3, 0.0, ("\n", "Task"))
    # A rerun asks nothing new.
    identify_classification(ctx(model), tmp_path, ClassifySettings())
    assert len(model.prompts) == 3


def test_step3_uses_output_first_for_classification(tmp_path, scripted):
    write_instructions(tmp_path / "machine_generated_instructions.jsonl", ["Clf task", "Gen task"])
    (tmp_path / "is_clf_or_not_m_template_1.jsonl").write_text(
        '{"instruction": "Clf task", "is_classification": "Yes"}\n'
        '{"instruction": "Gen task", "is_classification": "No"}\n'
    )
    model = scripted(lambda p: "Class label: A\nText: x" if "Class label" in p else "Output: y")
    generate_instances(ctx(model), tmp_path, InstanceSettings())
    out = {r["instruction"]: r for r in read_jsonl(tmp_path / "machine_generated_instances.jsonl")}
    assert out["Clf task"]["raw_instances"] == "Class label: A\nText: x"
    assert out["Gen task"]["raw_instances"] == "Output: y"
    by_task = {
        p.rsplit("Task: ", 1)[1].strip(): s
        for p, s in zip(model.prompts, model.samplings, strict=True)
    }
    # One batch holding a classification task: both get its limit (see test_fidelity.py).
    assert by_task["Clf task"].max_tokens == 300 and by_task["Gen task"].max_tokens == 300
    assert by_task["Gen task"].stop == ("Example 6", "Task:")
    assert by_task["Gen task"].presence_penalty == 1.5
    assert set(out["Gen task"]) == {
        "instruction",
        "raw_instances",
        "instance_metadata",
        "instruction_metadata",
        "most_similar",
        "avg_similarity_score",
    }


def texts(examples: list) -> list[tuple[str, str, str]]:
    return [e.texts for e in examples]


def test_instance_parsing_and_cleaning():
    raw = (
        "Example 1\nSentence: hi there\nOutput: greeting\n"
        "Example 2\nSentence: bye\nOutput: farewell"
    )
    assert texts(parse_generation_instances(raw, "T")) == [
        ("T", "Sentence: hi there", "greeting"),
        ("T", "Sentence: bye", "farewell"),
    ]
    assert texts(parse_generation_instances("Output: just this", "T")) == [("T", "", "just this")]
    assert texts(parse_generation_instances("no markers at all", "T")) == []
    assert texts(
        parse_classification_instances("Class label: Pos\nText: good\nClass label: Neg", "T")
    ) == [
        ("T", "Text: good", "Pos"),
        ("T", "", "Neg"),
    ]
    dropped = {}
    from collections import Counter

    dropped = Counter()
    # same input, two outputs: the whole task goes
    raw = "Example 1\nInput: a\nOutput: b\nExample 2\nInput: a\nOutput: c"
    assert texts(clean_task_instances(raw, "T", False, "stop", dropped)) == []
    assert dropped["conflicting_outputs"] == 2
    raw = "Example 1\nInput: a\nOutput: a\nExample 2\nInput: q\nOutput: w:\nExample 3\nOutput: ok"
    assert texts(clean_task_instances(raw, "T", False, "stop", dropped)) == [("T", "", "ok")]
    assert dropped["invalid_input_equals_output"] == 1 and dropped["invalid_ends_with_colon"] == 1
    raw = "Example 1\nOutput: one\nExample 2\nOutput: tw"
    assert texts(clean_task_instances(raw, "T", False, "length", dropped)) == [("T", "", "one")]


def test_prepare_writes_all_formats(tmp_path):
    rows = [
        {
            "instruction": "Gen task one",
            "raw_instances": "Example 1\nInput: 2+2\nOutput: 4\n",
            "instance_metadata": {"response": {"choices": [{"finish_reason": "stop"}]}},
        },
        {
            "instruction": "Clf task two",
            "raw_instances": "Class label: Yes\nQ: sky blue?\nClass label: No\nQ: grass red?",
            "instance_metadata": {},
        },
        {"instruction": "Broken task", "raw_instances": "nothing", "instance_metadata": {}},
    ]
    (tmp_path / "machine_generated_instances.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )
    (tmp_path / "is_clf_or_not_m_template_1.jsonl").write_text(
        '{"instruction": "Gen task one", "is_classification": "No"}\n'
        '{"instruction": "Clf task two", "is_classification": "Yes"}\n'
        '{"instruction": "Broken task", "is_classification": "No"}\n'
    )
    report = prepare_finetuning(tmp_path, PrepareSettings(include_seed_tasks=True), seeds=seeds(2))
    out = tmp_path / "finetuning_data"
    triples = read_jsonl(out / "all_generated_instances.jsonl")
    assert {(t["instruction"], t["output"]) for t in triples} == {
        ("Gen task one", "4"),
        ("Clf task two", "Yes"),
        ("Clf task two", "No"),
    }
    gpt3 = read_jsonl(out / "gpt3_finetuning_data_5.jsonl")
    assert len(gpt3) == 5 and all(r["completion"].endswith("<|endoftext|>") for r in gpt3)
    chat = read_jsonl(out / "openai_chat_finetuning_data.jsonl")
    assert len(chat) == 5
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in chat)
    alpaca = json.loads((out / "alpaca_data.json").read_text())
    assert {"instruction": "Gen task one", "input": "2+2", "output": "4"} in alpaca
    assert report.dropped["tasks_unparsable"] == 1


def test_step1_stops_when_the_model_only_repeats_itself(tmp_path, scripted):
    model = scripted(lambda p: " Compose a limerick about a sleepy cat")
    report = generate_instructions(
        ctx(model),
        seeds(),
        tmp_path,
        InstructionSettings(num_instructions=5, max_stalled_requests=20),
    )
    assert not report.complete
    assert report.counts["instructions_in_file"] == 1
    assert report.dropped["too_similar"] == 20
    assert report.counts["stalled_requests"] == 20


def test_step1_needs_seeds_for_a_whole_first_prompt(tmp_path, scripted):
    """With an empty pool the first prompt is all seeds: 7 classification seeds cannot fill 8
    places, which is said before any request (it used to crash on the first prompt)."""
    clf = [
        SeedTask(f"c{i}", f"c{i}", f"Label the {WORDS[i]} review as good or bad.", (), True)
        for i in range(7)
    ]
    model = scripted(lambda prompt: "Sort the list of words")
    settings = InstructionSettings(num_instructions=2, classification_only=True)
    with pytest.raises(ConfigError, match="need at least 8 classification seed tasks"):
        generate_instructions(
            ctx(model), clf + [s for s in seeds(12) if not s.is_classification], tmp_path, settings
        )
    assert model.prompts == []
