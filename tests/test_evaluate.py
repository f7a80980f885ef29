"""Evaluation: scores equal rouge-score's, predictions resume by id, the release's prediction
files score and rank, and the release's own prompts are rebuilt exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from rouge_score import rouge_scorer

from selfinstruct.cli.train import evaluate_command
from selfinstruct.engine import EngineSettings
from selfinstruct.errors import ModelError
from selfinstruct.evaluation import (
    build_prompt,
    evaluate_model,
    format_table,
    release_prompt,
    score_file,
    score_records,
)
from selfinstruct.finetune.data import read_examples

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "self-instruct"
PREDICTIONS = SHARED / "human_eval_predictions"
USER_TASKS = SHARED / "user_oriented_instructions.jsonl"


def _release_files() -> list[Path]:
    if not USER_TASKS.exists() or not PREDICTIONS.is_dir():
        pytest.skip(f"{SHARED} absent: the original release's data lies beside the project only")
    files = sorted(PREDICTIONS.glob("*_predictions.jsonl"))
    assert len(files) == 8
    return files


def _tasks_file(tmp_path: Path, n: int = 6) -> Path:
    path = tmp_path / "tasks.jsonl"
    lines = [
        {
            "id": f"t{k}",
            "instruction": f"Repeat the word {k}.",
            "instances": [{"input": "" if k % 2 else f"word{k}", "output": f"word{k}"}],
        }
        for k in range(n)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_scores_are_rouge_score_figures_and_exact_match_strips() -> None:
    records = [
        {"response": " The cat sat on the mat.\n", "target": "The cat sat on the mat."},
        {"response": "A dog ran in the park", "target": "The dog ran to the park quickly"},
        {"response": "", "target": "something"},
    ]
    s = score_records(records, "x")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = [scorer.score(r["target"], r["response"])["rougeL"].fmeasure for r in records]
    assert s.n == 3
    assert s.rouge_l == pytest.approx(sum(expected) / 3, abs=1e-12)
    assert s.exact_match == pytest.approx(1 / 3)
    assert s.mean_length == pytest.approx((6 + 6 + 0) / 3)


def test_predictions_resume_by_id(tmp_path: Path, scripted) -> None:
    tasks = _tasks_file(tmp_path)
    out = tmp_path / "pred.jsonl"
    calls = 0

    def flaky(prompt: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise ModelError("the server went away")
        return prompt.split("word ")[-1].rstrip(".").join(["word", ""]).strip()

    first = scripted(flaky)
    with pytest.raises(ModelError):
        evaluate_model(first, tasks, out)
    answered = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert answered == ["t0", "t1", "t2"]
    # a torn last line, as a kill -9 leaves it, is repaired, not fatal
    with open(out, "a") as f:
        f.write('{"id": "t3", "prom')
    second = scripted(lambda p: "word" + p.split("word ")[-1].split(".")[0])
    result = evaluate_model(second, tasks, out)
    assert len(second.prompts) == 3  # only t3, t4, t5
    assert (result.resumed, result.generated, result.failed) == (3, 3, 0)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [f"t{k}" for k in range(6)]
    assert set(records[0]) >= {"prompt", "instruction", "input", "response", "target"}
    assert records[0]["prompt"] == "Repeat the word 0.\n\nword0"  # the user-turn format
    assert result.scores.n == 6


def test_release_prompt_format_and_engine_settings(tmp_path: Path, scripted) -> None:
    tasks = _tasks_file(tmp_path, 4)
    model = scripted(lambda p: " word")
    out = tmp_path / "release.jsonl"
    evaluate_model(model, tasks, out, prompt_format="release", engine=EngineSettings(concurrency=3))
    assert model.prompts[0] == "Repeat the word 0.\n\nInput: word0\nOutput:"
    assert model.prompts[1] == "Repeat the word 1.\nOutput:"


def test_release_prompts_are_rebuilt_exactly() -> None:
    files = _release_files()
    records = [json.loads(x) for x in files[0].read_text().splitlines()]
    examples = read_examples(USER_TASKS)
    assert len(examples) == len(records) == 252
    for example, record in zip(examples, records, strict=True):
        assert build_prompt(example, "release") == record["prompt"]
        assert example.output == record["target"].strip()
    assert release_prompt("Do it. ", "") == "Do it.\nOutput:"


def test_released_models_rank_by_rouge_l(capsys) -> None:
    files = _release_files()
    scores = [score_file(f) for f in files]
    assert all(s.n == 252 for s in scores)
    by_name = {Path(s.name).name.removesuffix("_predictions.jsonl"): s for s in scores}
    # the paper's story: instruction tuning (ours or InstructGPT's) beats vanilla GPT-3 davinci
    assert by_name["davinci-self-instruct"].rouge_l > by_name["davinci"].rouge_l
    assert by_name["text-davinci-003"].rouge_l > by_name["davinci"].rouge_l
    result = CliRunner().invoke(evaluate_command, ["--compare", *map(str, files)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "file", "n"]
    ranked = [line.split()[1] for line in lines[2:]]
    assert ranked == [Path(s.name).name for s in sorted(scores, key=lambda s: -s.rouge_l)]
    with capsys.disabled():
        print("\n" + format_table(scores, ranked=True))


def test_cli_modes(tmp_path: Path) -> None:
    pred = tmp_path / "p.jsonl"
    pred.write_text(
        json.dumps(
            {
                "id": "a",
                "prompt": "p",
                "instruction": "i",
                "input": "",
                "response": "yes",
                "target": "yes",
            }
        )
        + "\n"
    )
    runner = CliRunner()
    ok = runner.invoke(evaluate_command, ["--predictions", str(pred), "--format", "json"])
    assert ok.exit_code == 0
    assert json.loads(ok.stdout) == [
        {
            "file": str(pred),
            "n": 1,
            "rouge_l": 1.0,
            "exact_match": 1.0,
            "mean_length": 1.0,
        }
    ]
    both = runner.invoke(evaluate_command, ["--predictions", str(pred), "--compare", str(pred)])
    assert both.exit_code != 0 and "choose one mode" in str(both.exception)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "output": "x"}\n')
    failed = runner.invoke(evaluate_command, ["--predictions", str(bad)])
    assert failed.exit_code != 0 and "lacks a 'response'" in str(failed.exception)


@pytest.mark.slow
def test_local_specs_answer_through_the_chat_template(tmp_path: Path) -> None:
    from selfinstruct.evaluation import load_answering_model

    model = load_answering_model("local")
    assert model.info.api == "chat"
    assert load_answering_model("local?api=completions").info.api == "completions"
    assert load_answering_model("local", prompt_format="release").info.api == "completions"
