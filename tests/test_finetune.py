"""Fine-tuning: every data format reads the same, the GGUF adapter's layout, and the whole loop
on the real embedded model (fine-tune a LoRA, answer through llama.cpp with the adapter)."""

from __future__ import annotations

import importlib.util
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from selfinstruct.errors import DataFileError
from selfinstruct.finetune.data import (
    Example,
    read_examples,
    split_examples,
)
from selfinstruct.finetune.export import permute_rows, read_gguf_header
from selfinstruct.formats import (
    TEMPLATES_WITH_INPUT,
    TEMPLATES_WITHOUT_INPUT,
    chat_record,
    encode,
    split_prompt,
)

TRAINING_STACK = ("torch", "transformers", "peft", "gguf")


def _require_training_stack() -> None:
    missing = [m for m in TRAINING_STACK if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: pip install 'selfinstruct[finetune]'"
            " (CI installs it, so this runs there)"
        )


# --- formats ---------------------------------------------------------------------------------

TRIPLES = [
    ("Add the two numbers.", "12 + 30", "42"),
    (
        "Write a haiku about autumn.",
        "",
        "Leaves fall slowly down\nthe quiet river carries\nred into the dusk",
    ),
    ("Reverse the order of the words.", "red green blue", "blue green red"),
    ("Name the capital of the country.", "France", "Paris"),
    ("Give three tips for staying healthy.", "", "1. Eat well.\n2. Sleep.\n3. Move."),
    ("Translate to French.", "Good morning, my friend.", "Bonjour, mon ami."),
    ("Classify the sentiment of the review.", "I loved every minute of it", "Positive"),
    (
        "Summarize the paragraph in one sentence.",
        "The cat sat.\nThe dog barked.",
        "Pets made noise.",
    ),
]


def _key(e: Example) -> tuple:
    return (e.instruction, e.input, e.output)


def test_every_format_we_write_reads_as_the_same_examples(tmp_path: Path) -> None:
    examples = [Example(*t) for t in TRIPLES]
    rng = random.Random(7)
    # all_generated_instances.jsonl
    instances = tmp_path / "all_generated_instances.jsonl"
    instances.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in examples))
    # openai_chat_finetuning_data.jsonl, alpaca_data.json, gpt3_finetuning_data_N.jsonl
    chat = tmp_path / "openai_chat_finetuning_data.jsonl"
    chat.write_text(
        "".join(json.dumps(chat_record(e.instruction, e.input, e.output)) + "\n" for e in examples)
    )
    alpaca = tmp_path / "alpaca_data.json"
    alpaca.write_text(json.dumps([e.to_dict() for e in examples], indent=2))
    gpt3 = tmp_path / f"gpt3_finetuning_data_{len(examples)}.jsonl"
    gpt3.write_text(
        "".join(json.dumps(encode(e.instruction, e.input, e.output, rng)) + "\n" for e in examples)
    )
    expected = [(e.instruction, e.input, e.output) for e in examples]
    for path in (instances, chat, alpaca):
        assert [_key(x) for x in read_examples(path)] == expected, path.name
    assert [_key(x) for x in read_examples(gpt3)] == expected
    # the user turn a model is trained on is the same whichever file it came from
    users = {p.name: [x.user for x in read_examples(p)] for p in (instances, chat, alpaca, gpt3)}
    assert len({tuple(v) for v in users.values()}) == 1


@pytest.mark.parametrize("template", TEMPLATES_WITH_INPUT + TEMPLATES_WITHOUT_INPUT)
def test_each_release_template_is_undone(template: tuple[str, str], tmp_path: Path) -> None:
    """The original release's file: prompt/completion only, any of the paper's templates."""
    prompt_t, completion_t = template
    has_input = "{input}" in prompt_t
    instruction = "Find the odd one out."
    inp = "apple, banana, carrot" if has_input else ""
    record = {
        "prompt": prompt_t.format(instruction=instruction, input=inp),
        "completion": completion_t.format(output="carrot", end="<|endoftext|>"),
    }
    path = tmp_path / "gpt3_finetuning_data.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (example,) = read_examples(path)
    assert _key(example) == (instruction, inp, "carrot")


def test_gpt3_multiline_input_and_unknown_prompts() -> None:
    assert split_prompt("Fix the code.\n\nx = 1\n\ny = 2\n\n") == (
        "Fix the code.",
        "x = 1\n\ny = 2",
    )
    assert split_prompt("Fix the code.\nx = 1\ny = 2\n\n") == ("Fix the code.", "x = 1\ny = 2")
    assert split_prompt("no template here") is None


