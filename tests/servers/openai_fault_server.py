"""A real OpenAI-compatible HTTP server for tests, with deterministic content and injected faults.

It answers `POST /v1/completions`, `POST /v1/chat/completions` and `GET /v1/models` the way the
OpenAI API does (same JSON shapes, same error bodies), with content that lets the Self-Instruct
pipeline make progress: new numbered instructions for the bootstrap prompt, " Yes"/" No" for the
classification question, parseable instances for both instance-generation templates. Content is
a pure function of the server seed and the request (plus how many times that exact sampled
request was seen before, so that a repeated prompt at temperature > 0 gets a fresh answer).

Faults are drawn per generation request from a seeded random stream, in arrival order: 429 (with
Retry-After), 500, 503, a hang (longer than any sane client timeout), a malformed JSON body, a
valid body with no choices; plus a fixed latency on every answer and "fail the first N requests"
scripts. With `--log PATH` every answered request appends one JSON line (one `write` on an
O_APPEND descriptor, so a killed server leaves only whole lines).

Run it as its own process so that it never shares a GIL with the client under test:

    python -m tests.servers.openai_fault_server --port 0 --latency 0.3 --rate-429 0.1 --log x.jsonl

prints `LISTENING http://127.0.0.1:PORT` (one flushed stdout line) once it accepts connections.
From Python, use `running_fault_server(**options)`; option names are the `FaultConfig` fields
plus `host`, `port`, `log_path`, `backlog`.

Only the standard library and aiohttp are used, so the file also runs as a plain script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAULT_KINDS = ("429", "500", "503", "hang", "malformed", "empty_choices")
DEFAULT_MODEL = "fault-server-model"
#: status logged for a request whose client went away before it was answered (nginx's code)
CLIENT_CLOSED = 499

# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class FaultConfig:
    """Everything that shapes the server's answers. Rates are probabilities per request."""

    seed: int = 0
    #: seconds added to every answer of a generation endpoint (asyncio.sleep, never blocking)
    latency: float = 0.0
    #: extra uniform random delay in [0, latency_jitter) seconds on top of `latency`
    latency_jitter: float = 0.0
    rate_429: float = 0.0
    #: value of the Retry-After header of a 429 (seconds; may be fractional, e.g. "0.5")
    retry_after: float = 0.5
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_hang: float = 0.0
    #: how long a hang lasts before the server answers normally (if the client is still there)
    hang_seconds: float = 30.0
    rate_malformed: float = 0.0
    rate_empty_choices: float = 0.0
    #: the first `fail_first` generation requests (that pass auth and validation) fail with...
    fail_first: int = 0
    #: ...this: an HTTP status ("401", "429", "500", ...) or a fault kind ("hang", "malformed",
    #: "empty_choices")
    fail_status: str = "500"
    #: when set, requests must carry `Authorization: Bearer <api_key>`, else 401
    api_key: str | None = None
    #: when non-empty, other model names get 404 model_not_found; /v1/models lists these
    models: tuple[str, ...] = ()
    #: new instructions in a bootstrap answer
    n_instructions: int = 5
    #: share of tasks answered " Yes" to "Is it classification?"
    classification_ratio: float = 0.3
    #: probability that a bootstrap answer repeats one of the prompt's own instructions verbatim
    #: (as real models do), to exercise the similarity filter; 0 keeps every answer novel
    copy_rate: float = 0.0
    #: max_tokens when a /v1/completions request omits it (OpenAI's legacy default is 16);
    #: chat requests without max_tokens are not truncated
    default_max_tokens: int = 16
    #: answer a repeated identical request at temperature > 0 with a new sample
    vary_repeats: bool = True
    #: share of prompts that always get a 500, chosen by a hash of the prompt and the seed (a
    #: request fails if any of its prompts does): failures that do not depend on arrival order
    rate_fail_prompt: float = 0.0

    def __post_init__(self) -> None:
        rates = [getattr(self, f"rate_{k}") for k in FAULT_KINDS]
        if any(r < 0 or r > 1 for r in rates) or sum(rates) > 1 + 1e-9:
            raise ValueError(f"fault rates must be in [0, 1] and sum to <= 1, got {rates}")
        if self.latency < 0 or self.latency_jitter < 0 or self.hang_seconds < 0:
            raise ValueError("latency, latency_jitter and hang_seconds must be >= 0")
        if self.fail_first < 0:
            raise ValueError("fail_first must be >= 0")
        if not (self.fail_status.isdigit() or self.fail_status in FAULT_KINDS):
            raise ValueError(f"fail_status must be an HTTP status or one of {FAULT_KINDS}")
        if not 0 <= self.rate_fail_prompt <= 1:
            raise ValueError("rate_fail_prompt must be in [0, 1]")
        if self.n_instructions < 1:
            raise ValueError("n_instructions must be >= 1")


