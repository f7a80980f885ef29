"""Step 4's filters beyond the paper's: the judge's rating (`--min-rating`) and decontamination
against evaluation sets, both through the Pipeline and the CLI, every drop counted and kept."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_cli

import selfinstruct as si
from selfinstruct.records import example_key

EVAL_TASK = (
    "Rewrite the sentence so that it is clearer and more concise, breaking long sentences into"
    " short ones and removing every word that adds nothing to its meaning."
)
TASKS = [
    ("Name the capital city of the given country.", "France", "Paris"),
    ("Convert the temperature from Celsius to Fahrenheit.", "100", "212"),
    ("Give a synonym of the given word.", "happy", "glad"),
    ("Count the vowels in the given word.", "banana", "3"),
    # A planted copy of an evaluation task, with its own input and output.
    (EVAL_TASK, "If you have any questions, please do not hesitate to ask me.", "Ask me."),
]


def write_run(folder: Path) -> si.RunFolder:
    """Steps 1-3's files, as the pipeline (or the original release) writes them."""
    rf = si.RunFolder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(rf.instructions, "w") as f:
        for instruction, _, _ in TASKS:
            f.write(json.dumps({"instruction": instruction}) + "\n")
    with open(rf.classification_file_for("m"), "w") as f:
        for instruction, _, _ in TASKS:
            f.write(json.dumps({"instruction": instruction, "is_classification": " No"}) + "\n")
    with open(rf.instances, "w") as f:
        for instruction, inp, out in TASKS:
            raw = f"Example 1\nInput: {inp}\nOutput: {out}\n"
            f.write(json.dumps({"instruction": instruction, "raw_instances": raw}) + "\n")
    return rf


def write_eval_set(path: Path) -> Path:
    items = [
        {"id": "eval_1", "instruction": EVAL_TASK, "instances": [{"input": "x", "output": "y"}]},
        {
            "id": "eval_2",
            "instruction": "Write a haiku about the first snow of the winter.",
            "instances": [{"input": "", "output": "..."}],
        },
    ]
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def test_planted_eval_task_is_dropped_and_nothing_else(tmp_path: Path) -> None:
    rf = write_run(tmp_path / "run")
    eval_set = write_eval_set(tmp_path / "eval.jsonl")
    report = si.Pipeline(rf).prepare(decontaminate=[eval_set])
    kept = [json.loads(x) for x in rf.all_instances.read_text().splitlines()]
    assert [r["instruction"] for r in kept] == [t[0] for t in TASKS[:4]]
    assert sum(v for k, v in report.dropped.items() if k.startswith("decontaminated_")) == 1
    (drop,) = [json.loads(x) for x in rf.dropped_examples.read_text().splitlines()]
    assert drop["instruction"] == EVAL_TASK and drop["eval_id"] == "eval_1"
    assert drop["reason"].startswith("decontaminated_")
    chat = rf.chat_finetuning.read_text()
    assert "clearer and more concise" not in chat
    run = json.loads(rf.run_file.read_text())
    assert run["config"]["prepare"]["decontaminate"] == [str(eval_set)]
    assert run["steps"]["prepare"]["dropped"] == report.dropped


def test_planted_task_in_the_seed_instances_is_dropped_too(tmp_path: Path) -> None:
    rf = write_run(tmp_path / "run")
    eval_set = write_eval_set(tmp_path / "eval.jsonl")
    seeds = [
        si.SeedTask("s1", "s1", EVAL_TASK.upper(), (si_instance("a", "b"),), False),
        si.SeedTask("s2", "s2", "Sort the list of numbers.", (si_instance("3 1", "1 3"),), False),
    ]
    report = si.Pipeline(rf, seeds=seeds).prepare(include_seed_tasks=True, decontaminate=[eval_set])
    assert report.counts["seed_instances_included"] == 1
    assert any(k.startswith("seed_decontaminated_") for k in report.dropped)


def si_instance(inp: str, out: str):  # noqa: ANN201
    from selfinstruct.records import Instance

    return Instance(inp, out)


def test_min_rating_keeps_only_well_rated_examples(tmp_path: Path) -> None:
    rf = write_run(tmp_path / "run")
    ratings = {TASKS[0]: "A", TASKS[1]: "B", TASKS[2]: "C"}  # TASKS[3] and [4] are unrated
    with open(rf.judgments_file, "w") as f:
        for (i, x, o), rating in ratings.items():
            f.write(json.dumps({"key": example_key(i, x, o), "rating": rating, "model": "j"}))
            f.write("\n")
    report = si.Pipeline(rf).prepare(min_rating="B", decontaminate=[])
    # all_generated_instances.jsonl stays whole (the judge's input); the kept ones have a file.
    assert len(rf.all_instances.read_text().splitlines()) == len(TASKS)
    kept = [json.loads(x) for x in rf.rated_instances.read_text().splitlines()]
    assert [(r["instruction"], r["rating"]) for r in kept] == [
        (TASKS[0][0], "A"),
        (TASKS[1][0], "B"),
    ]
    assert report.dropped["rating_below_B"] == 1
    assert report.dropped["unrated"] == 2
    reasons = [json.loads(x)["reason"] for x in rf.dropped_examples.read_text().splitlines()]
    assert sorted(reasons) == ["rating_below_B", "unrated", "unrated"]


def test_without_min_rating_ratings_are_carried_not_used(tmp_path: Path) -> None:
    rf = write_run(tmp_path / "run")
    i, x, o = TASKS[2]
    rf.judgments_file.write_text(json.dumps({"key": example_key(i, x, o), "rating": "D"}) + "\n")
    si.Pipeline(rf).prepare(decontaminate=[])
    kept = [json.loads(line) for line in rf.all_instances.read_text().splitlines()]
    assert len(kept) == len(TASKS)
    assert [r.get("rating") for r in kept] == [None, None, "D", None, None]


cli = run_cli


def test_cli_options_and_their_errors(tmp_path: Path) -> None:
    rf = write_run(tmp_path / "run")
    eval_set = write_eval_set(tmp_path / "eval.jsonl")
    both = cli("prepare", "--batch-dir", str(rf.path), "--decontaminate", str(eval_set),
               "--no-decontaminate")  # fmt: skip
    assert both.returncode == 2 and "exclude each other" in both.stderr
    bad = cli("prepare", "--batch-dir", str(rf.path), "--min-rating", "E")
    assert bad.returncode == 2 and "--min-rating" in bad.stderr
    ok = cli("prepare", "--batch-dir", str(rf.path), "--decontaminate", str(eval_set), "-q")
    assert ok.returncode == 0, ok.stderr
    dropped = json.loads(rf.run_file.read_text())["steps"]["prepare"]["dropped"]
    assert sum(v for k, v in dropped.items() if k.startswith("decontaminated_")) == 1


def test_no_eval_set_found_is_said_in_one_line(tmp_path: Path, monkeypatch) -> None:
    import selfinstruct.decontaminate as dc

    monkeypatch.setattr(dc, "default_eval_sets", lambda: [])
    rf = write_run(tmp_path / "run")
    messages: list[str] = []
    pipeline = si.Pipeline(rf)
    pipeline.reporter.info = messages.append  # type: ignore[method-assign]
    report = pipeline.prepare()
    assert not any(k.startswith("decontaminated") for k in report.dropped)
    assert any("no evaluation set found" in m for m in messages)