def test_unrecoverable_prompt_and_task_formats(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    lines = [
        {"prompt": "Q: what is 2+2? A:", "completion": " 4<|endoftext|>"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
            ]
        },
        {
            "id": "t1",
            "instruction": "Say yes.",
            "instances": [{"input": "", "output": "yes"}, {"input": "x", "output": "yes x"}],
        },
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    a, b, c, d = read_examples(path)
    assert (a.instruction, a.prompt, a.output) == (None, "Q: what is 2+2? A:", "4")
    assert a.user == "Q: what is 2+2? A:" and a.to_dict() == {"prompt": a.prompt, "response": "4"}
    assert (b.system, b.user, b.output) == ("Be brief.", "Hi", "Hello.")
    assert b.chat_messages()[0] == {"role": "system", "content": "Be brief."}
    assert (c.id, c.user, d.id, d.user) == ("t1#0", "Say yes.", "t1#1", "Say yes.\n\nx")


def test_bad_files_are_reported_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + '{"foo": 1}\n')
    with pytest.raises(DataFileError, match=r"bad.jsonl:2: not a fine-tuning record"):
        read_examples(path)
    turns = tmp_path / "turns.jsonl"
    msgs = [{"role": r, "content": "x"} for r in ("user", "assistant", "user", "assistant")]
    turns.write_text(json.dumps({"messages": msgs}) + "\n")
    with pytest.raises(DataFileError, match="multi-turn"):
        read_examples(turns)


def test_split_is_seeded_and_disjoint() -> None:
    examples = [Example(output=str(i), instruction=f"task {i}") for i in range(40)]
    train, held = split_examples(examples, 0.25, seed=3)
    assert len(held) == 10 and len(train) == 30
    assert set(map(_key, train)).isdisjoint(map(_key, held))
    assert split_examples(examples, 0.25, seed=3) == (train, held)
    assert split_examples(examples, 0.25, seed=4) != (train, held)


# --- the GGUF adapter layout -------------------------------------------------------------------


def test_permute_rows_matches_llama_cpp_rope_layout() -> None:
    # 2 heads of 4 rows: llama.cpp stores, per head, the even rows then the odd rows
    w = np.arange(8 * 3).reshape(8, 3)
    out = permute_rows(w, 2)
    assert [r[0] // 3 for r in out] == [0, 2, 1, 3, 4, 6, 5, 7]


def _toy_data(n: int, seed: int) -> list[dict[str, str]]:
    """Three small deterministic tasks a 135M model cannot do in the wanted format unaided."""
    words = (
        "apple river stone cloud green quiet music paper orange window garden silver bread"
        " candle forest yellow winter lemon tiger rocket"
    ).split()
    rng = random.Random(seed)
    out = []
    for k in range(n):
        kind = k % 3
        if kind == 0:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            out.append(
                {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)}
            )
        elif kind == 1:
            ws = rng.sample(words, rng.randint(3, 5))
            out.append(
                {
                    "instruction": "Reverse the order of the words.",
                    "input": " ".join(ws),
                    "output": " ".join(reversed(ws)),
                }
            )
        else:
            ws = rng.sample(words, rng.randint(2, 4))
            phrase = " ".join(ws)
            out.append(
                {
                    "instruction": "Write the phrase in upper case.",
                    "input": phrase,
                    "output": phrase.upper(),
                }
            )
    return out


def _run(command, args: list[str]) -> str:
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


ADAPTER_BEFORE_SPLIT = Path(__file__).parent / "data" / "adapter_before_split.json"


