"""End to end on real models: the embedded one in-process, and the same model served over the
OpenAI API by llama.cpp's server on loopback (both the completions and the chat API)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli
from rouge_score import rouge_scorer

from selfinstruct.io import read_jsonl
from selfinstruct.seeds import default as default_seeds

pytestmark = pytest.mark.slow


def selfinstruct(*args: str, env: dict | None = None, timeout: float = 900):
    return run_cli(*args, env=env, timeout=timeout)


def check_run_folder(out: Path, n: int, seed_instructions: list[str]) -> dict:
    instructions = read_jsonl(out / "machine_generated_instructions.jsonl")
    assert len(instructions) == n
    for r in instructions:
        assert set(r) == {
            "instruction",
            "most_similar",
            "avg_similarity_score",
            "metadata",
            "request_idx",
            "candidate_idx",
        }
        assert 0 <= r["avg_similarity_score"] <= 1
    texts = [r["instruction"] for r in instructions]
    assert len(set(texts)) == n
    # Every kept instruction truly has ROUGE-L <= 0.7 to all others, by rouge-score itself.
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for i, text in enumerate(texts):
        others = seed_instructions + texts[:i]
        worst = max(scorer.score(o, text)["rougeL"].fmeasure for o in others)
        assert worst <= 0.7, (text, worst)
    labels = list(out.glob("is_clf_or_not_*_template_1.jsonl"))
    assert len(labels) == 1
    assert {r["instruction"] for r in read_jsonl(labels[0])} == set(texts)
    instances = read_jsonl(out / "machine_generated_instances.jsonl")
    assert {r["instruction"] for r in instances} == set(texts)
    ft = out / "finetuning_data"
    assert (ft / "all_generated_instances.jsonl").exists()
    gpt3 = list(ft.glob("gpt3_finetuning_data_*.jsonl"))
    assert len(gpt3) == 1
    rows = read_jsonl(gpt3[0])
    assert rows and all(set(r) == {"prompt", "completion"} for r in rows)
    assert (ft / "openai_chat_finetuning_data.jsonl").exists()
    assert isinstance(json.loads((ft / "alpaca_data.json").read_text()), list)
    run = json.loads((out / "run.json").read_text())
    assert set(run["steps"]) == {"instructions", "classify", "instances", "prepare"}
    assert run["usage"]["total_tokens"] > 0
    return run


def test_run_on_the_embedded_model(tmp_path):
    out = tmp_path / "demo"
    result = selfinstruct("run", "--out", str(out), "--num-instructions", "10", "--quiet")
    assert result.returncode == 0, result.stderr
    run = check_run_folder(out, 10, [t.instruction for t in default_seeds()])
    assert run["model"]["backend"] == "local"
    assert run["model"]["name"].startswith("SmolLM2-135M-Instruct")


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_run_on_an_openai_compatible_server(tmp_path, llama_server, api):
    out = tmp_path / api
    secret = "sk-test-never-stored-0123456789"
    result = selfinstruct(
        "run",
        "--out",
        str(out),
        "--num-instructions",
        "6",
        "--max-instances",
        "2",
        "--model",
        f"openai:smollm2?api={api}",
        "--base-url",
        llama_server,
        "--api-key",
        secret,
        "--concurrency",
        "2",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    run = check_run_folder(out, 6, [t.instruction for t in default_seeds()])
    assert run["model"] == {
        "backend": "openai",
        "name": "smollm2",
        "api": api,
        "base_url": llama_server,
    }
    for path in out.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path
    assert secret not in result.stderr + result.stdout