# --------------------------------------------------------------------------------------------
# content

_ONSETS = (
    "b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "kr", "l", "m", "n", "p", "pr",
    "qu", "r", "s", "sk", "sl", "st", "t", "tr", "v", "w", "z",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y")
_CODAS = ("", "", "n", "r", "l", "s", "t", "m", "k", "x", "nd", "rt")

# Words the original Self-Instruct filter rejects an instruction for (plus a few more), so that
# generated vocabulary never trips it by accident.
_BANNED = frozenset(
    "image images graph graphs picture pictures file files map maps draw plot go video audio "
    "music flowchart diagram program".split()
)

_NOUNS = (
    "recipe garden budget hotel startup museum bicycle library festival vaccine bridge contract "
    "river telescope bakery harbor podcast tournament orchard satellite election glacier "
    "pharmacy theater vineyard subway lighthouse warehouse newsletter volcano classroom engine "
    "marathon password spreadsheet charity airport insurance cafe forest robot battery kitchen "
    "treaty novel invoice highway hospital vacation apartment wedding interview keyboard "
    "umbrella ferry thermostat greenhouse compost beehive lantern backpack canoe tractor "
    "opera circus kiosk monastery plateau canyon lagoon meadow quarry reservoir workshop "
    "laboratory pension mortgage pipeline protocol algorithm dataset forecast survey "
    "vocabulary grammar dialect proverb legend ritual tariff subsidy harvest drought"
).split()
_ADJECTIVES = (
    "short formal funny persuasive concise friendly sarcastic neutral detailed cheerful "
    "skeptical practical creative honest polite urgent optimistic technical simple dramatic "
    "gentle bold critical balanced playful serious modern historical rural coastal affordable "
    "sustainable noisy quiet ancient digital seasonal local rare popular fragile durable "
    "generous cautious curious elegant humble nostalgic vivid rigorous spooky whimsical"
).split()
_ROLES = (
    "a beginner", "a child", "a retired engineer", "a nurse", "a tourist", "a farmer",
    "a shop owner", "a student", "a journalist", "a chef", "a teenager", "a lawyer",
    "a new employee", "a landlord", "a coach", "a grandparent", "a pilot", "a librarian",
    "an investor", "a volunteer", "a sailor", "a plumber", "a historian", "a gardener",
)  # fmt: skip
_FORMS = (
    "poem", "essay", "tweet", "letter", "summary", "story", "report", "speech", "review",
    "headline", "dialogue", "limerick", "paragraph", "haiku", "product description",
    "blog post", "press release", "riddle", "advertisement", "memo", "toast", "eulogy",
)  # fmt: skip
_NUMBERS = ("two", "three", "four", "five", "six", "seven", "ten")
_PAST_VERBS = (
    "visited rebuilt praised ignored replaced borrowed painted measured cleaned questioned "
    "delivered inspected approved criticized ordered explored repaired described"
).split()

# Instruction frames. Slots: {np} noun phrase (always carries a generated word), {adj}, {num},
# {role}, {form}; [a|b|c] picks one wording. Fixed words are few and varied so that most words
# of an instruction are drawn at random.
_FRAMES = (
    "[Write|Compose|Draft] a {adj} {form} about {np} for {role}.",
    "[Explain|Describe|Clarify] how {np} [affects|changes|shapes] {np}.",
    "[List|Give|Name] {num} ways to [improve|simplify|protect] {np}.",
    "Classify {np} as {adj} or {adj}.",
    "[Summarize|Condense|Recap] {np} in {num} sentences.",
    "Rewrite [this|the] {form} about {np} so it sounds {adj}.",
    "[Generate|Write|List] {num} questions [for|from] {role} about {np}.",
    "[Describe|Introduce|Present] {np} to {role}.",
    "[Compare|Contrast] {np} [with|and] {np}.",
    "[Suggest|Propose|Invent] {adj} names for {np}.",
    "[Outline|Sketch] a plan to [introduce|launch|test] {np} at {np}.",
    "[Identify|Find|Spot] {adj} mistakes in {np}.",
    "Propose {num} experiments testing whether {np} causes {np}.",
    "[Advise|Help] {role} [choosing|deciding] between {np} and {np}.",
    "Predict what happens to {np} when {np} [doubles|disappears|arrives].",
    "[Create|Write|Invent] a {adj} slogan for {np}.",
    "Recommend {np} to {role} who [enjoys|dislikes|studies] {np}.",
    "Estimate how long {np} [takes|needs] to [reach|finish|replace] {np}.",
    "Find the odd one out among {np}, {np} and {np}.",
    "[Email|Message|Ask] {role} about {np}.",
    "Rank {np}, {np} and {np} by {adj} [impact|value|risk].",
    "[Analyze|Assess|Judge] [the tone|the style|the mood] of {np}.",
    "Define {np} [briefly|simply|precisely].",
    "Argue [for|against] banning {np} in {np}.",
    "[Tell|Write|Narrate] a {adj} story in which {np} meets {np}.",
    "Extract every mention of {np} from {np}.",
    "[Paraphrase|Restate|Rephrase] the claim that {np} outperforms {np}.",
    "[Design|Create|Build] a {adj} quiz on {np} for {role}.",
    "[Explain|State|Show] the difference between {np} and {np}.",
    "[Decide|Tell|Judge] whether {np} is {adj} or {adj}.",
    "[Translate|Convert] {np} into {np}.",
    "[Plan|Organize|Schedule] a {adj} [trip|visit|meeting] to {np}.",
    "How [can I|to] [clean|fix|sell|grow] {np} [cheaply|quickly|safely]?",
    "Why do {np} [avoid|prefer|fear] {np}?",
)
# Most noun phrases carry two generated words: that is what keeps ROUGE-L between instructions
# low, since frames and real words repeat across tens of thousands of instructions.
_NP_PATTERNS = (
    "{P} {P}", "{P} {P}", "{P} {P}", "the {P} {P}", "a {P} {P}", "{P} {N}", "the {A} {P} {P}",
    "{P} {P} {N}",
)  # fmt: skip
# A tail clause on most instructions: more generated words, and many more distinct frames.
_SUFFIXES = (
    "", " for the {P} {N} team", " in {P} {P}", " using {P} and {P}", " without mentioning {P}",
    " as seen by {P} {P}", " and [explain|mention|discuss] {P}", " based on {P} {P}",
    " during the {P} {P} season", " as {P} {P} would", " citing {P} and {P}",
    " near {P} {P}", " before {P} {P} ends", " under {P} {P} rules", " with help from {P}",
    " at the {P} {P} conference", " in the {P} {P} dialect", " after {P} {P}",
)  # fmt: skip
_LABEL_SETS = (
    ("Positive", "Negative"),
    ("Yes", "No"),
    ("True", "False"),
    ("Spam", "Not spam"),
    ("Formal", "Informal", "Neutral"),
    ("Fact", "Opinion"),
    ("Agree", "Disagree", "Unsure"),
)
_SENTENCE_FRAMES = (
    "The {A} {P} near {np} was {V} by {np}.",
    "{np} {V} the {P} twice before the {N} opened.",
    "Nobody expected {np} to be so {A}.",
    "We {V} {np} at the {N} last {P}.",
    "{np} is the most {A} {N} in {P}.",
    "After the {N}, {np} {V} every {P}.",
)


def _words(text: str) -> int:
    return len(text.split())


class ContentGenerator:
    """Deterministic, prompt-appropriate text. One per server; immutable after construction."""

    def __init__(self, seed: int = 0, *, vocab_size: int = 6000) -> None:
        rng = random.Random(f"vocab:{seed}")
        vocab: set[str] = set()
        while len(vocab) < vocab_size:
            word = "".join(
                rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                for _ in range(rng.choice((2, 2, 3)))
            )
            if word not in _BANNED and 4 <= len(word) <= 12:
                vocab.add(word)
        self.vocabulary: tuple[str, ...] = tuple(sorted(vocab))

        self._slots: dict[str, tuple[str, ...] | None] = {
            "np": None,  # a nested noun phrase
            "P": self.vocabulary,
            "N": tuple(_NOUNS),
            "A": tuple(_ADJECTIVES),
            "adj": tuple(_ADJECTIVES),
            "V": tuple(_PAST_VERBS),
            "num": _NUMBERS,
            "role": _ROLES,
            "form": _FORMS,
        }
        self._nps = [self._compile(t) for t in _NP_PATTERNS]
        # a frame's body and its final punctuation, so that a suffix clause can go in between
        self._frames = [(self._compile(f[:-1]), f[-1]) for f in _FRAMES]
        self._suffixes = [self._compile(t) for t in _SUFFIXES]
        self._sentences = [self._compile(t) for t in _SENTENCE_FRAMES]

    # -- pieces --------------------------------------------------------------------------
    # Templates are compiled once into parts: a str is literal text, a tuple is "pick one",
    # None is a nested noun phrase. Rendering then costs one rng.random() per slot.

    def _compile(self, template: str) -> list[str | tuple[str, ...] | None]:
        parts: list[str | tuple[str, ...] | None] = []
        for piece in re.split(r"(\{\w+\}|\[[^\]]+\])", template):
            if piece.startswith("{"):
                parts.append(self._slots[piece[1:-1]])
            elif piece.startswith("["):
                parts.append(tuple(piece[1:-1].split("|")))
            elif piece:
                parts.append(piece)
        return parts

    def _render(self, parts: list, rnd: Any, out: list[str]) -> None:
        for part in parts:
            if part.__class__ is str:
                out.append(part)
            elif part is None:
                nps = self._nps
                self._render(nps[int(rnd() * len(nps))], rnd, out)
            else:
                out.append(part[int(rnd() * len(part))])

    def instruction(self, rng: random.Random) -> str:
        """One task instruction of 6 to 20 words."""
        rnd = rng.random
        while True:
            body, end = self._frames[int(rnd() * len(self._frames))]
            out: list[str] = []
            self._render(body, rnd, out)
            self._render(self._suffixes[int(rnd() * len(self._suffixes))], rnd, out)
            out.append(end)
            text = "".join(out)
            if 6 <= _words(text) <= 20:
                return text[0].upper() + text[1:]

    def sentence(self, rng: random.Random) -> str:
        out: list[str] = []
        self._render(self._sentences[int(rng.random() * len(self._sentences))], rng.random, out)
        text = "".join(out)
        return text[0].upper() + text[1:]

    # -- answers to the pipeline's prompts -----------------------------------------------

    def bootstrap(self, prompt: str, rng: random.Random, n: int, copy_rate: float) -> str:
        """Continue a numbered list of instructions: ' a\\n10. b\\n11. c' after '...\\n9.'."""
        instructions = [self.instruction(rng) for _ in range(n)]
        if copy_rate > 0 and rng.random() < copy_rate:
            given = re.findall(r"(?m)^\s*\d+\s*\.\s*(\S.*?)\s*$", prompt)
            if given:
                instructions[rng.randrange(n)] = rng.choice(given)
        tail = re.search(r"(\d+)\s*\.\s*$", prompt[-24:])
        if tail:  # the prompt opens the next item: the model continues from its number
            first = int(tail.group(1))
            lines = [" " + instructions[0]]
            lines += [f"{first + k}. {text}" for k, text in enumerate(instructions[1:], 1)]
        else:
            numbers = [int(x) for x in re.findall(r"(?m)^\s*(\d+)\s*\.", prompt)]
            first = max(numbers, default=0) + 1
            lines = [f"{first + k}. {text}" for k, text in enumerate(instructions)]
        return "\n".join(lines)

    def is_classification(self, prompt: str, seed: int, ratio: float) -> str:
        tasks = re.findall(r"(?m)^\s*Task:\s*(.*?)\s*$", prompt)
        task = tasks[-1] if tasks else prompt
        digest = hashlib.blake2b(f"{seed}\0{task}".encode(), digest_size=8).digest()
        return " Yes" if int.from_bytes(digest) / 2**64 < ratio else " No"

    def instances_input_first(self, rng: random.Random) -> str:
        parts = []
        for k in range(1, rng.choice((1, 2, 2, 3)) + 1):
            if rng.random() < 0.2:
                parts.append(f"Example {k}\nOutput: {self.sentence(rng)}")
            else:
                parts.append(
                    f"Example {k}\nInput: {self.sentence(rng)}\nOutput: {self.sentence(rng)}"
                )
        return "\n\n".join(parts) + "\n"

    def instances_output_first(self, rng: random.Random) -> str:
        labels = rng.choice(_LABEL_SETS)
        return "".join(
            f"Class label: {label}\nSentence: {self.sentence(rng)}\n" for label in labels
        )

    def judgment(self, prompt: str, rng: random.Random) -> str:
        """A judge's verdict on one example: three yes/no lines and a rating, continuing the
        answer when the prompt opens it ("...Valid task:")."""
        answers = ["yes" if rng.random() < p else "no" for p in (0.9, 0.8, 0.6)]
        rating = rng.choices("ABCD", weights=(4, 3, 2, 1))[0]
        lines = [
            f"Valid task: {answers[0]}",
            f"Input fits: {answers[1]}",
            f"Output correct: {answers[2]}",
            f"Rating: {rating}",
        ]
        text = "\n".join(lines)
        if prompt.rstrip().endswith("Valid task:"):
            return text.removeprefix("Valid task:")
        return text

    def answer(self, prompt: str, rng: random.Random, config: FaultConfig) -> str:
        """The model's continuation of `prompt` (before stop sequences and max_tokens)."""
        if "Output correct: yes or no" in prompt:
            return self.judgment(prompt, rng)
        if "Is it classification?" in prompt:
            return self.is_classification(prompt, config.seed, config.classification_ratio)
        if "Come up with examples for the following tasks" in prompt:
            return self.instances_input_first(rng)
        if "Class label:" in prompt:
            return self.instances_output_first(rng)
        if "Come up with a series of" in prompt:
            return self.bootstrap(prompt, rng, config.n_instructions, config.copy_rate)
        return " " + self.sentence(rng)


def apply_limits(text: str, stop: list[str], max_tokens: int | None) -> tuple[str, str]:
    """Cut `text` at the first stop string, then at `max_tokens` words: (text, finish_reason)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    if max_tokens is not None and max_tokens >= 0 and _words(text) > max_tokens:
        words = list(re.finditer(r"\S+", text))
        end = words[max_tokens - 1].end() if max_tokens > 0 else 0
        return text[:end], "length"
    return text, "stop"


# --------------------------------------------------------------------------------------------
# HTTP


def _error_body(status: int, message: str | None = None, code: str | None = None) -> dict:
    kind = {
        401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
        404: ("invalid_request_error", "model_not_found", "The model does not exist."),
        429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
        500: ("server_error", None, "The server had an error while processing your request."),
        503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    }.get(status, ("invalid_request_error" if status < 500 else "server_error", None, "Error."))
    return {
        "error": {
            "message": message or kind[2],
            "type": kind[0],
            "param": None,
            "code": code if code is not None else kind[1],
        }
    }


class _RequestError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, fault: str = "bad_request"
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.fault = status, message, code, fault


class FaultServerApp:
    """The aiohttp application and its state (sequence numbers, fault stream, log)."""

    def __init__(self, config: FaultConfig, log_path: str | os.PathLike | None = None) -> None:
        from aiohttp import web

        self._web = web
        self.config = config
        self.content = ContentGenerator(config.seed)
        self._fault_rng = random.Random(f"faults:{config.seed}")
        self._jitter_rng = random.Random(f"jitter:{config.seed}")
        self._seq = 0
        self._generation_requests = 0
        self._seen: dict[bytes, int] = {}
        self._log_fd = (
            os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log_path else None
        )
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/completions", self._completions)
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_get("/v1/models", self._models)
        self.app.on_cleanup.append(self._close_log)

    async def _close_log(self, _app: Any) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    # -- log -------------------------------------------------------------------------------

    def _log(self, seq: int, endpoint: str, status: int, fault: str | None, texts: list[str]):
        if self._log_fd is None:
            return
        record = {
            "seq": seq,
            "endpoint": endpoint,
            "status": status,
            "fault": fault,
            "texts": texts,
            "time": time.time(),
        }
        # One write() on an O_APPEND descriptor: the line is whole or absent, even after SIGKILL.
        os.write(self._log_fd, (json.dumps(record) + "\n").encode())

    # -- endpoints -------------------------------------------------------------------------

    async def _models(self, request: Any) -> Any:
        self._seq += 1
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fault-server"}
            for m in self.config.models or (DEFAULT_MODEL,)
        ]
        self._log(self._seq, "/v1/models", 200, None, [])
        return self._web.json_response({"object": "list", "data": data})

    async def _completions(self, request: Any) -> Any:
        return await self._generation(request, "/v1/completions")

    async def _chat(self, request: Any) -> Any:
        return await self._generation(request, "/v1/chat/completions")

    async def _generation(self, request: Any, endpoint: str) -> Any:
        self._seq += 1
        seq = self._seq
        cfg = self.config
        fault: str | None = None
        try:
            await self._delay()
            body = await self._validate(request, endpoint)
            self._generation_requests += 1
            fault = self._draw_fault()
            if fault is None and self._fails_by_prompt(body, endpoint):
                fault = "500"
            if fault == "hang":
                await asyncio.sleep(cfg.hang_seconds)
            elif fault == "fail_first" or (fault is not None and fault.isdigit()):
                status = int(cfg.fail_status) if fault == "fail_first" else int(fault)
                return self._error(seq, endpoint, status, fault)
            elif fault == "malformed":
                self._log(seq, endpoint, 200, fault, [])
                broken = b'{"id": "cmpl-broken", "object": "text_completion", "choices": [{"te'
                return self._web.Response(body=broken, content_type="application/json")
            # an empty answer generates nothing, so a retry gets what this request would have
            payload, texts = self._answer(body, endpoint, seq, generate=fault != "empty_choices")
            self._log(seq, endpoint, 200, fault, texts)
            return self._web.Response(
                body=json.dumps(payload).encode(),
                content_type="application/json",
                headers={"x-request-id": f"req_{seq:012x}"},
            )
        except _RequestError as e:
            return self._error(seq, endpoint, e.status, e.fault, e.message, e.code)
        except asyncio.CancelledError:  # the client went away (handler cancellation)
            self._log(seq, endpoint, CLIENT_CLOSED, fault, [])
            raise

    async def _delay(self) -> None:
        cfg = self.config
        delay = cfg.latency
        if cfg.latency_jitter:
            delay += self._jitter_rng.random() * cfg.latency_jitter
        if delay > 0:
            await asyncio.sleep(delay)

    def _draw_fault(self) -> str | None:
        cfg = self.config
        u = self._fault_rng.random()  # drawn for every request so the stream is reproducible
        if self._generation_requests <= cfg.fail_first:
            return "fail_first" if cfg.fail_status.isdigit() else cfg.fail_status
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += getattr(cfg, f"rate_{kind}")
            if u < edge:
                return kind
        return None

    def _fails_by_prompt(self, body: dict, endpoint: str) -> bool:
        rate = self.config.rate_fail_prompt
        if rate <= 0:
            return False
        prompts = (
            [_chat_text(body["messages"])] if endpoint == "/v1/chat/completions" else body["prompt"]
        )
        for prompt in prompts:
            digest = hashlib.blake2b(f"fail\0{self.config.seed}\0{prompt}".encode(), digest_size=8)
            if int.from_bytes(digest.digest()) / 2**64 < rate:
                return True
        return False

    def _error(
        self,
        seq: int,
        endpoint: str,
        status: int,
        fault: str | None,
        message: str | None = None,
        code: str | None = None,
    ) -> Any:
        headers = {"x-request-id": f"req_{seq:012x}"}
        if status == 429:
            ra = self.config.retry_after
            headers["Retry-After"] = str(int(ra)) if ra == int(ra) else f"{ra:g}"
            headers["retry-after-ms"] = str(round(ra * 1000))
        self._log(seq, endpoint, status, fault, [])
        return self._web.json_response(
            _error_body(status, message, code), status=status, headers=headers
        )

    async def _validate(self, request: Any, endpoint: str) -> dict:
        cfg = self.config
        if cfg.api_key is not None:
            auth = request.headers.get("Authorization", "")
            if auth != f"Bearer {cfg.api_key}":
                given = auth.removeprefix("Bearer ").strip()
                shown = f"{given[:3]}...{given[-4:]}" if len(given) > 8 else "(none)"
                raise _RequestError(
                    401, f"Incorrect API key provided: {shown}.", "invalid_api_key", "auth"
                )
        try:
            body = json.loads(await request.read())
        except ValueError as e:
            raise _RequestError(400, f"We could not parse the JSON body: {e}") from None
        if not isinstance(body, dict):
            raise _RequestError(400, "The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _RequestError(400, "you must provide a model parameter")
        if cfg.models and model not in cfg.models:
            raise _RequestError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "model_not_found",
                "model_not_found",
            )
        if body.get("stream"):
            raise _RequestError(400, "stream=true is not supported by the fault server")
        if endpoint == "/v1/completions":
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                prompt = [prompt]
            if not (
                isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt)
            ):
                raise _RequestError(400, "prompt must be a string or a non-empty list of strings")
            body["prompt"] = prompt
        else:
            messages = body.get("messages")
            if not (isinstance(messages, list) and messages):
                raise _RequestError(400, "messages must be a non-empty list")
            for m in messages:
                if not (isinstance(m, dict) and isinstance(m.get("role"), str)):
                    raise _RequestError(400, "each message needs a role and content")
        stop = body.get("stop")
        if stop is None:
            body["stop"] = []
        elif isinstance(stop, str):
            body["stop"] = [stop]
        elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise _RequestError(400, "stop must be a string or a list of strings")
        for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
            v = body.get(name)
            if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
                raise _RequestError(400, f"{name} must be a number")
        for name in ("max_tokens", "max_completion_tokens", "n"):
            v = body.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise _RequestError(400, f"{name} must be a non-negative integer")
        return body

    def _answer(
        self, body: dict, endpoint: str, seq: int, generate: bool = True
    ) -> tuple[dict, list[str]]:
        cfg = self.config
        n = body.get("n") or 1
        temperature = body.get("temperature")
        sampled = cfg.vary_repeats and (temperature is None or temperature > 0)
        request_seed = body.get("seed")
        chat = endpoint == "/v1/chat/completions"
        if chat:
            prompts = [_chat_text(body["messages"])]
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        else:
            prompts = body["prompt"]
            max_tokens = body.get("max_tokens", cfg.default_max_tokens)
        choices, texts = [], []
        prompt_tokens = completion_tokens = 0
        for prompt in prompts:
            prompt_tokens += _words(prompt)
            for j in range(n if generate else 0):
                key = hashlib.blake2b(
                    f"{cfg.seed}\0{endpoint}\0{request_seed}\0{j}\0{prompt}".encode(),
                    digest_size=16,
                ).digest()
                repeat = 0
                if sampled:
                    repeat = self._seen.get(key, 0)
                    self._seen[key] = repeat + 1
                rng = random.Random(key + repeat.to_bytes(8))
                text, finish = apply_limits(
                    self.content.answer(prompt, rng, cfg), body["stop"], max_tokens
                )
                completion_tokens += _words(text)
                texts.append(text)
                index = len(choices)
                if chat:
                    choices.append(
                        {
                            "index": index,
                            "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    )
                else:
                    choices.append(
                        {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
                    )
        request_id = hashlib.blake2b(f"{cfg.seed}:{seq}".encode(), digest_size=12).hexdigest()
        payload = {
            "id": ("chatcmpl-" if chat else "cmpl-") + request_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_faultserver",
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return payload, texts


def _chat_text(messages: list[dict]) -> str:
    """The text a chat model sees, for choosing an answer: every message's content, in order."""
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        if isinstance(content, str):
            parts.append(content)
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# process entry point


async def serve(
    config: FaultConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_path: str | None = None,
    backlog: int = 2048,
    exit_with_parent: bool = False,
    shutdown_timeout: float = 0.5,
) -> None:
    """Run until SIGTERM/SIGINT (or the parent's death); print LISTENING once bound."""
    from aiohttp import web

    server = FaultServerApp(config, log_path)
    # handler_cancellation: a handler (a hang, a latency sleep) ends when its client disconnects
    runner_kw: dict[str, Any] = {"access_log": None, "handler_cancellation": True}
    site_kw: dict[str, Any] = {"backlog": backlog, "reuse_address": True}
    # aiohttp moved shutdown_timeout from the site to the runner in 3.10
    if "shutdown_timeout" in inspect.signature(web.BaseRunner.__init__).parameters:
        runner_kw["shutdown_timeout"] = shutdown_timeout
    else:
        site_kw["shutdown_timeout"] = shutdown_timeout
    runner = web.AppRunner(server.app, **runner_kw)
    await runner.setup()
    site = web.TCPSite(runner, host, port, **site_kw)
    await site.start()
    bound_port = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"LISTENING http://{host}:{bound_port}\n")
    sys.stdout.flush()
    parent = os.getppid()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            if exit_with_parent and os.getppid() != parent:
                break
    finally:
        await runner.cleanup()


