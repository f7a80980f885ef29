"""The fault-injecting OpenAI-compatible test server, checked with the real `openai` client."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("aiohttp")

try:
    from tests.servers.openai_fault_server import (
        ContentGenerator,
        FaultConfig,
        apply_limits,
        running_fault_server,
    )
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from servers.openai_fault_server import (
        ContentGenerator,
        FaultConfig,
        apply_limits,
        running_fault_server,
    )

KEY = "sk-test-0123456789"
MODEL = "gpt-3.5-turbo-instruct"
SEEDS = [
    "Give three tips for staying healthy.",
    "What are the three primary colors?",
    "Describe the structure of an atom.",
    "How can we reduce air pollution?",
    "Write a haiku about autumn leaves.",
    "Explain why the sky is blue to a child.",
    "Generate a list of ten items a person might need for a camping trip",
    "Classify the sentiment of the following tweet as positive or negative.",
]
BOOTSTRAP = (
    "Come up with a series of tasks:\n"
    + "".join(f"{i}. {t}\n" for i, t in enumerate(SEEDS, 1))
    + f"{len(SEEDS) + 1}."
)
IS_CLF = (
    "Can the following task be regarded as a classification task with finite output labels?\n\n"
    "Task: Given my personality and the job, tell me if I would be suitable.\n"
    "Is it classification? Yes\n\n"
    "Task: {task}\nIs it classification?"
)
INPUT_FIRST = (
    "Come up with examples for the following tasks. Try to generate multiple examples when "
    "possible. If the task doesn't require additional input, you can generate the output "
    "directly.\n\nTask: Which exercises are best for reducing belly fat at home?\nOutput:\n"
    "- Lying Leg Raises\n- Plank\n\nTask: {task}\n"
)
OUTPUT_FIRST = (
    "Given the classification task definition and the class labels, generate an input that "
    "corresponds to each of the class labels. If the task doesn't require input, just generate "
    "possible class labels.\n\nTask: Classify the sentiment of the sentence into positive, "
    "negative, or mixed.\nClass label: Positive\nSentence: I enjoy the flavor of the restaurant."
    "\n\nTask: {task}\n"
)


def client(server, key: str = KEY, timeout: float = 10.0):
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=timeout)


def wait_for_log(server, count: int, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        records = server.read_log()
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("fault") / "responses.jsonl"
    with running_fault_server(
        seed=7, api_key=KEY, models=[MODEL, "gpt-4o-mini"], log_path=log
    ) as s:
        yield s


# -- content and protocol -------------------------------------------------------------------


def test_list_prompt_gets_one_choice_per_prompt_in_order(server):
    prompts = [BOOTSTRAP, IS_CLF.format(task="Sort these numbers."), "Say hello.", BOOTSTRAP]
    r = client(server).completions.create(
        model=MODEL, prompt=prompts, max_tokens=512, temperature=0.7
    )
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL
    assert r.created > 1_600_000_000
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert all(c.logprobs is None and c.finish_reason == "stop" for c in r.choices)
    first, clf, other, again = (c.text for c in r.choices)
    # the bootstrap answer continues item 9 and numbers the next ones
    assert first.startswith(" ") and "\n10. " in first and "\n11. " in first
    items = re.split(r"\n\d+\. ", first.strip())
    assert len(items) == 5 and all(6 <= len(i.split()) <= 20 for i in items)
    assert again != first  # the same prompt sampled twice at temperature 0.7
    assert clf in (" Yes", " No")
    assert other.strip().endswith(".") and len(other.split()) >= 4
    words = sum(len(p.split()) for p in prompts)
    completion = sum(len(c.text.split()) for c in r.choices)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (words, completion)
    assert r.usage.total_tokens == words + completion


def test_chat_completion(server):
    r = client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": BOOTSTRAP},
        ],
        max_tokens=400,
        temperature=0,
    )
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert "\n10. " in choice.message.content
    assert r.usage.completion_tokens == len(choice.message.content.split())


def test_pipeline_prompts_get_parseable_answers(server):
    c = client(server)
    task = "Classify the following email as spam or not."
    clf = [
        c.completions.create(model=MODEL, prompt=IS_CLF.format(task=t), max_tokens=3, temperature=0)
        .choices[0]
        .text
        for t in (task, task, "Write a poem about the sea.")
    ]
    assert clf[0] == clf[1] and set(clf) <= {" Yes", " No"}  # by task, deterministic
    text = (
        c.completions.create(
            model=MODEL, prompt=INPUT_FIRST.format(task=task), max_tokens=300, stop=["Task:"]
        )
        .choices[0]
        .text
    )
    examples = re.split(r"Example \d+\n", text)[1:]
    assert examples and text.startswith("Example 1\n")
    for ex in examples:
        assert re.fullmatch(r"(Input: [^\n]+\n)?Output: [^\n]+\s*", ex), ex
    text = (
        c.completions.create(
            model=MODEL, prompt=OUTPUT_FIRST.format(task=task), max_tokens=300, stop=["Task:"]
        )
        .choices[0]
        .text
    )
    pairs = re.findall(r"Class label: ([^\n]+)\nSentence: ([^\n]+)\n", text)
    assert (
        len(pairs) >= 2 and "".join(f"Class label: {a}\nSentence: {b}\n" for a, b in pairs) == text
    )


def test_stop_sequences_and_max_tokens(server):
    c = client(server)
    args = {"model": MODEL, "prompt": BOOTSTRAP, "temperature": 0}
    full = c.completions.create(max_tokens=1000, **args).choices[0]
    cut = c.completions.create(max_tokens=1000, stop=["\n12", "\n\n"], **args).choices[0]
    assert cut.finish_reason == "stop" and "\n12" not in cut.text
    assert full.text.startswith(cut.text) and "\n11. " in cut.text
    short = c.completions.create(max_tokens=4, **args).choices[0]
    assert short.finish_reason == "length" and len(short.text.split()) == 4
    assert full.text.startswith(short.text)
    # completions' default max_tokens is OpenAI's 16
    default = c.completions.create(**args).choices[0]
    assert default.finish_reason == "length" and len(default.text.split()) == 16
    assert apply_limits("a b\nc d", ["\n"], 1) == ("a", "length")
    assert apply_limits("a b\nc d", ["\n"], 2) == ("a b", "stop")


def test_models_endpoint(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == [MODEL, "gpt-4o-mini"]


def test_auth_and_model_errors(server):
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, key="sk-wrong-key-000").completions.create(model=MODEL, prompt="x")
    assert e.value.status_code == 401
    assert e.value.response.json()["error"]["code"] == "invalid_api_key"
    assert e.value.response.json()["error"]["type"] == "invalid_request_error"
    request = urllib.request.Request(
        server.base_url + "/completions",
        data=json.dumps({"model": MODEL, "prompt": "x"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request, timeout=5)
    assert missing.value.code == 401
    with pytest.raises(openai.NotFoundError) as e:
        client(server).completions.create(model="no-such-model", prompt="x")
    assert e.value.response.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client(server).completions.create(model=MODEL, prompt=[])


def test_same_seed_same_answers_other_seed_other_answers(server):
    args = {"model": MODEL, "prompt": [BOOTSTRAP, "Hello"], "max_tokens": 200, "temperature": 0}
    with running_fault_server(seed=7) as twin:
        texts = [
            [ch.text for ch in client(s).completions.create(**args).choices] for s in (server, twin)
        ]
    assert texts[0] == texts[1]
    rng = random.Random(1)
    assert ContentGenerator(7).instruction(rng) != ContentGenerator(8).instruction(random.Random(1))


# -- faults ---------------------------------------------------------------------------------


def test_429_carries_retry_after_and_5xx():
    with running_fault_server(fail_first=1, fail_status="429", rate_500=0.5, rate_503=0.5) as s:
        c = client(s)
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model=MODEL, prompt="x")
        assert e.value.response.headers["retry-after"] == "0.5"
        assert e.value.response.headers["retry-after-ms"] == "500"
        assert e.value.response.json()["error"]["code"] == "rate_limit_exceeded"
        codes = set()
        for _ in range(12):
            with pytest.raises(openai.InternalServerError) as e:
                c.completions.create(model=MODEL, prompt="x")
            codes.add(e.value.status_code)
            assert e.value.response.json()["error"]["type"] == "server_error"
        assert codes == {500, 503}


def test_malformed_and_empty_choices():
    kinds = set()
    with running_fault_server(rate_malformed=0.5, rate_empty_choices=0.5, seed=1) as s:
        request = urllib.request.Request(
            s.base_url + "/completions",
            data=json.dumps({"model": MODEL, "prompt": ["x", "y"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        for _ in range(10):
            with urllib.request.urlopen(request, timeout=5) as answer:
                assert answer.status == 200
                assert answer.headers["Content-Type"].startswith("application/json")
                body = answer.read()
            try:
                parsed = json.loads(body)
            except ValueError:
                kinds.add("malformed")
            else:
                assert parsed["choices"] == [] and parsed["usage"]["completion_tokens"] == 0
                kinds.add("empty_choices")
        assert kinds == {"malformed", "empty_choices"}
        # the openai client lets json's ValueError through (not an openai.APIError) on a
        # malformed body, and returns a Completion with no choices for the other
        c = client(s)
        for _ in range(4):
            try:
                assert c.completions.create(model=MODEL, prompt="x").choices == []
            except ValueError:
                pass


def test_hang_outlasts_client_timeout_and_latency_is_concurrent(tmp_path):
    async def burst(base_url: str) -> float:
        c = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
        t0 = time.monotonic()
        await asyncio.gather(*(c.completions.create(model=MODEL, prompt="x") for _ in range(16)))
        await c.close()
        return time.monotonic() - t0

    log = tmp_path / "log.jsonl"
    options = {"fail_first": 1, "fail_status": "hang", "hang_seconds": 30, "latency": 0.3}
    with running_fault_server(log_path=log, **options) as s:
        t0 = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client(s, timeout=0.6).completions.create(model=MODEL, prompt="x")
        assert time.monotonic() - t0 < 5
        (record,) = wait_for_log(s, 1)  # the handler ends when its client disconnects
        assert (record["status"], record["fault"], record["texts"]) == (499, "hang", [])
        elapsed = asyncio.run(burst(s.base_url))
        assert 0.3 <= elapsed < 1.5  # 16 requests overlap: the server never blocks on a sleep
        assert len(wait_for_log(s, 17)) == 17


def test_log_has_one_line_per_answer_with_its_fault(tmp_path):
    log = tmp_path / "log.jsonl"
    options = {
        "fail_first": 2,
        "fail_status": "401",
        "rate_429": 0.15,
        "rate_500": 0.15,
        "rate_503": 0.1,
        "rate_hang": 0.1,
        "rate_malformed": 0.1,
        "rate_empty_choices": 0.1,
        "hang_seconds": 0.05,
        "retry_after": 0,
    }
    outcomes = []
    with running_fault_server(seed=11, log_path=log, **options) as s:
        c = client(s)
        for _ in range(60):
            try:
                r = c.completions.create(model=MODEL, prompt=[BOOTSTRAP], max_tokens=300)
                outcomes.append((200, [ch.text for ch in r.choices]))
            except openai.APIStatusError as e:
                outcomes.append((e.status_code, []))
            except ValueError:
                outcomes.append(("malformed", []))
        records = wait_for_log(s, 60)
        s.kill()  # SIGKILL: the log must still be whole lines
    lines = log.read_text().splitlines()
    assert len(lines) == len(records) == 60
    assert [r["seq"] for r in records] == list(range(1, 61))
    assert all(r["endpoint"] == "/v1/completions" and r["time"] > 0 for r in records)
    assert [o[0] for o in outcomes[:2]] == [401, 401]
    faults = [r["fault"] for r in records]
    assert faults[:2] == ["fail_first", "fail_first"]
    assert set(faults[2:]) == {None, "429", "500", "503", "hang", "malformed", "empty_choices"}
    for (status, texts), r in zip(outcomes, records, strict=True):
        if status == "malformed":
            assert (r["status"], r["fault"], r["texts"]) == (200, "malformed", [])
        else:
            assert r["status"] == status and r["texts"] == texts
            assert (status == 200) == (r["fault"] in (None, "hang", "empty_choices"))
    # the log is what a run's output can be checked against: every served instruction
    served = [t for r in records if r["status"] == 200 for t in r["texts"]]
    assert served and all("\n10. " in t for t in served)


# -- diversity ------------------------------------------------------------------------------


def test_bootstrap_instructions_are_diverse(server):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    tokenize = pytest.importorskip("rouge_score.tokenize")
    r = client(server).completions.create(
        model=MODEL, prompt=[BOOTSTRAP] * 40, max_tokens=1000, temperature=0.7, stop=["\n\n"]
    )
    instructions = [
        i.strip() for ch in r.choices for i in re.split(r"\n\d+\s?\. ", ch.text) if i.strip()
    ]
    assert len(instructions) == 200 and len(set(instructions)) == 200
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    tokens = [Counter(tokenize.tokenize(i, None)) for i in instructions]
    above = 0
    for (a, ta), (b, tb) in itertools.combinations(zip(instructions, tokens, strict=True), 2):
        # LCS <= shared tokens, so F1 <= 2 * shared / (|a| + |b|): score only pairs that may pass
        if 2 * sum((ta & tb).values()) > 0.7 * (ta.total() + tb.total()):
            above += scorer.score(a, b)["rougeL"].fmeasure > 0.7
    assert above <= 3, above


def test_generator_vocabulary_avoids_filtered_words():
    words = set(ContentGenerator(0).vocabulary)
    assert len(words) >= 5000
    assert not words & {"image", "graph", "picture", "file", "map", "draw", "plot", "video"}
    with pytest.raises(ValueError):
        FaultConfig(rate_429=0.6, rate_500=0.6)
