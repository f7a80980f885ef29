"""The run folder's typed readers: one Example, one keyed last-line reader, one run.json view,
one policy for the classification file, one fine-tune folder."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from selfinstruct.errors import DataFileError
from selfinstruct.records import Example, example_key
from selfinstruct.runfolder import FinetuneFolder, RunFolder


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_examples_are_typed_with_their_rating_and_key(tmp_path: Path) -> None:
    rf = RunFolder(tmp_path)
    _jsonl(
        rf.all_instances,
        [
            {"instruction": "Add.", "input": "1 2", "output": "3", "rating": "A"},
            {"instruction": "Greet.", "input": None, "output": "Hi."},
            {"instruction": "Add.", "input": "1 2", "output": "3"},  # the same example again
        ],
    )
    examples = rf.read_examples()
    assert [e.texts for e in examples] == [("Add.", "1 2", "3"), ("Greet.", "", "Hi.")] + [
        ("Add.", "1 2", "3")
    ]
    assert examples[0].rating == "A" and examples[1].rating is None
    assert examples[0].key == example_key("Add.", "1 2", "3")
    assert examples[0] == examples[2]  # what was said of it takes no part in equality
    assert [e.texts for e in rf.read_examples(unique=True)] == [e.texts for e in examples[:2]]
    assert examples[0].to_dict() == {"instruction": "Add.", "input": "1 2", "output": "3",
                                     "rating": "A"}  # fmt: skip


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"input": "", "output": "x"}, "missing field 'instruction'"),
        ({"instruction": "  ", "output": "x"}, "missing field 'instruction'"),
        ({"instruction": "Do.", "input": 3, "output": "x"}, "field 'input' is not text"),
        ({"instruction": "Do.", "input": ""}, "missing field 'output'"),
    ],
)
def test_a_bad_example_names_its_file_and_line(tmp_path: Path, record, message) -> None:
    rf = RunFolder(tmp_path)
    _jsonl(rf.all_instances, [{"instruction": "Fine.", "output": "ok"}, record])
    with pytest.raises(DataFileError, match=rf"all_generated_instances\.jsonl:2: {message}"):
        rf.read_examples()


def test_one_keyed_reader_for_judgments_and_reviews(tmp_path: Path) -> None:
    rf = RunFolder(tmp_path)
    _jsonl(
        rf.judgments_file,
        [
            {"key": "k1", "rating": "B", "model": "m1", "valid_instruction": True},
            {"key": "k2", "rating": "A", "model": "m1"},
            {"key": "k1", "rating": None, "model": "m1", "unparsed": "no_rating"},
            {"key": "k1", "rating": "D", "model": "m2"},
            {"rating": "A"},  # no key: skipped, with a warning
        ],
    )
    warnings: list[str] = []
    last = rf.judgments(warn=warnings.append)
    assert list(last) == ["k2", "k1"] and last["k1"].model == "m2"
    assert len(warnings) == 1 and "without a 'key'" in warnings[0]
    rated = rf.judgments(model="m1", rated_only=True)
    assert rated["k1"].rating == "B" and rated["k1"].valid_instruction is True
    assert rated["k1"].input_fits is None
    assert rf.judgments(model="m1")["k1"].rating is None  # the unreadable answer is the last
    assert rf.reviews() == {}  # no file: nothing reviewed


def test_run_json_is_read_one_way(tmp_path: Path) -> None:
    rf = RunFolder(tmp_path)
    assert not rf.run_record().exists and rf.run_record().similarity_threshold is None
    (tmp_path / "seeds.jsonl").write_text("")
    rf.run_file.write_text(json.dumps({
        "argv": ["run", "--seed-tasks", "elsewhere.jsonl"],
        "model": {"backend": "openai", "name": "m"},
        "config": {"instructions": {"similarity_threshold": 0.6, "seed_tasks": "seeds.jsonl",
                                    "num_instructions": 9}},
        "steps": {"instructions": {"counts": {"kept": 9, "flag": True}, "complete": True}},
        "usage": {"requests": 3},
    }))  # fmt: skip
    record = rf.run_record()
    assert (record.similarity_threshold, record.num_instructions) == (0.6, 9)
    assert record.model_name == "m" and record.usage == {"requests": 3}
    assert record.seed_file == "seeds.jsonl"  # the config's, never argv's
    assert record.find_seed_file() == tmp_path / "seeds.jsonl"  # found inside the run folder
    assert record.steps["instructions"].counts == {"kept": 9}
    for bad in ("{not json", "[1, 2]"):
        rf.run_file.write_text(bad)
        with pytest.raises(DataFileError, match="run.json"):
            rf.run_record()


def test_one_policy_for_the_classification_file(tmp_path: Path) -> None:
    rf = RunFolder(tmp_path)
    with pytest.raises(DataFileError, match="no is_clf_or_not"):
        rf.find_classification_file()
    _jsonl(rf.classification_file_for("a"), [{"instruction": "x", "is_classification": "Yes"}])
    assert rf.find_classification_file() == rf.classification_file_for("a")
    _jsonl(rf.classification_file_for("b"), [{"instruction": "x", "is_classification": "No"}])
    with pytest.raises(DataFileError, match="several classification files"):
        rf.find_classification_file()
    rf.run_file.write_text(json.dumps({"model": {"name": "b"}}))
    assert rf.find_classification_file() == rf.classification_file_for("b")
    assert rf.read_labels() == {"x": False}
    name = rf.classification_file_for("a").name
    assert rf.find_classification_file(name) == rf.classification_file_for("a")


def test_the_fine_tune_folder_and_its_report(tmp_path: Path) -> None:
    folder = FinetuneFolder(tmp_path)
    assert folder.training_report() is None
    folder.report_file.write_text(
        json.dumps({"status": "complete", "data": {"file": "d.jsonl"}, "fingerprint": {"x": 1}})
    )
    report = folder.training_report()
    assert report.complete and report.data_file == "d.jsonl" and report.fingerprint == {"x": 1}
    assert folder.adapter.name == "adapter.gguf" and folder.adapter.parent == tmp_path
    folder.report_file.write_text("[]")
    with pytest.raises(DataFileError, match="finetune.json: expected a JSON object"):
        folder.training_report()


def test_one_example_type_reads_every_format() -> None:
    from selfinstruct.finetune.data import Example as FinetuneExample

    assert FinetuneExample is Example
    e = Example("Say hi.", "to Ann", "Hi Ann.")
    assert e.user == "Say hi.\n\nto Ann"
    assert e.chat_messages()[-1] == {"role": "assistant", "content": "Hi Ann."}


def test_a_misspelled_setting_fails_before_any_model_call(tmp_path: Path) -> None:
    import selfinstruct as si

    model = si.ScriptedModel(lambda prompt: "never asked")
    with si.Pipeline(out=tmp_path / "run", model=model) as pipeline:
        with pytest.raises(si.ConfigError, match="'similarity_treshold'; did you mean"):
            pipeline.generate_instructions(5, similarity_treshold=0.5)
        with pytest.raises(si.ConfigError, match="InstanceSettings has no setting 'max_instance'"):
            pipeline.run(5, instances={"max_instance": 3})
        with pytest.raises(si.ConfigError, match="PrepareSettings"):
            pipeline.run(5, prepare={"min_rating": "B", "include_seeds": True})
    assert model.prompts == [] and not (tmp_path / "run").exists()


def test_the_scripted_model_is_public_and_scripts_failures(tmp_path: Path) -> None:
    import selfinstruct as si
    from selfinstruct.models.base import Sampling

    model = si.ScriptedModel(["one", ("two", "length"), si.ModelError("refused")])
    first = asyncio.run(model.complete(["a b", "c"], Sampling()))
    assert [(c.text, c.finish_reason) for c in first] == [("one", "stop"), ("two", "length")]
    with pytest.raises(si.ModelError, match="refused"):
        asyncio.run(model.complete(["d"], Sampling()))
    with pytest.raises(si.ModelError, match="no answer left"):
        asyncio.run(model.complete(["e"], Sampling()))
    assert model.prompts == ["a b", "c", "d", "e"]