_HELP = {
    "seed": "seed of content and fault draws",
    "latency": "seconds added to every generation answer",
    "latency_jitter": "extra uniform random delay, up to this many seconds",
    "rate_429": "share of requests answered 429 with Retry-After",
    "retry_after": "Retry-After seconds of a 429 (fractional allowed)",
    "rate_500": "share answered 500",
    "rate_503": "share answered 503",
    "rate_hang": "share that hang for --hang-seconds, then answer (or end on disconnect)",
    "hang_seconds": "length of a hang",
    "rate_malformed": "share answered 200 with a body that is not JSON",
    "rate_empty_choices": 'share answered 200 with "choices": []',
    "fail_first": "fail the first N generation requests with --fail-status",
    "n_instructions": "new instructions per bootstrap answer",
    "classification_ratio": 'share of tasks answered " Yes" to "Is it classification?"',
    "copy_rate": "chance a bootstrap answer repeats one of the prompt's instructions",
    "rate_fail_prompt": "share of prompts that always get 500 (by a hash of the prompt)",
    "default_max_tokens": "max_tokens of a /v1/completions request that omits it",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.servers.openai_fault_server",
        description="OpenAI-compatible test server with deterministic content and fault injection.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--backlog", type=int, default=2048)
    p.add_argument("--log", dest="log_path", default=None, help="append one JSON line per answer")
    p.add_argument("--exit-with-parent", action="store_true", help="quit when the parent dies")
    defaults = FaultConfig()
    for f in dataclasses.fields(FaultConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.name == "vary_repeats":
            p.add_argument(
                "--no-vary-repeats",
                dest=f.name,
                action="store_false",
                help="answer a repeated identical request identically even at temperature > 0",
            )
        elif f.name == "models":
            p.add_argument(flag, default="", help="comma-separated accepted model names")
        elif f.name == "api_key":
            p.add_argument(flag, default=None, help="require this bearer key")
        elif f.name == "fail_status":
            p.add_argument(flag, default=default, help=f"HTTP status or one of {FAULT_KINDS}")
        else:
            p.add_argument(
                flag,
                type=type(default),
                default=default,
                metavar=type(default).__name__.upper(),
                help=f"{_HELP.get(f.name, '')} (default {default})",
            )
    return p


def config_from_args(ns: argparse.Namespace) -> FaultConfig:
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(FaultConfig)}
    values["models"] = tuple(m for m in values["models"].split(",") if m)
    return FaultConfig(**values)


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        config = config_from_args(ns)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    asyncio.run(
        serve(
            config,
            host=ns.host,
            port=ns.port,
            log_path=ns.log_path,
            backlog=ns.backlog,
            exit_with_parent=ns.exit_with_parent,
        )
    )
    return 0