@pytest.mark.slow
def test_the_adapter_is_the_one_trained_before_the_split(tmp_path: Path) -> None:
    """local.py's split into base/encoding/loop/export changed no byte of what it trains."""
    import hashlib
    import platform

    torch = pytest.importorskip("torch")
    from selfinstruct.finetune import LocalConfig, train_local

    before = json.loads(ADAPTER_BEFORE_SPLIT.read_text())
    if (torch.__version__, platform.machine()) != (before["torch"], before["machine"]):
        pytest.skip(f"the digest was recorded with torch {before['torch']} on {before['machine']}")
    data = tmp_path / "data.jsonl"
    rows = [
        {"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)}
        for i in range(12)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = LocalConfig(epochs=1, lora_r=2, lora_alpha=4.0, batch_size=4, max_length=64,
                      eval_fraction=0.0, threads=1, seed=0, precision="fp32")  # fmt: skip
    train_local(data, tmp_path / "ft", cfg)
    adapter = (tmp_path / "ft" / "adapter.gguf").read_bytes()
    assert hashlib.sha256(adapter).hexdigest() == before["sha256"]


# One epoch at a higher peak learning rate than the default: measured here, 0.78 exact match
# after (0.80 with two epochs at 1e-3), in half the time.
TRAIN_ARGS = ["--epochs", "1", "--lr", "2e-3", "--eval-fraction", "0.2", "--quiet"]


@pytest.mark.slow
def test_finetune_then_evaluate_gains_on_the_embedded_model(tmp_path: Path) -> None:
    """The whole loop: LoRA on 200 examples, then llama.cpp answers 50 held-out ones with the
    GGUF adapter on top of the untouched base file."""
    _require_training_stack()
    from selfinstruct.cli.train import evaluate_command, finetune_command

    started = time.monotonic()
    data = tmp_path / "all_generated_instances.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _toy_data(250, seed=1)))
    out = tmp_path / "ft"
    spec = _run(
        finetune_command,
        [str(data), "--out", str(out), *TRAIN_ARGS],
    ).strip()
    assert spec == f"local?lora={out}"
    trained = time.monotonic() - started
    report = json.loads((out / "finetune.json").read_text())
    assert report["status"] == "complete" and report["data"]["train"] == 200
    assert report["data"]["train_tokens_per_epoch"] < 70_000
    assert report["loss"]["held_out_after"] < report["loss"]["held_out_before"]
    assert (out / "peft" / "adapter_config.json").exists()

    # the adapter: llama.cpp's layout, one lora_a/lora_b pair per adapted matrix
    header = read_gguf_header(out / "adapter.gguf")
    assert header.get("general.type") == "adapter" and header.get("adapter.type") == "lora"
    assert header.get("general.architecture") == "llama"
    assert header.get("adapter.lora.alpha") == 32.0
    names = {t.name: t.shape for t in header.tensors}
    assert names["blk.0.attn_q.weight.lora_a"] == (16, 576)
    assert names["blk.0.attn_q.weight.lora_b"] == (576, 16)
    assert len(names) == 30 * 7 * 2

    held = out / "heldout.jsonl"
    scores = {}
    for name, model in (("before", "local"), ("after", spec)):
        pred = tmp_path / f"pred_{name}.jsonl"
        line = _run(
            evaluate_command,
            [
                "--model",
                model,
                "--tasks",
                str(held),
                "--out",
                str(pred),
                "--max-tokens",
                "16",
                "--format",
                "json",
                "--quiet",
            ],
        )
        (scores[name],) = json.loads(line)  # one JSON document: a list, one object a file
        assert scores[name]["n"] == 50
        assert len(pred.read_text().splitlines()) == 50
    print(
        f"\nexact match on 50 held-out examples: before {scores['before']['exact_match']:.2f},"
        f" after {scores['after']['exact_match']:.2f}; ROUGE-L {scores['before']['rouge_l']:.2f}"
        f" -> {scores['after']['rouge_l']:.2f}; training {trained:.0f} s"
        f" ({report['training']['tokens_per_second']:.0f} tokens/s),"
        f" whole test {time.monotonic() - started:.0f} s"
    )
    assert scores["before"]["exact_match"] <= 0.1
    assert scores["after"]["exact_match"] >= 0.4
    assert scores["after"]["rouge_l"] > scores["before"]["rouge_l"]

    # a rerun of a finished fine-tuning does nothing and says so
    again = _run(
        finetune_command,
        [str(data), "--out", str(out), *TRAIN_ARGS],
    )
    assert again.strip() == spec


def _lora_weights(out: Path) -> dict[str, np.ndarray]:
    header = read_gguf_header(out / "adapter.gguf")
    import gguf

    reader = gguf.GGUFReader(out / "adapter.gguf")
    assert len(reader.tensors) == len(header.tensors)
    return {t.name: np.array(t.data) for t in reader.tensors}


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    """--max-train-tokens stops a run (adapter written, checkpoint kept); the same command
    without the limit continues from the checkpoint and ends where an uninterrupted run ends."""
    _require_training_stack()
    from selfinstruct.cli.train import finetune_command

    data = tmp_path / "alpaca_data.json"
    data.write_text(json.dumps(_toy_data(24, seed=5)))
    common = ["--epochs", "1", "--batch-size", "4", "--eval-fraction", "0", "--threads", "1"]
    common += ["--quiet"]
    out = tmp_path / "resumed"
    _run(finetune_command, [str(data), "--out", str(out), "--max-train-tokens", "300", *common])
    first = json.loads((out / "finetune.json").read_text())
    assert first["status"] == "stopped" and first["stop_reason"] == "max_train_tokens"
    assert 0 < first["training"]["steps"] < 6
    assert (out / "checkpoint" / "state.pt").exists() and (out / "adapter.gguf").exists()

    _run(finetune_command, [str(data), "--out", str(out), *common])
    second = json.loads((out / "finetune.json").read_text())
    assert second["status"] == "complete" and second["training"]["steps"] == 6
    assert second["training"]["invocations"] == 2
    assert not (out / "checkpoint").exists()

    straight = tmp_path / "straight"
    _run(finetune_command, [str(data), "--out", str(straight), *common])
    resumed_w, straight_w = _lora_weights(out), _lora_weights(straight)
    assert resumed_w.keys() == straight_w.keys()
    for name in resumed_w:
        np.testing.assert_allclose(resumed_w[name], straight_w[name], rtol=1e-4, atol=1e-6)

    # another run's folder is refused rather than mixed up
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in _toy_data(12, seed=9)))
    result = CliRunner().invoke(finetune_command, [str(other), "--out", str(out), *common])
    assert result.exit_code != 0 and "another fine-tuning run" in str(result.exception)


