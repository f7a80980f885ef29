"""Decontamination: training examples that overlap an evaluation set are found, with the reason,
and nothing else is."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from selfinstruct.cli import cli
from selfinstruct.decontaminate import (
    Decontaminator,
    EvalItem,
    default_eval_sets,
    load_eval_items,
    normalize,
    overlap_report,
    overlap_warning,
    training_data_of,
)
from selfinstruct.seeds import default as default_seeds

pytest.importorskip("aiohttp")
try:
    from tests.servers.openai_fault_server import ContentGenerator
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from servers.openai_fault_server import ContentGenerator

# Our default seed set overlaps none of the paper's 252 user-oriented tasks. (It held one, a
# rhyming task at ROUGE-L 0.74 to user_oriented_task_151; this check found it and the seed was
# reworded, so that a model trained on our seeds can be evaluated on those tasks.)
JUSTIFIED_SEED_OVERLAPS: dict[str, str] = {}


def seed_items() -> list[EvalItem]:
    """Our default seed tasks as an evaluation set: real prose, shipped with the package."""
    return [
        EvalItem(f"{t.id}#{k}", t.instruction, inst.input)
        for t in default_seeds()
        for k, inst in enumerate(t.instances)
    ]


def clean_examples(n: int, seed: int = 3) -> list[tuple[str, str]]:
    """Instructions and inputs from the fault server's generator: made-up words in templates."""
    content = ContentGenerator(seed)
    rng = random.Random(seed)
    return [
        (content.instruction(rng), content.sentence(rng) if rng.random() < 0.6 else "")
        for _ in range(n)
    ]


def long_item(items: list[EvalItem], rng: random.Random) -> EvalItem:
    return rng.choice([i for i in items if len(normalize(i.instruction)) >= 16])


def variants(item: EvalItem, rng: random.Random) -> list[tuple[str, str]]:
    """Edited copies of an item that still hold it: case, punctuation, extra words around."""
    words = item.instruction.split()
    start = rng.randrange(len(words) - 13 + 1)
    window = " ".join(words[start : start + 13])
    return [
        (item.instruction, item.input),
        (item.instruction.upper(), item.input.lower()),
        (item.instruction.replace(",", "").replace(".", "!") + " ...", item.input + "?"),
        (f"Before anything else, {window.lower()} -- and then stop.", "unrelated words here"),
        ("Sort these words by length.", f"Some text first. {item.instruction} Some after."),
    ]


def test_planted_copies_of_evaluation_items_are_dropped_with_their_item():
    items = seed_items()
    checker = Decontaminator(items)
    rng = random.Random(7)
    clean = clean_examples(3000)
    planted: dict[int, str] = {}
    training = list(clean)
    for _ in range(30):
        item = long_item(items, rng)
        for example in variants(item, rng):
            planted[len(training)] = item.id
            training.append(example)
    rng.shuffle(order := list(range(len(training))))
    shuffled = [training[k] for k in order]
    hits = checker.check_many(shuffled)
    for position, k in enumerate(order):
        hit = hits[position]
        if k in planted:
            assert hit is not None, shuffled[position]
            assert hit.reason == "ngram_overlap"
            same = next(i for i in items if i.id == planted[k])
            # The planted item, or another instance of its task (the shared 13-gram is in the
            # instruction).
            assert hit.item.id == same.id or hit.item.instruction == same.instruction
            assert len(hit.ngram.split()) == 13
            assert hit.ngram in " ".join(normalize(" ".join(shuffled[position])))
        else:
            assert hit is None, (shuffled[position], hit)


def test_thirteen_tokens_in_a_row_and_not_twelve():
    item = EvalItem("e1", "one two three four five six seven eight nine ten eleven twelve thirteen")
    checker = Decontaminator([item], rouge_threshold=None)
    words = item.instruction.split()
    assert checker.check("zero " + " ".join(words) + " fourteen").item.id == "e1"
    assert checker.check(" ".join(words[:12]) + " and more words") is None
    # The 13 tokens may straddle the instruction and the input.
    assert checker.check(" ".join(words[:6]), " ".join(words[6:])) is not None
    # Punctuation and case do not matter; order does.
    text = "ONE, two; three: four-five six (seven) eight nine ten eleven twelve thirteen!"
    assert checker.check(text) is not None
    assert checker.check(text.replace("twelve", "twelfth")) is None
    assert checker.check(" ".join(reversed(words))) is None