# --------------------------------------------------------------------------------------------
# helper for tests: the server as a subprocess


@dataclass
class FaultServer:
    """A running server subprocess."""

    process: subprocess.Popen
    host: str
    port: int
    log_path: Path | None

    @property
    def base_url(self) -> str:
        """What to give `openai.OpenAI(base_url=...)`."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def read_log(self) -> list[dict]:
        """The log's records so far (a torn last line, impossible by design, would be skipped)."""
        if self.log_path is None or not self.log_path.exists():
            return []
        records = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()

    def kill(self) -> None:
        """SIGKILL: the way to test what a crashed server leaves behind."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


_OPTION_NAMES = {f.name for f in dataclasses.fields(FaultConfig)}


def start_fault_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_path: str | os.PathLike | None = None,
    backlog: int = 2048,
    startup_timeout: float = 20.0,
    **config: Any,
) -> FaultServer:
    """Start the server subprocess and wait for its LISTENING line. Stop it with `.stop()`."""
    unknown = set(config) - _OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown fault server options: {sorted(unknown)}")
    FaultConfig(**{k: tuple(v) if k == "models" else v for k, v in config.items()})  # validate
    args = [sys.executable, str(Path(__file__).resolve()), "--exit-with-parent"]
    args += ["--host", host, "--port", str(port), "--backlog", str(backlog)]
    if log_path is not None:
        args += ["--log", str(log_path)]
    for name, value in config.items():
        flag = "--" + name.replace("_", "-")
        if name == "vary_repeats":
            if not value:
                args.append("--no-vary-repeats")
        elif name == "models":
            args += [flag, ",".join(value)]
        elif value is not None:
            args += [flag, str(value)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    # Read the first line without blocking forever: a watchdog kills a server that stays silent.
    timer = _Watchdog(process, startup_timeout)
    try:
        line = process.stdout.readline() if process.stdout else ""
    finally:
        timer.cancel()
    match = re.match(r"LISTENING http://(.+):(\d+)\s*$", line)
    if not match:
        if process.poll() is None:
            process.kill()
        process.wait()
        raise RuntimeError(f"fault server did not start (exit {process.returncode}): {line!r}")
    return FaultServer(
        process=process,
        host=match.group(1),
        port=int(match.group(2)),
        log_path=Path(log_path) if log_path is not None else None,
    )


class _Watchdog:
    def __init__(self, process: subprocess.Popen, timeout: float) -> None:
        import threading

        self._timer = threading.Timer(timeout, lambda: process.poll() is None and process.kill())
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()


@contextlib.contextmanager
def running_fault_server(**options: Any) -> Iterator[FaultServer]:
    """`with running_fault_server(latency=0.3, rate_429=0.1, log_path=p) as srv: srv.base_url`"""
    server = start_fault_server(**options)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
