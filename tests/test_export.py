"""Publishing a run: the exported folder read back by `datasets` (every config and split, counts
equal to run.json), the dataset card checked, a push to a loopback Hub that records the calls
`huggingface_hub` makes, the trainer formats, and a fine-tune from the exported folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import selfinstruct as si
from selfinstruct.records import example_key

try:
    from tests.helpers import WORDS
    from tests.servers.hub_server import HubServer
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from helpers import WORDS
    from servers.hub_server import HubServer

pytest.importorskip("pyarrow")
pytest.importorskip("datasets")
pytest.importorskip("huggingface_hub")

# `datasets` and huggingface_hub must never reach the network from a test.
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
EVAL_TASK = "Explain the rules of chess to a child who has never played a board game before."
N_INSTRUCTIONS = 12


def _answer(counter: iter) -> callable:
    """A scripted model for the four steps: new instructions (with planted rejects), labels,
    and two instances a task."""

    def answer(prompt: str) -> str:
        if "Is it classification?" in prompt:
            return " Yes" if "Sort" in prompt.rsplit("Task:", 1)[-1] else " No"
        if prompt.startswith("Come up with a series"):
            n = next(counter)
            if n % 5 == 4:
                return " Draw a picture of the ocean at night with many boats"  # image filter
            if n == 7:
                return f" {EVAL_TASK}"
            a, b, c = (WORDS[(n * 3 + k) % len(WORDS)] for k in range(3))
            verb = "Sort" if n % 3 == 0 else "Describe"
            return f" {verb} the {a} {b} and {c} number {n} for a curious reader"
        task = prompt.rsplit("Task:", 1)[-1].strip()
        tag = abs(hash(task)) % 10_000
        if "Class label:" in prompt:
            return f"Class label: Low\nItem: pebble {tag}\nClass label: High\nItem: tower {tag}"
        return (
            f"Example 1\nInput: first case {tag}\nOutput: answer one {tag}\n\n"
            f"Example 2\nInput: second case {tag}\nOutput: answer two {tag}"
        )

    return answer


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> si.RunFolder:
    """A real run of the four steps on a scripted model, then judged in part and prepared again
    with an evaluation set that one instruction copies (so it is decontaminated)."""
    folder = tmp_path_factory.mktemp("run")
    counter = iter(range(10_000))
    with si.Pipeline(folder, si.ScriptedModel(_answer(counter)), price=(1, 2)) as p:
        p.run(num_instructions=N_INSTRUCTIONS, include_seed_tasks=False)
    rf = si.RunFolder(folder)
    examples = [json.loads(x) for x in rf.all_instances.read_text().splitlines()]
    with open(rf.judgments_file, "w") as f:
        for i, e in enumerate(examples[::2]):
            key = example_key(e["instruction"], e["input"], e["output"])
            f.write(json.dumps({"key": key, "rating": "ABCD"[i % 4], "model": "judge"}) + "\n")
    eval_set = folder.parent / "eval.jsonl"
    item = {"id": "e1", "instruction": EVAL_TASK, "instances": [{"input": "", "output": "x"}]}
    eval_set.write_text(json.dumps(item) + "\n")
    si.Pipeline(folder).prepare(decontaminate=[eval_set])
    return rf


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from selfinstruct.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE, **(env or {})},
        timeout=300,
    )


def _load(folder: Path, *configs: str, cache: Path) -> dict[str, dict[str, list[dict]]]:
    """`datasets.load_dataset(folder)` (no arguments), then each of `configs` by name, in a
    fresh process, offline, as a user would call it: {config or "": {split: rows}}."""
    code = (
        "import json, sys, datasets\n"
        "out = {}\n"
        "for args in [[sys.argv[1]]] + [[sys.argv[1], c] for c in sys.argv[2:]]:\n"
        f"    d = datasets.load_dataset(*args, cache_dir={str(cache)!r})\n"
        "    out[args[1] if len(args) > 1 else ''] = {s: d[s].to_list() for s in d}\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder), *configs],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE, "HF_HOME": str(cache)},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def loaded(exported: Path) -> dict[str, dict[str, list[dict]]]:
    configs = ("default", "instructions", "instances", "rejected")
    return _load(exported, *configs, cache=exported.parent / "cache")


@pytest.fixture(scope="module")
def exported(run: si.RunFolder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "dataset"
    result = _cli("export", str(run.path), "--to", str(out), "--license", "cc-by-4.0",
                  "--test-size", "0.25", "--seed", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    return out


def test_load_dataset_reads_every_config_and_split_with_the_run_counts(
    run: si.RunFolder, loaded: dict
) -> None:
    record = json.loads(run.run_file.read_text())
    steps = record["steps"]
    default = loaded[""]  # no arguments: the default config
    assert default == loaded["default"]
    assert set(default) == {"train", "test"}
    rows = default["train"] + default["test"]
    assert len(rows) == steps["prepare"]["counts"]["generated_instances"]
    local = [json.loads(x) for x in run.all_instances.read_text().splitlines()]
    assert sorted(json.dumps(r, sort_keys=True) for r in rows) == sorted(
        json.dumps({**r, "rating": r.get("rating")}, sort_keys=True) for r in local
    )
    train_tasks = {r["instruction"] for r in default["train"]}
    test_tasks = {r["instruction"] for r in default["test"]}
    assert train_tasks and test_tasks and not train_tasks & test_tasks
    assert len(test_tasks) == round(0.25 * len(train_tasks | test_tasks))
    assert {r["rating"] for r in rows} >= {"A", "B", None}
    assert EVAL_TASK not in train_tasks | test_tasks  # decontaminated

    pool = loaded["instructions"]["train"]
    assert len(pool) == steps["instructions"]["counts"]["instructions_in_file"] == N_INSTRUCTIONS
    first = pool[1]
    assert set(first) == {"instruction", "most_similar", "avg_similarity_score",
                          "request_idx", "candidate_idx"}  # fmt: skip
    assert first["most_similar"] and set(first["most_similar"][0]) == {"instruction", "rouge_l"}

    rejected = loaded["rejected"]["train"]
    assert len(rejected) == sum(steps["instructions"]["dropped"].values()) > 0
    assert {r["reason"] for r in rejected} == set(steps["instructions"]["dropped"])

    instances = loaded["instances"]["train"]
    assert len(instances) == 2 * steps["instances"]["counts"]["in_file"]
    labels = {r["instruction"]: r["is_classification"] for r in instances}
    assert sum(labels.values()) == steps["classify"]["counts"]["yes"] > 0


def test_the_card_is_valid_metadata_and_tells_how_the_data_was_made(
    run: si.RunFolder, exported: Path
) -> None:
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(exported / "README.md", repo_type="dataset")
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-4.0"
    assert meta["language"] == ["en"]
    assert {"synthetic", "self-instruct"} <= set(meta["tags"])
    assert meta["annotations_creators"] == ["machine-generated"]
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"default", "instructions", "instances", "rejected"}
    assert configs["default"]["default"] is True
    info = {c["config_name"]: c for c in meta["dataset_info"]}
    splits = {s["name"]: s["num_examples"] for s in info["default"]["splits"]}
    record = json.loads(run.run_file.read_text())
    assert sum(splits.values()) == record["steps"]["prepare"]["counts"]["generated_instances"]
    text = card.text
    for needle in (
        "scripted",  # the model
        "Apache-2.0",  # the built-in seed tasks' license
        "## From seed tasks to examples",
        "too_similar" if "too_similar" in record["steps"]["instructions"]["dropped"] else "image",
        "decontaminated_",
        "| A |",  # the judge's grades
        "Cost: $",
        "2212.10560",
        "## Limitations",
        "run.json",
    ):
        assert needle in text, needle
    for figure in re.findall(r"\]\((figures/[^)]+)\)", text):
        assert (exported / figure).is_file(), figure
    assert (exported / "run.json").read_text() == run.run_file.read_text()


def test_license_is_required_and_nothing_is_written(run: si.RunFolder, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = _cli("export", str(run.path), "--to", str(out))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--license" in result.stderr
    assert not out.exists()


def test_export_replaces_an_earlier_export_but_not_another_folder(
    run: si.RunFolder, tmp_path: Path
) -> None:
    from selfinstruct.export import export_dataset

    out = tmp_path / "ds"
    export_dataset(run, out, license="mit", test_size=2, figures=False)
    assert (out / "data/default/test-00000-of-00001.parquet").exists()
    export_dataset(run, out, license="mit", figures=False)  # no test split now
    assert not (out / "data/default/test-00000-of-00001.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no staging folder left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(si.ConfigError, match="not a dataset folder"):
        export_dataset(run, other, license="mit", figures=False)
    assert (other / "todo.txt").read_text() == "mine"


def test_a_config_without_rows_is_left_out(run: si.RunFolder, tmp_path: Path) -> None:
    """`datasets` cannot load an empty split: a run that rejected nothing has no `rejected`."""
    import shutil

    from huggingface_hub import DatasetCard

    from selfinstruct.export import export_dataset

    copy = si.RunFolder(shutil.copytree(run.path, tmp_path / "run"))
    copy.rejected.write_text("")
    out = export_dataset(copy, tmp_path / "ds", license="mit", figures=False).folder
    card = DatasetCard.load(out / "README.md", repo_type="dataset")
    configs = [c["config_name"] for c in card.data.to_dict()["configs"]]
    assert configs == ["default", "instructions", "instances"]
    assert "no `rejected` config" in card.text
    assert not (out / "data" / "rejected").exists()


def test_split_is_seeded_and_keeps_tasks_whole() -> None:
    from selfinstruct.export.tables import split_by_instruction

    rows = [{"instruction": f"task {i // 3}", "n": i} for i in range(60)]
    a = split_by_instruction(rows, 0.2, seed=1)
    assert split_by_instruction(rows, 0.2, seed=1) == a
    assert split_by_instruction(rows, 0.2, seed=2) != a
    assert len({r["instruction"] for r in a["test"]}) == 4
    assert not {r["instruction"] for r in a["test"]} & {r["instruction"] for r in a["train"]}
    assert len(split_by_instruction(rows, 5, seed=1)["test"]) == 15
    with pytest.raises(si.ConfigError, match="nothing to train"):
        split_by_instruction(rows, 20, seed=1)


# --- the Hub ----------------------------------------------------------------------------------


def _push(run: si.RunFolder, hub: HubServer, home: Path, *extra: str):
    env = {"HF_ENDPOINT": hub.base_url, "HF_TOKEN": hub.token, "HF_HOME": str(home)}
    env["HF_HUB_OFFLINE"] = "0"
    return _cli("export", str(run.path), "--to", "hub", "me/self-instruct",
                "--license", "mit", "--no-figures", *extra, env=env)  # fmt: skip


def _api_calls(hub: HubServer) -> list[str]:
    # huggingface_hub also asks once a day which coding agent runs it: not part of a push
    return [c for c in hub.paths() if not c.endswith("/api/agent-harnesses")]


def test_push_uploads_the_folder_in_one_commit_and_prints_the_url(
    run: si.RunFolder, tmp_path: Path
) -> None:
    with HubServer() as hub:
        result = _push(run, hub, tmp_path / "home", "--private")
        assert result.returncode == 0, result.stderr
        repo = hub.repos["me/self-instruct"]
        assert result.stdout.strip() == f"{hub.base_url}/datasets/me/self-instruct"
        assert hub.token not in result.stdout + result.stderr
    assert _api_calls(hub) == [
        "POST /api/repos/create",
        "HEAD /datasets/me/self-instruct/resolve/main/README.md",
        "GET /api/datasets/me/self-instruct/tree/main",
        "POST /api/validate-yaml",
        "POST /api/datasets/me/self-instruct/preupload/main",
        "POST /api/datasets/me/self-instruct/commit/main",
    ]
    assert repo.private and len(repo.commits) == 1
    assert {"README.md", "run.json", "data/default/train-00000-of-00001.parquet",
            "data/instructions/train-00000-of-00001.parquet"} <= set(repo.files)  # fmt: skip
    assert b"license: mit" in repo.files["README.md"]


def test_push_keeps_metadata_a_user_edited_on_the_hub(run: si.RunFolder, tmp_path: Path) -> None:
    with HubServer() as hub:
        assert _push(run, hub, tmp_path / "home").returncode == 0
        card = hub.repos["me/self-instruct"].files["README.md"].decode()
        edited = card.replace("license: mit", "license: cc-by-sa-4.0").replace(
            "tags:\n", "tags:\n- my-own-tag\n"
        )
        hub.add_file("me/self-instruct", "README.md", edited.encode())
        hub.add_file("me/self-instruct", "data/default/test-00000-of-00001.parquet", b"stale")
        commits = len(hub.repos["me/self-instruct"].commits)
        result = _push(run, hub, tmp_path / "home")
        assert result.returncode == 0, result.stderr
        repo = hub.repos["me/self-instruct"]
    assert len(repo.commits) == commits + 1  # one commit for the whole push
    assert "kept license" in result.stderr
    card = repo.files["README.md"].decode()
    assert "license: cc-by-sa-4.0" in card and "- my-own-tag" in card and "- synthetic" in card
    assert "config_name: instructions" in card  # the data's own metadata is this export's
    assert "data/default/test-00000-of-00001.parquet" not in repo.files  # stale data removed


def test_push_without_a_token_says_how_to_get_one(run: si.RunFolder, tmp_path: Path) -> None:
    with HubServer() as hub:
        env = {"HF_ENDPOINT": hub.base_url, "HF_HOME": str(tmp_path / "home"), "HF_TOKEN": ""}
        result = _cli("export", str(run.path), "--to", "hub", "me/x", "--license", "mit",
                      "--no-figures", env={**env, "HF_HUB_OFFLINE": "0"})  # fmt: skip
    assert result.returncode == 2 and "HF_TOKEN" in result.stderr
    assert not _api_calls(hub)


def test_a_refused_token_is_one_line(run: si.RunFolder, tmp_path: Path) -> None:
    with HubServer(token="the-right-one") as hub:
        env = {"HF_ENDPOINT": hub.base_url, "HF_HOME": str(tmp_path / "h"), "HF_TOKEN": "wrong"}
        result = _cli("export", str(run.path), "--to", "hub", "me/x", "--license", "mit",
                      "--no-figures", env={**env, "HF_HUB_OFFLINE": "0"})  # fmt: skip
    assert result.returncode == 6
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: hub: me/x: the Hub refused the token (HTTP 401)")
    assert "wrong" not in result.stderr


def test_an_unreachable_hub_is_one_line(run: si.RunFolder, tmp_path: Path) -> None:
    from conftest import free_port

    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_TOKEN": "t", "HF_HUB_OFFLINE": "0"}
    result = _cli("export", str(run.path), "--to", "hub", "me/x", "--license", "mit",
                  "--no-figures", "--quiet", env={**env, "HF_HOME": str(tmp_path)})  # fmt: skip
    assert result.returncode == 6
    assert result.stderr.startswith("error: hub: me/x: cannot reach http://127.0.0.1:")
    assert result.stderr.count("\n") == 1


# --- trainers ---------------------------------------------------------------------------------


def test_every_trainer_format_reads_back_as_the_same_examples(run: si.RunFolder) -> None:
    from selfinstruct.finetune import read_examples
    from selfinstruct.formats import EXAMPLE_FORMATS

    def triples(path: Path) -> list[tuple]:
        return [(e.instruction, e.input, e.output) for e in read_examples(path)]

    expected = triples(run.alpaca)
    assert len(expected) > 10
    for fmt in EXAMPLE_FORMATS:
        assert triples(run.example_file(fmt)) == expected, fmt
    trl = json.loads(run.example_file("trl").read_text().splitlines()[0])
    assert [m["role"] for m in trl["prompt"]] == ["user"]
    assert [m["role"] for m in trl["completion"]] == ["assistant"]
    share = json.loads(run.example_file("sharegpt").read_text().splitlines()[0])
    assert [t["from"] for t in share["conversations"]] == ["human", "gpt"]


def test_finetune_reads_the_exported_folder(exported: Path, loaded: dict) -> None:
    from selfinstruct.finetune import read_examples

    train = loaded[""]["train"]
    examples = read_examples(exported)
    assert [(e.instruction, e.input, e.output) for e in examples] == [
        (r["instruction"], r["input"], r["output"]) for r in train
    ]


@pytest.mark.slow
def test_finetune_round_trip_from_the_exported_folder(
    exported: Path, loaded: dict, tmp_path: Path
) -> None:
    pytest.importorskip("peft")
    out = tmp_path / "ft"
    result = _cli("finetune", str(exported), "--out", str(out), "--epochs", "1",
                  "--batch-size", "4", "--eval-fraction", "0", "--threads", "1",
                  "--max-train-tokens", "200", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "finetune.json").read_text())
    assert report["data"]["train"] == len(loaded[""]["train"])
    assert (out / "adapter.gguf").is_file()
