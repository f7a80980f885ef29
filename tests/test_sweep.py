"""`selfinstruct sweep`: step 1's similarity filter replayed at other thresholds."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from click.testing import CliRunner
from rouge_score import rouge_scorer

from selfinstruct.cli import cli
from selfinstruct.engine import EngineSettings
from selfinstruct.errors import ConfigError
from selfinstruct.records import Instance, SeedTask
from selfinstruct.runfile import RunFile
from selfinstruct.runfolder import RunFolder
from selfinstruct.seeds import write_seed_tasks
from selfinstruct.steps import StepContext
from selfinstruct.steps.instructions import InstructionSettings, generate_instructions
from selfinstruct.sweep import load_sweep_input, parse_thresholds, sweep

pytest.importorskip("aiohttp")
try:
    from tests.servers.openai_fault_server import ContentGenerator
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from servers.openai_fault_server import ContentGenerator

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def seeds(n: int = 20) -> list[SeedTask]:
    content = ContentGenerator(99)
    rng = random.Random(99)
    return [
        SeedTask(
            id=f"seed_task_{i}",
            name=f"seed_{i}",
            instruction=content.instruction(rng),
            instances=(Instance("", "An answer."),),
            is_classification=i % 2 == 0,
        )
        for i in range(n)
    ]


def answers(seed: int = 0):
    """Five new instructions from the fault server's generator, one of them often a prompt
    instruction with a few words changed: a spread of similarities around any threshold."""
    content = ContentGenerator(seed)
    rng = random.Random(seed)

    def answer(prompt: str) -> str:
        items = [content.instruction(rng) for _ in range(5)]
        listed = [line.split(". ", 1)[1] for line in prompt.split("\n")[1:9]]
        for k in rng.sample(range(5), 2):
            words = rng.choice(listed).split()
            for _ in range(rng.randint(1, 5)):
                words[rng.randrange(len(words))] = content.instruction(rng).split()[-1]
            items[k] = " ".join(words)
        return " " + "\n".join(f"{k + 9}. {t}" if k else t for k, t in enumerate(items))

    return answer


def make_run(
    tmp_path, scripted, *, n=80, threshold=0.7, seed_tasks=None, argv=None, seed_file=None, **extra
):
    seed_tasks = seed_tasks or seeds()
    settings = InstructionSettings(num_instructions=n, similarity_threshold=threshold, **extra)
    model = scripted(answers())
    ctx = StepContext(model=model, engine=EngineSettings(concurrency=4))
    report = generate_instructions(ctx, seed_tasks, tmp_path, settings)
    config = dataclasses.asdict(settings)
    config["sampling"]["stop"] = list(config["sampling"]["stop"])
    config["seed_tasks"] = None if seed_file is None else str(seed_file)  # as Pipeline records
    RunFile(tmp_path).record_step(
        report, command="generate-instructions", config=config, model=model.info, seed=42
    )
    if argv is not None:
        data = json.loads(RunFolder(tmp_path).run_file.read_text())
        data["argv"] = argv
        RunFolder(tmp_path).run_file.write_text(json.dumps(data))
    return report


def brute_force(candidates: list[str], pool: list[str], threshold: float) -> list[int]:
    """Greedy filter with rouge-score itself: each candidate against every text kept so far."""
    pool = list(pool)
    kept = []
    for i, text in enumerate(candidates):
        if all(SCORER.score(p, text)["rougeL"].fmeasure <= threshold for p in pool):
            kept.append(i)
            pool.append(text)
    return kept


def kept_texts(tmp_path) -> list[str]:
    return [r["instruction"] for r in RunFolder(tmp_path).read_instructions()]


def test_at_the_run_threshold_the_replay_is_the_run(tmp_path, scripted):
    seed_file = tmp_path / "my_seeds.jsonl"
    write_seed_tasks(seeds(), seed_file)
    run = tmp_path / "run"
    report = make_run(
        run,
        scripted,
        threshold=0.6,
        seed_file=seed_file,
    )
    assert report.dropped["too_similar"] >= 20
    data = load_sweep_input(run)
    assert data.run_threshold == 0.6 and data.target == 80
    assert data.seed_source.startswith(str(seed_file))
    (row,) = sweep(run, [0.6])
    assert row.is_run_threshold
    assert row.kept == row.run_kept == 80 and row.added == row.removed == 0
    assert row.candidates == 80 + report.dropped["too_similar"]
    kept = [t for t, k in zip(data.candidates, data.kept_by_run, strict=True) if k]
    assert kept == kept_texts(run)
    assert row.to_target == row.candidates  # the run stopped at its target
    # Other seeds give another replay: the check has teeth.
    (other,) = sweep(run, [0.6], seeds=[s.instruction for s in seeds()[:3]])
    assert other.added > 0


def test_sweep_against_rouge_score_brute_force(tmp_path, scripted):
    make_run(tmp_path, scripted, n=40)
    data = load_sweep_input(tmp_path, seeds=seeds())
    thresholds = [0.3, 0.5, 0.7, 0.9]
    for row in sweep(tmp_path, thresholds, seeds=seeds()):
        kept = brute_force(data.candidates, data.seeds, row.threshold)
        assert row.kept == len(kept), row
        assert row.removed == sum(1 for i, k in enumerate(data.kept_by_run) if k and i not in kept)


def test_kept_count_grows_with_the_threshold_on_a_real_run(tmp_path, scripted):
    make_run(tmp_path, scripted, n=120)
    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    rows = sweep(tmp_path, thresholds, seeds=seeds())
    kept = [r.kept for r in rows]
    assert kept == sorted(kept)
    assert kept[0] < kept[4] < kept[-1] == rows[-1].candidates  # 1.0 keeps all but copies
    assert rows[4].is_run_threshold and rows[4].kept == 120
    assert rows[-1].to_target is not None and rows[-1].to_target < rows[4].to_target
    assert rows[0].to_target is None  # 0.3 never reaches 120 with these candidates


def test_greedy_is_not_monotone_in_general(tmp_path):
    """What docs/sweep.md warns about: keeping more early can block more later."""
    b = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima"
    a = "alpha bravo golf hotel mango nectar olive pepper"  # 0.4 to b, 0.29 to c and d
    c = "alpha bravo charlie delta echo foxtrot"  # 0.67 to b
    d = "golf hotel india juliet kilo lima"  # 0.67 to b, 0 to c
    rf = RunFolder(tmp_path)
    rows = [{"instruction": t, "candidate_idx": k} for k, t in enumerate([a, b])]
    rf.instructions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rejected = [
        {"instruction": t, "reason": "too_similar", "request_idx": 0, "candidate_idx": k}
        for k, t in [(2, c), (3, d)]
    ]
    rf.rejected.write_text("".join(json.dumps(r) + "\n" for r in rejected))
    rf.run_file.write_text(json.dumps({"config": {"instructions": {"similarity_threshold": 0.6}}}))
    low, own = sweep(tmp_path, [0.3, 0.6], seeds=["zulu yankee xray"])
    assert (own.kept, own.added, own.removed) == (2, 0, 0)
    assert low.kept == 3  # a, c, d: more than at 0.6
    assert len(brute_force([a, b, c, d], ["zulu yankee xray"], 0.3)) == 3


def test_classification_only_runs_replay_with_classification_seeds(tmp_path, scripted):
    make_run(tmp_path, scripted, n=30, classification_only=True)
    data = load_sweep_input(tmp_path, seeds=seeds())
    assert data.seeds == [s.instruction for s in seeds() if s.is_classification]
    (row,) = sweep(tmp_path, [0.7], seeds=seeds())
    assert row.added == row.removed == 0


def test_a_missing_recorded_seed_file_is_an_error(tmp_path, scripted):
    make_run(tmp_path, scripted, n=5)
    data = json.loads(RunFolder(tmp_path).run_file.read_text())
    data["config"]["instructions"]["seed_tasks"] = "gone.jsonl"
    RunFolder(tmp_path).run_file.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="gone.jsonl"):
        sweep(tmp_path, [0.7])


def test_the_seed_file_comes_from_the_config_never_the_command_line(tmp_path, scripted):
    make_run(tmp_path, scripted, n=5, argv=["run", "--seed-tasks=gone.jsonl"])
    assert load_sweep_input(tmp_path).seed_source == "the default seed set"


def test_thresholds_option():
    assert parse_thresholds("0.5,0.6, 0.8") == [0.5, 0.6, 0.8]
    for bad in ("0.5,x", "1.5", ""):
        with pytest.raises(ConfigError, match="`thresholds`"):
            parse_thresholds(bad)


def test_cli_prints_one_line_a_threshold_and_marks_the_run(tmp_path, scripted):
    seed_file = tmp_path / "seeds.jsonl"
    write_seed_tasks(seeds(), seed_file)
    run = tmp_path / "run"
    make_run(run, scripted, n=30)
    args = ["sweep", str(run), "--thresholds", "0.5,0.9", "--seed-tasks", str(seed_file)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{run}: threshold 0.7, 30 kept of target 30;")
    rows = [line.split() for line in lines[3:6]]
    assert [r[0] for r in rows] == ["0.5", "0.7*", "0.9"]
    assert rows[1][1:5] == ["30", "+0", "0", "0"]
    assert "never generated" in CliRunner().invoke(cli, ["sweep", "--help"]).output
    result = CliRunner().invoke(cli, [*args, "--format", "json"])
    objects = [json.loads(line) for line in result.output.splitlines()]
    assert [o["threshold"] for o in objects] == [0.5, 0.7, 0.9]
