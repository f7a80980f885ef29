"""The forecast before paying: from the paper's yields with no model call, or from a pilot's;
checked against what the run then does on the loopback server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import selfinstruct as si
from selfinstruct import forecast

pytest.importorskip("aiohttp")

try:
    from tests.servers.openai_fault_server import running_fault_server
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from servers.openai_fault_server import running_fault_server

MODEL = "openai:fault-server-model?api=completions"
#: how far the run may land from a pilot's forecast (requests, tokens, cost)
TOLERANCE = 0.25


def test_estimate_makes_no_model_call_and_says_where_its_yields_come_from(
    tmp_path: Path,
) -> None:
    # A server that is not there: any model call would fail.
    result = subprocess.run(
        [sys.executable, "-c", "from selfinstruct.cli import main; main()", "estimate",
         "--out", str(tmp_path), "--num-instructions", "52445", "--model", MODEL,
         "--base-url", "http://127.0.0.1:9/v1", "--price", "0.15,0.60", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "Table 1" in data["yields"]["source"]
    assert set(data["steps"]) == {"instructions", "classify", "instances"}
    assert data["steps"]["classify"]["requests"] == -(-52445 // 5)
    # The paper's 82,439 instances for 52,445 instructions.
    assert data["training_examples"] == 82439
    assert data["cost_usd_batch"] == pytest.approx(data["cost_usd_online"] / 2, rel=0.05)
    assert json.loads((tmp_path / "forecast.json").read_text()) == data


def test_one_step_and_a_batch_price(tmp_path: Path) -> None:
    seeds = si.seeds.default()
    f = forecast.estimate(
        seeds, num_instructions=1000, model_spec="openai:gpt-4o-mini", steps=("classify",),
        price=(1.0, 1.0), batch_price=(0.2, 0.2),
    )  # fmt: skip
    assert [s.step for s in f.steps] == ["classify"]
    assert f.steps[0].requests == 1000  # a chat model: one prompt a request
    assert f.cost(batch=True) == pytest.approx(f.cost() * 0.2)


def test_a_pilot_forecast_matches_the_run_within_the_tolerance(tmp_path: Path) -> None:
    with running_fault_server(seed=4, vary_repeats=False, latency=0.3) as srv:
        run = si.Pipeline(
            tmp_path / "run",
            MODEL,
            base_url=srv.base_url,
            api_key="k",
            engine=si.EngineSettings(concurrency=4),
            price=(1.0, 2.0),
        )
        with run:
            f = run.estimate(300, pilot=4)
            run.run(300, prepare={"decontaminate": []})
    assert f.yields.source.startswith("a pilot of 4 requests")
    assert (tmp_path / "run" / "pilot" / "run.json").exists()
    actual = json.loads((tmp_path / "run" / "run.json").read_text())
    for s in f.steps:
        usage = actual["steps"][s.step]["usage"]
        for ours, theirs in (
            (s.requests, usage["requests"]),
            (s.prompt_tokens, usage["prompt_tokens"]),
            (s.completion_tokens, usage["completion_tokens"]),
        ):
            assert ours == pytest.approx(theirs, rel=TOLERANCE), (s.step, ours, theirs)
    assert f.cost() == pytest.approx(actual["cost_usd"], rel=TOLERANCE)
    made = actual["steps"]["prepare"]["counts"]["generated_instances"]
    assert f.training_examples == pytest.approx(made, rel=TOLERANCE)
    # `report` shows the forecast beside what the run did.
    from selfinstruct.report import build_report

    result = build_report(tmp_path / "run", parser="heuristic")
    rows = result.stats["forecast_beside_actual"]
    assert ["classify: requests", 60, 60] in rows
    assert "Forecast beside actual" in result.html.read_text()


def test_forecast_beside_actual_pairs_what_both_files_have() -> None:
    plan = {
        "steps": {"classify": {"requests": 10, "prompt_tokens": 100, "completion_tokens": 10}},
        "batch_steps": {
            "classify": {"requests": 12, "prompt_tokens": 120, "completion_tokens": 12}
        },
        "training_examples": 50,
        "cost_usd_online": 1.0,
        "cost_usd_batch": 0.5,
    }
    run = {
        "steps": {
            "classify": {"usage": {"requests": 11, "prompt_tokens": 90, "completion_tokens": 9}},
            "prepare": {"counts": {"generated_instances": 40}},
        },
        "cost_usd": 0.9,
    }
    rows = forecast.beside_actual(plan, run)
    assert rows[0] == ("classify: requests", 10, 11)
    assert ("training examples", 50, 40) in rows
    assert rows[-1] == ("cost, USD (online)", 1.0, 0.9)
    run["steps"]["classify"]["batch"] = {"batches_created": 1}
    assert forecast.beside_actual(plan, run)[0] == ("classify: requests", 12, 11)
