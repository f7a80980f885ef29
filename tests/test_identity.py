"""A run folder remembers what it is: its identity (seed tasks, model, seed, each step's
data-changing settings) is written on its first write; a rerun asking for other values is
refused before any model call unless told to continue (recorded in the history); settings left
out take the run's; settings that do not change the data change freely."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
from pathlib import Path

import pytest

import selfinstruct as si
from selfinstruct.errors import ConfigError
from selfinstruct.identity import STEP_FIELDS
from selfinstruct.pipeline import SETTINGS
from selfinstruct.records import Instance, SeedTask

try:
    from tests.helpers import fresh_instructions, toy_seeds
except ImportError:  # pytest put tests/ itself on sys.path
    from helpers import fresh_instructions, toy_seeds


def answering(scripted):
    """A scripted model that answers every step: fresh instructions, 'No', one instance."""
    source = fresh_instructions()

    def answer(prompt: str) -> str:
        if "Is it classification?" in prompt:
            return " No"
        if re.search(r"\n\d+\.$", prompt):  # step 1's numbered list, open at its end
            return f" {next(source)}"
        return "Input: some text\nOutput: a fine answer"

    return scripted(answer)


def run_json(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


def test_every_declared_setting_is_a_field_of_its_step() -> None:
    for step, names in STEP_FIELDS.items():
        fields = {f.name for f in dataclasses.fields(SETTINGS[step])}
        assert set(names) <= fields, step


def test_first_write_records_the_identity_and_the_seed_tasks(tmp_path, scripted) -> None:
    seeds = toy_seeds(12)
    with si.Pipeline(tmp_path, answering(scripted), seeds=seeds) as run:
        run.generate_instructions(3, similarity_threshold=0.6)
    data = run_json(tmp_path)
    identity = data["identity"]
    assert identity["seed_tasks"]["source"] == "python"  # Pipeline(seeds=[...]) is recorded
    assert identity["seed_tasks"]["count"] == 12
    assert identity["steps"]["instructions"]["similarity_threshold"] == 0.6
    assert identity["model"] == "scripted:scripted?api=completions"
    assert identity["seed"] == 42
    # The copy beside the data is the seed set itself, whatever the working directory later.
    copy = si.seeds.load_seed_tasks(si.RunFolder(tmp_path).seed_tasks)
    assert [t.instruction for t in copy] == [t.instruction for t in seeds]
    assert [h["steps"] for h in data["history"]] == [["instructions"]]


def test_a_changed_data_setting_is_refused_before_any_model_call(tmp_path, scripted) -> None:
    with si.Pipeline(tmp_path, answering(scripted), seeds=toy_seeds(12)) as run:
        run.generate_instructions(3)
    before = si.RunFolder(tmp_path).instructions.read_bytes()
    model = answering(scripted)
    with si.Pipeline(tmp_path, model, seeds=toy_seeds(14)) as run:
        with pytest.raises(si.RunIdentityError) as caught:
            run.generate_instructions(6, similarity_threshold=0.3)
    assert model.prompts == []  # refused before any model call
    assert si.RunFolder(tmp_path).instructions.read_bytes() == before
    named = {d.setting for d in caught.value.differences}
    assert named == {"similarity_threshold", "seed_tasks"}
    message = str(caught.value)
    assert "similarity_threshold 0.3 (the run: 0.7)" in message
    assert "\n" not in message


def test_left_out_settings_take_the_runs_values(tmp_path, scripted) -> None:
    seeds = toy_seeds(12)
    with si.Pipeline(tmp_path, answering(scripted), seeds=seeds, seed=7) as run:
        run.generate_instructions(3, similarity_threshold=0.8, num_prompt_instructions=6)
    # A shorter call, no seeds, no seed: the run's own, so it resumes instead of mixing.
    model = answering(scripted)
    with si.Pipeline(tmp_path, model) as run:
        report = run.generate_instructions(5)
        assert run.seed == 7
        assert [t.instruction for t in run.seeds] == [t.instruction for t in seeds]
    assert report.counts["instructions_in_file"] == 5
    config = run_json(tmp_path)["config"]["instructions"]
    assert (config["similarity_threshold"], config["num_prompt_instructions"]) == (0.8, 6)
    assert model.prompts[0].count("\n") == 7  # header + 6 listed instructions + the "7." line


def test_continue_anyway_mixes_and_says_so_in_the_history(tmp_path, scripted) -> None:
    with si.Pipeline(tmp_path, answering(scripted), seeds=toy_seeds(12)) as run:
        run.generate_instructions(3)
    with si.Pipeline(
        tmp_path, answering(scripted), seeds=toy_seeds(12), changed_settings="continue"
    ) as run:
        run.generate_instructions(5, similarity_threshold=0.9)
    data = run_json(tmp_path)
    last = data["history"][-1]
    assert last["changed_settings"] == "continue"
    assert last["changed"] == [
        {"setting": "similarity_threshold", "step": "instructions", "recorded": 0.7,
         "requested": 0.9}
    ]  # fmt: skip
    assert data["identity"]["steps"]["instructions"]["similarity_threshold"] == 0.9
    with pytest.raises(ConfigError, match="changed_settings"):
        si.Pipeline(tmp_path, changed_settings="sometimes")


def test_settings_that_do_not_change_the_data_change_freely(tmp_path, scripted) -> None:
    with si.Pipeline(tmp_path, answering(scripted), seeds=toy_seeds(12)) as run:
        run.generate_instructions(3, request_batch_size=5)
    engine = si.EngineSettings(concurrency=3, max_attempts=2, max_requests=100)
    with si.Pipeline(tmp_path, answering(scripted), engine=engine, timeout=5.0) as run:
        report = run.generate_instructions(6, request_batch_size=1)
    assert report.counts["instructions_in_file"] == 6


def test_every_step_checks_its_own_settings(tmp_path, scripted) -> None:
    with si.Pipeline(tmp_path, answering(scripted), seeds=toy_seeds(12)) as run:
        run.run(3, max_instances=2)
    for call, option in [
        (lambda r: r.identify_classification(lenient_labels=True), "lenient_labels"),
        (lambda r: r.generate_instances(max_instances_to_generate=4), "max_instances_to_generate"),
    ]:
        with si.Pipeline(tmp_path, answering(scripted)) as run:
            with pytest.raises(si.RunIdentityError, match=option):
                call(run)
    # Another model is another identity too; another seed as well.
    other = si.Pipeline(tmp_path, "openai:gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(si.RunIdentityError, match="model"):
        other.identify_classification()
    with pytest.raises(si.RunIdentityError, match="seed 1 "):
        si.Pipeline(tmp_path, answering(scripted), seed=1).generate_instances()


def test_run_json_exists_from_the_first_write_and_keeps_an_interrupted_steps_usage(
    tmp_path, scripted
) -> None:
    source = fresh_instructions()
    calls = iter(range(100))

    def answer(prompt: str) -> str:
        if next(calls) == 3:  # Ctrl-C while the fourth request is in flight
            signal.raise_signal(signal.SIGINT)
        return f" {next(source)}"

    with si.Pipeline(tmp_path, scripted(answer), seeds=toy_seeds(12)) as run:
        with pytest.raises(KeyboardInterrupt):
            run.generate_instructions(10)
    data = run_json(tmp_path)
    assert data["identity"]["seed_tasks"]["count"] == 12
    step = data["steps"]["instructions"]
    assert step["interrupted"] == 1 and step["complete"] is False
    # The fourth answer (the scripted model answers at once) lands before the cancel does.
    assert step["usage"]["requests"] == 4
    assert data["usage"]["requests"] == 4


# --- step 4 follows the run -----------------------------------------------------------------


def seeds_with_examples(n: int) -> list[SeedTask]:
    return [
        dataclasses.replace(t, instances=(Instance("", f"Seed answer {i}."),))
        for i, t in enumerate(toy_seeds(n))
    ]


def test_prepare_alone_uses_the_runs_seed_tasks_and_its_choice(tmp_path, scripted) -> None:
    seeds = seeds_with_examples(12)
    with si.Pipeline(tmp_path, answering(scripted), seeds=seeds) as run:
        report = run.run(3, prepare={"decontaminate": []})
    assert report["prepare"].counts["seed_instances_included"] == 12
    # prepare alone, from another working directory, no seed option: the run's 12, included.
    with si.Pipeline(tmp_path) as run:
        again = run.prepare(decontaminate=[])
    assert again.counts["seed_instances_included"] == 12
    with si.Pipeline(tmp_path) as run:
        off = run.prepare(include_seed_tasks=False, decontaminate=[])
    assert off.counts["seed_instances_included"] == 0
    # Another seed set with the seeds included would mix two seed sets: refused.
    with pytest.raises(si.RunIdentityError, match="seed_tasks"):
        si.Pipeline(tmp_path, seeds=toy_seeds(5)).prepare(include_seed_tasks=True, decontaminate=[])


def _rate(rf: si.RunFolder, judge: str, ratings: dict[int, str]) -> None:
    examples = [json.loads(x) for x in rf.all_instances.read_text().splitlines()]
    from selfinstruct.records import example_key

    with open(rf.judgments_file, "a") as f:
        for i, rating in ratings.items():
            e = examples[i]
            key = example_key(e["instruction"], e["input"], e["output"])
            f.write(json.dumps({"key": key, "rating": rating, "model": judge}) + "\n")


def test_min_rating_keeps_the_seeds_and_all_generated_whole(tmp_path, scripted) -> None:
    seeds = seeds_with_examples(12)
    with si.Pipeline(tmp_path, answering(scripted), seeds=seeds) as run:
        run.run(4, max_instances=1, prepare={"decontaminate": []})
    rf = si.RunFolder(tmp_path)
    whole = rf.all_instances.read_text().splitlines()
    assert len(whole) == 4
    _rate(rf, "openai:judge-a?api=chat", {0: "A", 1: "C"})
    with si.Pipeline(tmp_path) as run:
        report = run.prepare(min_rating="b", decontaminate=[])  # any case
    assert report.counts["seed_instances_included"] == 12  # people's examples: never rated
    assert report.counts["generated_instances"] == 1
    assert len(rf.all_instances.read_text().splitlines()) == 4  # the judge's input, whole
    rated = [json.loads(x) for x in rf.rated_instances.read_text().splitlines()]
    assert [r["rating"] for r in rated] == ["A"]
    assert {k: v for k, v in report.dropped.items() if v} == {"rating_below_B": 1, "unrated": 2}
    # A second judge: which one to filter with must be said.
    _rate(rf, "openai:judge-b?api=chat", {0: "D", 1: "A", 2: "A", 3: "A"})
    with pytest.raises(ConfigError, match="2 judges"):
        si.Pipeline(tmp_path).prepare(min_rating="B", decontaminate=[])
    with si.Pipeline(tmp_path) as run:
        by_b = run.prepare(min_rating="B", judge_model="judge-b", decontaminate=[])
    assert by_b.counts["generated_instances"] == 3
    with pytest.raises(ConfigError, match="judge-c"):
        si.Pipeline(tmp_path).prepare(min_rating="B", judge_model="judge-c", decontaminate=[])
    # Without a minimum the filtered file goes: nothing stale is left to be mistaken for it.
    with si.Pipeline(tmp_path) as run:
        run.prepare(judge_model="judge-b", decontaminate=[])
    assert not rf.rated_instances.exists()


# --- settings are checked -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: si.EngineSettings(concurrency="8"), "concurrency"),
        (lambda: si.EngineSettings(max_attempts=0), "max_attempts"),
        (lambda: SETTINGS["instructions"](similarity_threshold=1.5), "similarity_threshold"),
        (lambda: SETTINGS["instructions"](num_instructions=None), "num_instructions"),
        (lambda: SETTINGS["classify"](lenient_labels="yes"), "lenient_labels"),
        (lambda: SETTINGS["instances"](max_instances_to_generate=0), "max_instances_to_generate"),
        (lambda: SETTINGS["prepare"](instance_files="a.jsonl"), "instance_files"),
    ],
)
def test_settings_name_the_bad_field(make, field) -> None:
    with pytest.raises(ConfigError, match=field):
        make()


def test_an_unknown_step_option_is_a_config_error(tmp_path, scripted) -> None:
    with pytest.raises(ConfigError, match="similarity_treshold"):
        si.Pipeline(tmp_path, answering(scripted)).generate_instructions(3, similarity_treshold=0.5)
    assert not tmp_path.joinpath("run.json").exists()


def test_a_run_made_before_identities_is_checked_against_its_config(tmp_path, scripted) -> None:
    """run.json as earlier versions wrote it: the steps' config, no identity."""
    folder = si.RunFolder(tmp_path)
    tmp_path.joinpath("run.json").write_text(
        json.dumps({"config": {"instructions": {"similarity_threshold": 0.7, "model": "local"}}})
    )
    folder.instructions.write_text(json.dumps({"instruction": "An old instruction here."}) + "\n")
    with pytest.raises(si.RunIdentityError, match="similarity_threshold 0.3"):
        si.Pipeline(tmp_path, answering(scripted)).generate_instructions(
            3, similarity_threshold=0.3
        )


def test_report_and_sweep_take_the_runs_seeds_and_threshold(tmp_path, scripted, monkeypatch):
    from selfinstruct.report import build_report
    from selfinstruct.sweep import load_sweep_input

    run = tmp_path / "run"
    with si.Pipeline(run, answering(scripted), seeds=toy_seeds(12)) as p:
        p.generate_instructions(4, similarity_threshold=0.8)
    # From another working directory that has a seed file of its own under the copy's name.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    si.seeds.write_seed_tasks(toy_seeds(3), elsewhere / "seed_tasks.jsonl")
    monkeypatch.chdir(elsewhere)
    data = load_sweep_input("../run")
    assert (data.run_threshold, len(data.seeds)) == (0.8, 12)
    build_report("../run", parser="heuristic", sample_rows=2)
    stats = json.loads((run / "report" / "stats.json").read_text())
    assert (stats["rouge"]["seed_tasks"], stats["rouge"]["threshold"]) == (12, 0.8)