def test_short_items_are_matched_whole():
    items = [
        EvalItem("short", "Design a medium-level sudoku puzzle."),  # 5 tokens
        EvalItem("tiny", "Tell a joke."),  # 3 tokens: below min_tokens
        EvalItem("pair", "Solve this equation.", "x^3 - 4x^2 + 6x - 24 = 0"),  # 8 tokens
    ]
    checker = Decontaminator(items, rouge_threshold=None)
    hit = checker.check("Please design a medium level Sudoku puzzle for kids.")
    assert hit is not None and hit.item.id == "short"
    assert hit.ngram == "design a medium level sudoku puzzle"
    assert checker.check("Please design a medium-level puzzle, sudoku style") is None
    assert checker.check("Design a sudoku puzzle.") is None  # part of it only
    assert checker.check("Tell a joke about cats.") is None
    hit = checker.check("Solve this equation:", "x^3 - 4x^2 + 6x - 24 = 0")
    assert hit is not None and hit.item.id == "pair"
    assert checker.check("Solve this equation.", "x^2 = 4") is None
    # The ROUGE-L test still catches the short ones that are near copies.
    hit = Decontaminator(items).check("Tell a joke, please.")
    assert hit is not None and (hit.reason, hit.item.id) == ("rouge_l", "tiny")
    assert hit.score == pytest.approx(2 * 3 / (3 + 4))


def test_rouge_l_reason_agrees_with_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    items = seed_items()
    instructions = list(dict.fromkeys(i.instruction for i in items))
    checker = Decontaminator(items, n=10_000, min_tokens=10_000)  # the ROUGE-L test alone
    rng = random.Random(5)
    queries = [i for i, _ in clean_examples(30)]
    for _ in range(120):
        words = rng.choice(instructions).split()
        for _ in range(rng.randint(0, 6)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(["quickly", "the", "new"]))
        queries.append(" ".join(words))
    flagged = 0
    for query in queries:
        scores = [scorer.score(i, query)["rougeL"].fmeasure for i in instructions]
        best = max(scores)
        hit = checker.check(query)
        if best <= 0.7:
            assert hit is None, query
            continue
        flagged += 1
        assert hit is not None and hit.reason == "rouge_l"
        assert hit.score == pytest.approx(best)
        assert hit.item.instruction == instructions[scores.index(best)]  # ties: the first
    assert 20 < flagged < len(queries) - 20


def test_check_and_check_many_agree():
    items = seed_items()
    checker = Decontaminator(items)
    rng = random.Random(11)
    examples = clean_examples(400, seed=5)
    for _ in range(60):
        item = rng.choice(items)
        words = normalize(item.text)
        a = rng.randrange(len(words))
        b = min(len(words), a + rng.randint(3, 20))
        examples.append((" ".join(words[a:b]) + " " + rng.choice(["x", "yes", ""]), ""))
        examples.append((item.instruction, rng.choice(["", item.input])))
    rng.shuffle(examples)
    many = checker.check_many(examples)
    assert many == [checker.check(i, x) for i, x in examples]
    # A text holding the word check_many joins texts with: the slow path, the same answers.
    examples.insert(5, ("qz0sep0zq " + examples[9][0], examples[9][1]))
    many = checker.check_many(examples)
    assert many == [checker.check(i, x) for i, x in examples]
    assert 0 < sum(h is not None for h in many) < len(examples)


def test_a_clean_synthetic_set_loses_nothing():
    checker = Decontaminator(seed_items())
    assert not any(checker.check_many(clean_examples(5000, seed=9)))