@pytest.mark.slow
def test_full_fine_tuning_writes_a_gguf_that_llama_cpp_runs(tmp_path: Path) -> None:
    """--full writes every weight to an f16 GGUF; one tiny step leaves the model as it was,
    so llama.cpp must predict almost the same next tokens as with the base file (a wrong
    tensor name or Q/K row order would not)."""
    _require_training_stack()
    from llama_cpp import Llama

    from selfinstruct.cli.train import finetune_command
    from selfinstruct.models.llamacpp import default_model_path

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _toy_data(4, seed=2)))
    out = tmp_path / "full"
    spec = _run(
        finetune_command,
        [
            str(data),
            "--out",
            str(out),
            "--full",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--eval-fraction",
            "0",
            "--lr",
            "1e-7",
            "--quiet",
        ],
    ).strip()
    assert spec == f"local:{out / 'model.gguf'}"
    header = read_gguf_header(out / "model.gguf")
    base = read_gguf_header(default_model_path())
    assert [t.name for t in header.tensors] == [t.name for t in base.tensors]
    assert header.get("general.file_type") == 1  # mostly f16
    assert header.get("tokenizer.chat_template") == base.get("tokenizer.chat_template")

    text = b"The capital of France is Paris. The capital of Italy is Rome. Water is made of"

    def next_tokens(path: Path) -> np.ndarray:
        llm = Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False)
        tokens = llm.tokenize(text)
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)]).argmax(-1)

    agree = (next_tokens(out / "model.gguf") == next_tokens(default_model_path())).mean()
    assert agree >= 0.8, agree


def _tiny_llama_gguf(path: Path) -> dict[str, np.ndarray]:
    """A 1-layer llama-architecture GGUF (f32) and the transformers-named weights it holds."""
    import gguf

    rng = np.random.default_rng(0)
    dim, kv, ffn, vocab = 64, 32, 96, 16
    hf = {
        "model.embed_tokens.weight": rng.normal(size=(vocab, dim)),
        "model.norm.weight": rng.normal(size=(dim,)),
        "model.layers.0.input_layernorm.weight": rng.normal(size=(dim,)),
        "model.layers.0.post_attention_layernorm.weight": rng.normal(size=(dim,)),
        "model.layers.0.self_attn.q_proj.weight": rng.normal(size=(dim, dim)),
        "model.layers.0.self_attn.k_proj.weight": rng.normal(size=(kv, dim)),
        "model.layers.0.self_attn.v_proj.weight": rng.normal(size=(kv, dim)),
        "model.layers.0.self_attn.o_proj.weight": rng.normal(size=(dim, dim)),
        "model.layers.0.mlp.gate_proj.weight": rng.normal(size=(ffn, dim)),
        "model.layers.0.mlp.up_proj.weight": rng.normal(size=(ffn, dim)),
        "model.layers.0.mlp.down_proj.weight": rng.normal(size=(dim, ffn)),
    }
    hf = {k: v.astype(np.float32) for k, v in hf.items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(vocab)])
    from selfinstruct.finetune.export import hf_to_gguf_name

    for key, value in hf.items():
        name = hf_to_gguf_name(key)
        if name.endswith("attn_q.weight"):
            value = permute_rows(value, 2)
        elif name.endswith("attn_k.weight"):
            value = permute_rows(value, 1)
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


