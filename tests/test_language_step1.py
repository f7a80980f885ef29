"""Step 1 in Chinese against a real loopback server: the pool it keeps has every pair under the
threshold, near-duplicates are rejected as too similar, and run.json records the language; the
other commands read it back."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import selfinstruct as si
from selfinstruct import language, seeds
from selfinstruct.similarity import rouge_l

CLI = [sys.executable, "-c", "from selfinstruct.cli import main; main()"]

# Distinct tasks, written for this test; the server also sends near-duplicates of them.
TASKS = """列举五种常见的室内植物并说明养护要点。
为公司年会设计一个有趣的互动游戏。
比较火车和飞机出行的优缺点。
用三句话介绍长城的历史。
给刚入职的新员工写一段欢迎词。
推荐三部适合全家观看的电影并说明理由。
解释什么是通货膨胀，并举一个生活中的例子。
为一篇关于环保的演讲拟一个标题。
描述一次难忘的旅行经历。
把下面的句子改写成疑问句。
说明如何正确地洗手。
写一段鼓励考生的话。
根据给出的关键词编一个小故事。
判断下面的说法是事实还是观点。
为周末的家庭聚餐设计一份菜单。
总结阅读对个人成长的三个好处。
解释地球为什么会有四季变化。
给邻居写一张便条，提醒他们晚上小声一点。
列出准备面试时需要注意的事项。
设计一个帮助老人使用智能手机的小课程。
用比喻的手法描写月亮。
说出三种节约用水的方法。
为学校运动会写一则通知。
分析网购流行的原因。
介绍一种你喜欢的传统节日及其习俗。
计算一个长8米、宽5米的房间的面积。
把这段口语化的文字改成书面语。
提出三个提高睡眠质量的建议。
写一条提醒大家垃圾分类的标语。
解释为什么海水是咸的。""".splitlines()


def _answers() -> Iterator[str]:
    """Each answer: three tasks and a near-duplicate of one of them, numbered the ways Chinese
    answers are ("９．" or none first, then "10．", "11、", "12. ")."""
    for k in itertools.count():
        a, b, c = (TASKS[(3 * k + j) % len(TASKS)] for j in range(3))
        first = "９．" if k % 2 else ""
        yield f"{first}{a}\n10．{b}\n11、请{a}\n12. {c}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers = _answers()
        self.lock = threading.Lock()
        self.requests = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": "zh-model", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        prompt = body["messages"][-1]["content"]
        with self.server.lock:
            self.server.requests += 1
            if "Is it classification?" in prompt:  # step 2
                text = "Yes" if self.server.requests % 2 else "No"
            elif "Given the classification task definition" in prompt:  # step 3, output first
                text = "Class label: 正面\n评论：很好用，推荐。\n"
                text += "Class label: 负面\n评论：质量很差。"
            elif "Come up with examples for the following tasks" in prompt:  # step 3
                text = "Example 1\nInput: 今天的天气\nOutput: 今天晴，气温二十度。\nExample 2\n"
                text += "Input: 明天的天气\nOutput: 明天多云，可能有小雨。"
            else:  # step 1
                text = next(self.server.answers)
        self._send(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "zh-model",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90},
            }
        )


@pytest.fixture
def zh_server() -> Iterator[str]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _lines(path: Path) -> list[str]:
    return path.read_text("utf-8").splitlines()


def _pool(out: Path) -> list[str]:
    lines = _lines(out / "machine_generated_instructions.jsonl")
    return [json.loads(line)["instruction"] for line in lines]


@pytest.mark.parametrize("asked", ["zh", "auto"])
def test_step1_in_chinese_keeps_a_pool_under_the_threshold(
    tmp_path: Path, zh_server: str, asked: str
) -> None:
    out = tmp_path / "run"
    with si.Pipeline(
        out,
        "openai:zh-model",
        base_url=zh_server,
        api_key="sk-test-key",
        seeds=seeds.default("zh"),
        language=asked,
    ) as p:
        report = p.generate_instructions(20, request_batch_size=1)
    assert report.complete
    config = json.loads((out / "run.json").read_text("utf-8"))["config"]["instructions"]
    assert config["language"] == "zh"
    threshold = config["similarity_threshold"]
    assert threshold == language.get("zh").threshold
    machine = _pool(out)
    assert len(machine) == 20
    pool = [t.instruction for t in seeds.default("zh")] + machine
    for i, j in itertools.combinations(range(len(pool)), 2):
        score = rouge_l(pool[i], pool[j], language="zh").fmeasure
        assert score <= threshold, (pool[i], pool[j], score)
    # The near-duplicates were seen and rejected, with the pool's closest instruction.
    rejected = [
        json.loads(line)
        for line in (out / "rejected_instructions.jsonl").read_text("utf-8").splitlines()
    ]
    similar = [r for r in rejected if r["reason"] == "too_similar"]
    assert similar
    for r in similar:
        assert r["rouge_l"] > threshold
        assert r["rouge_l"] == rouge_l(r["most_similar"], r["instruction"], language="zh").fmeasure
    # The numbering of every answer was understood: no item still starts with a number.
    assert not [t for t in machine if t[0] in "0123456789０１２３４５６７８９"]
    # Step 1's stored similarity figures are the Chinese ones.
    first = json.loads(_lines(out / "machine_generated_instructions.jsonl")[0])
    assert max(first["most_similar"].values()) > 0


def test_sweep_and_dedup_read_the_language(tmp_path: Path, zh_server: str) -> None:
    out = tmp_path / "run"
    with si.Pipeline(
        out,
        "openai:zh-model",
        base_url=zh_server,
        api_key="sk-test-key",
        language="zh",
    ) as p:  # no seed file: the built-in Chinese set
        p.generate_instructions(12, request_batch_size=1)
        assert p.seeds == seeds.default("zh")
    from selfinstruct.sweep import sweep

    threshold = language.get("zh").threshold
    rows = sweep(out, [threshold, 0.99])
    assert rows[0].kept == rows[0].run_kept == 12 and rows[0].removed == 0
    assert rows[1].kept > rows[0].kept  # a looser threshold lets the near-duplicates in
    # A resumed run without --language keeps the recorded one.
    with si.Pipeline(out, "openai:zh-model", base_url=zh_server, api_key="sk-test-key") as p:
        p.generate_instructions(14, request_batch_size=1)
        assert p.language.code == "zh"
    # `selfinstruct dedup --language zh` on the pool and the rejected near-duplicates.
    machine = set(_pool(out))
    rejected = (out / "rejected_instructions.jsonl").read_text("utf-8").splitlines()
    near = [r for r in rejected if json.loads(r).get("most_similar") in machine]
    assert near
    both = tmp_path / "both.jsonl"
    both.write_text(
        (out / "machine_generated_instructions.jsonl").read_text("utf-8") + "\n".join(near),
        "utf-8",
    )
    kept = tmp_path / "kept.jsonl"
    done = subprocess.run(
        [*CLI, "dedup", str(both), "-o", str(kept)] + ["--language", "zh", "-q"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    texts = [json.loads(line)["instruction"] for line in kept.read_text("utf-8").splitlines()]
    assert texts == _pool(out)  # every rejected near-duplicate is dropped again


def test_an_unknown_language_stops_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text('{"instruction": "a"}\n')
    done = subprocess.run(
        [*CLI, "dedup", str(tmp_path / "x.jsonl")]
        + ["-o", str(tmp_path / "y.jsonl"), "--language", "klingon"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "--language 'klingon'" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_all_four_steps_and_the_report_in_chinese(tmp_path: Path, zh_server: str) -> None:
    out = tmp_path / "run"
    common = ["--model", "openai:zh-model", "--base-url", zh_server, "--api-key", "sk-test-key"]
    done = subprocess.run(
        [*CLI, "run", "--out", str(out), "--language", "zh", "--num-instructions", "8"]
        + [*common, "--no-decontaminate", "-q"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    examples = [
        json.loads(line)
        for line in _lines(out / "finetuning_data" / "all_generated_instances.jsonl")
    ]
    assert len({e["instruction"] for e in examples}) == 8
    assert all(language.detect([e["instruction"]]) == "zh" for e in examples)
    labels = _lines(next(out.glob("is_clf_or_not_*.jsonl")))
    assert any('"Yes"' in line for line in labels) and any('"No"' in line for line in labels)
    report = subprocess.run(
        [*CLI, "report", str(out), "-q"], capture_output=True, text=True, timeout=600
    )
    assert report.returncode == 0, report.stderr
    stats = json.loads((out / "report" / "stats.json").read_text("utf-8"))
    # ROUGE-L to the seed tasks is the Chinese figure, not rouge-score's 0.0 for everything.
    assert sum(stats["rouge"]["hist_to_seeds"]["counts"][2:]) > 0  # some above 0.1
    # The run's own copy of the seeds it was made from (the built-in Chinese set).
    assert stats["rouge"]["seed_source"].endswith("seed_tasks.jsonl (from run.json's config)")
    copied = (out / "seed_tasks.jsonl").read_text("utf-8")
    assert copied == seeds.seeds_text(seeds.default("zh"))
    assert stats["rouge"]["threshold"] == language.get("zh").threshold