def test_our_seed_set_against_the_user_oriented_tasks():
    paths = default_eval_sets()
    if not paths:
        pytest.skip(
            "user_oriented_instructions.jsonl absent: set SELFINSTRUCT_EVAL_DIR or put the"
            " release's data in shared/data/self-instruct/ beside the checkout"
        )
    checker = Decontaminator.from_files(paths)
    assert len(checker) == 252
    pairs = [(t.instruction, i.input) for t in default_seeds() for i in t.instances]
    hits = checker.check_many(pairs)
    dropped = {p[0]: h.item.id for p, h in zip(pairs, hits, strict=True) if h is not None}
    assert dropped == JUSTIFIED_SEED_OVERLAPS
    # And every one of the 252 tasks finds itself, edited.
    items = load_eval_items(paths)
    edited = [(i.instruction.upper() + "!!", i.input.lower()) for i in items]
    for item, hit in zip(items, checker.check_many(edited), strict=True):
        assert hit is not None and normalize(hit.item.text) == normalize(item.text), item.id


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_every_evaluation_format_loads(tmp_path):
    tasks = write_jsonl(
        tmp_path / "user.jsonl",
        [
            {
                "id": "user_oriented_task_0",
                "instruction": "Fix the grammar.",
                "instances": [{"input": "He go home.", "output": "He goes home."}],
            },
            {
                "id": "seed_task_1",
                "name": "x",
                "is_classification": False,
                "instruction": "Add the numbers.",
                "instances": [{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "4"}],
            },
        ],
    )
    instances = write_jsonl(
        tmp_path / "inst.jsonl", [{"instruction": "Say hi.", "input": "", "output": "hi"}]
    )
    predictions = write_jsonl(
        tmp_path / "pred.jsonl",
        [
            {
                "prompt": "Say bye.\nOutput:",
                "instruction": "Say bye.",
                "input": "",
                "response": "bye",
                "target": "",
            }
        ],
    )
    items = load_eval_items([tasks, instances, predictions])
    assert [(i.id, i.instruction, i.input) for i in items] == [
        ("user_oriented_task_0", "Fix the grammar.", "He go home."),
        ("seed_task_1#0", "Add the numbers.", "1 2"),
        ("seed_task_1#1", "Add the numbers.", "2 2"),
        ("inst.jsonl:1", "Say hi.", ""),
        ("pred.jsonl:1", "Say bye.", ""),  # an empty target is still an item
    ]


def test_default_eval_sets_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "user_oriented_instructions.jsonl").write_text("{}\n")
    monkeypatch.setenv("SELFINSTRUCT_EVAL_DIR", str(tmp_path))
    assert default_eval_sets() == [tmp_path / "user_oriented_instructions.jsonl"]
    monkeypatch.setenv("SELFINSTRUCT_EVAL_DIR", str(tmp_path / "user_oriented_instructions.jsonl"))
    assert default_eval_sets() == [tmp_path / "user_oriented_instructions.jsonl"]
    monkeypatch.setenv("SELFINSTRUCT_EVAL_DIR", str(tmp_path / "nowhere"))
    assert all(p.is_file() for p in default_eval_sets())  # the checkout's, or []


def planted_files(tmp_path):
    items = seed_items()
    tasks = write_jsonl(
        tmp_path / "tasks.jsonl",
        [{"instruction": i.instruction, "input": i.input, "output": "x"} for i in items[:50]],
    )
    train = [{"instruction": i, "input": x, "output": "y"} for i, x in clean_examples(300)]
    train.insert(120, {"instruction": items[7].instruction.lower(), "input": "", "output": "y"})
    train.insert(200, {"instruction": "Rewrite it.", "input": items[9].instruction, "output": "y"})
    return tasks, write_jsonl(tmp_path / "train.jsonl", train), items


def test_overlap_report_and_the_one_line_warning(tmp_path):
    tasks, train, items = planted_files(tmp_path)
    found = overlap_report(tasks, train)
    assert [f.index for f in found] == [120, 200]
    assert found[0].overlap.item.instruction == items[7].instruction
    line = overlap_warning(tasks, train)
    assert line is not None and "\n" not in line
    assert line.startswith(f"2 training example(s) in {train} overlap the tasks in {tasks}")
    assert "#121" in line
    clean = write_jsonl(
        tmp_path / "clean.jsonl",
        [{"instruction": i, "input": x, "output": "y"} for i, x in clean_examples(50)],
    )
    assert overlap_warning(tasks, clean) is None


def test_training_data_of_a_fine_tuned_model(tmp_path):
    ft = tmp_path / "ft"
    ft.mkdir()
    data = write_jsonl(tmp_path / "data.jsonl", [{"instruction": "a", "input": "", "output": "b"}])
    (ft / "finetune.json").write_text(json.dumps({"data": {"file": str(data)}}))
    assert training_data_of(f"local?lora={ft}") == data
    (ft / "train.jsonl").write_text("{}\n")
    assert training_data_of(f"local?lora={ft}") == ft / "train.jsonl"  # the split it trained on
    assert training_data_of(f"local:{ft}/model.gguf") == ft / "train.jsonl"
    assert training_data_of("local") is None
    assert training_data_of("openai:gpt-4o-mini") is None
    assert training_data_of(f"local?lora={tmp_path / 'nothing'}") is None


def test_evaluate_warns_before_answering(tmp_path):
    tasks, train, _ = planted_files(tmp_path)
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            "openai:nothing",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--api-key",
            "k",
            "--max-attempts",
            "1",
            "--timeout",
            "2",
            "--tasks",
            str(tasks),
            "--out",
            str(tmp_path / "pred.jsonl"),
            "--training-data",
            str(train),
        ],
    )
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 training example(s)" in warnings[0]