@pytest.mark.parametrize("out_type", ["f16", "q8_0", "f32"])
def test_full_export_round_trips_names_rows_and_metadata(tmp_path: Path, out_type: str) -> None:
    gguf = pytest.importorskip("gguf", reason="pip install 'selfinstruct[finetune]'")
    from selfinstruct.finetune.export import write_full_gguf

    base = tmp_path / "base.gguf"
    hf = _tiny_llama_gguf(base)
    trained = {k: v + 0.01 for k, v in hf.items()}
    out = tmp_path / f"model-{out_type}.gguf"
    write_full_gguf(out, trained, read_gguf_header(base), out_type=out_type)
    header = read_gguf_header(out)
    assert header.get("tokenizer.chat_template") == "{{ messages }}"
    assert header.get("llama.attention.head_count_kv") == 1
    reader = gguf.GGUFReader(str(out))
    by_name = {t.name: t for t in reader.tensors}
    base_reader = gguf.GGUFReader(str(base))
    tol = {"f32": 1e-6, "f16": 2e-3, "q8_0": 3e-2}[out_type]
    for t in base_reader.tensors:
        got = gguf.quants.dequantize(by_name[t.name].data, by_name[t.name].tensor_type)
        want = np.array(t.data) + 0.01  # the base layout (Q/K rows permuted) plus the update
        np.testing.assert_allclose(got.reshape(want.shape), want, atol=tol * np.abs(want).max())


def test_lora_export_names_shapes_and_q_k_rows(tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="pip install 'selfinstruct[finetune]'")
    from selfinstruct.finetune.export import lora_tensors, write_lora_gguf

    base = tmp_path / "base.gguf"
    _tiny_llama_gguf(base)
    rng = np.random.default_rng(1)
    prefix = "base_model.model.model.layers.0."
    state = {
        prefix + "self_attn.q_proj.lora_A.default.weight": rng.normal(size=(4, 64)),
        prefix + "self_attn.q_proj.lora_B.default.weight": rng.normal(size=(64, 4)),
        prefix + "self_attn.k_proj.lora_A.default.weight": rng.normal(size=(4, 64)),
        prefix + "self_attn.k_proj.lora_B.default.weight": rng.normal(size=(32, 4)),
        prefix + "mlp.down_proj.lora_A.default.weight": rng.normal(size=(4, 96)),
        prefix + "mlp.down_proj.lora_B.default.weight": rng.normal(size=(64, 4)),
    }
    state = {k: v.astype(np.float32) for k, v in state.items()}
    header = read_gguf_header(base)
    tensors = dict(lora_tensors(state, header))
    assert sorted(tensors) == [
        f"blk.0.{m}.weight.lora_{ab}" for m in ("attn_k", "attn_q", "ffn_down") for ab in "ab"
    ]
    q_b = state[prefix + "self_attn.q_proj.lora_B.default.weight"]
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight.lora_b"], permute_rows(q_b, 2))
    k_b = state[prefix + "self_attn.k_proj.lora_B.default.weight"]
    np.testing.assert_array_equal(tensors["blk.0.attn_k.weight.lora_b"], permute_rows(k_b, 1))
    down_a = state[prefix + "mlp.down_proj.lora_A.default.weight"]
    np.testing.assert_array_equal(tensors["blk.0.ffn_down.weight.lora_a"], down_a)
    write_lora_gguf(tmp_path / "adapter.gguf", state, header, alpha=8)
    written = read_gguf_header(tmp_path / "adapter.gguf")
    assert written.get("general.type") == "adapter" and written.get("adapter.lora.alpha") == 8.0
    assert {t.name: t.shape for t in written.tensors}["blk.0.attn_k.weight.lora_b"] == (32, 4)
    with pytest.raises(Exception, match="do not fit"):
        bad = dict(state)
        bad[prefix + "self_attn.k_proj.lora_B.default.weight"] = rng.normal(size=(64, 4))
        lora_tensors(bad, header)
