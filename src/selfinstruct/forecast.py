"""The bill before the run: requests, tokens, cost and time of a run, before any model call.

Prompts are built the way the steps build them, from the seed tasks (step 1's from a random 8
of them; steps 2 and 3 and the judge from each seed task as a stand-in for the instructions to
come), and counted with the rule below. What each request brings back comes from the yields the
paper measured (its Table 1), or, after `pilot`, from N real requests of this model on these
seeds, which the forecast then says.

Token rule (no tokenizer is downloaded): ceil(characters / 4) for a prompt, OpenAI's rule of
thumb for English text, and 4/3 tokens a word for the answers whose length the paper gives in
words. A pilot replaces both with the server's own counts, per prompt and per step.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from selfinstruct.batchapi import round_requests
from selfinstruct.errors import BudgetExhausted
from selfinstruct.judge.verdict import JUDGE_MAX_TOKENS, judge_prompt
from selfinstruct.models.spec import parse_spec
from selfinstruct.prompts import bootstrap_prompt, classification_prompt, instance_prompt
from selfinstruct.records import SeedTask
from selfinstruct.runfile import RunFile
from selfinstruct.steps.instructions import InstructionSettings

CHARS_PER_TOKEN = 4
TOKENS_PER_WORD = 4 / 3
STEPS = ("instructions", "classify", "instances", "judge")
RUN_STEPS = STEPS[:3]  # what `run` sends to the model (step 4 makes no call)

# The paper's Table 1: GPT-3's 52,445 kept instructions and what they became.
PAPER_INSTRUCTIONS = 52_445
PAPER_CLASSIFICATION = 11_584
PAPER_INSTANCES = 82_439
PAPER_EMPTY_INPUT = 35_878
PAPER_WORDS = {"instruction": 15.9, "input": 12.7, "output": 18.9}
# Step 1's answer lists the instructions numbered 9 to 15 (it stops at "16"): at most 7.
NEW_ITEMS_PER_ANSWER = 7
# Seconds one request takes online when no pilot measured it: a rule, 1 s plus 50 tokens/s.
BASE_SECONDS, TOKENS_PER_SECOND = 1.0, 50.0


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass
class Yields:
    """What each request brings back: the paper's figures, or a pilot's measurements."""

    source: str
    kept_per_prompt: float  # step 1: instructions kept per prompt sent
    classification_share: float  # step 2: share labelled classification
    instances_per_task: float  # step 4: training examples per instruction
    completion_tokens: dict[str, float]  # per prompt, by step
    prompt_tokens: dict[str, float] = field(default_factory=dict)  # per prompt (pilot only)
    seconds_per_request: float | None = None  # pilot only
    drops_per_prompt: dict[str, float] = field(default_factory=dict)  # step 1, by reason


def paper_yields() -> Yields:
    """The paper's yields. It does not say how many prompts step 1 sent: we assume one kept
    instruction per prompt (what step 1 itself assumes when it decides how many to send)."""
    instances = PAPER_INSTANCES / PAPER_INSTRUCTIONS
    with_input = 1 - PAPER_EMPTY_INPUT / PAPER_INSTANCES
    instance_words = with_input * PAPER_WORDS["input"] + PAPER_WORDS["output"] + 4  # + labels
    return Yields(
        source="the paper's Table 1 (52,445 instructions, 82,439 instances)",
        kept_per_prompt=1.0,
        classification_share=PAPER_CLASSIFICATION / PAPER_INSTRUCTIONS,
        instances_per_task=instances,
        completion_tokens={
            "instructions": NEW_ITEMS_PER_ANSWER
            * (PAPER_WORDS["instruction"] + 1)
            * TOKENS_PER_WORD,
            "classify": 1.0,
            "instances": instances * instance_words * TOKENS_PER_WORD,
            "judge": JUDGE_MAX_TOKENS / 2,
        },
    )


@dataclass
class StepForecast:
    step: str
    requests: int
    prompts: int
    prompt_tokens: int
    completion_tokens: int

    def cost(self, price: tuple[float, float] | None) -> float | None:
        if price is None:
            return None
        return (self.prompt_tokens * price[0] + self.completion_tokens * price[1]) / 1e6


@dataclass
class Forecast:
    """A run's forecast; `to_dict` is what forecast.json holds."""

    model: str
    num_instructions: int
    yields: Yields
    steps: list[StepForecast]  # online
    batch_steps: list[StepForecast]  # in Batch API mode (step 1 sends in rounds)
    training_examples: int
    concurrency: int
    seconds_per_request: float
    batch_rounds: int  # step 1's rounds in Batch API mode
    price: tuple[float, float] | None = None
    batch_price: tuple[float, float] | None = None

    def total(self, what: str) -> int:
        return sum(getattr(s, what) for s in self.steps)

    def cost(self, batch: bool = False) -> float | None:
        price = self.batch_price if batch else self.price
        costs = [s.cost(price) for s in (self.batch_steps if batch else self.steps)]
        return None if price is None else sum(c or 0.0 for c in costs)

    def online_seconds(self) -> float:
        waves = sum(math.ceil(s.requests / self.concurrency) for s in self.steps)
        return waves * self.seconds_per_request

    def batches_in_sequence(self) -> int:
        """Batches that must finish one after another: step 1's rounds, one a later step."""
        return sum(self.batch_rounds if s.step == "instructions" else 1 for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "num_instructions": self.num_instructions,
            "yields": asdict(self.yields),
            "steps": _by_step(self.steps),
            "batch_steps": _by_step(self.batch_steps),
            "requests": self.total("requests"),
            "prompt_tokens": self.total("prompt_tokens"),
            "completion_tokens": self.total("completion_tokens"),
            "training_examples": self.training_examples,
            "cost_usd_online": _round(self.cost()),
            "cost_usd_batch": _round(self.cost(batch=True)),
            "concurrency": self.concurrency,
            "seconds_per_request": self.seconds_per_request,
            "online_wall_seconds": round(self.online_seconds(), 1),
            "batch_rounds_step1": self.batch_rounds,
            "batches_in_sequence": self.batches_in_sequence(),
            "price_per_million_tokens": self.price,
            "batch_price_per_million_tokens": self.batch_price,
        }

    def rows(self) -> list[tuple[str, str]]:
        rows = [("yields from", self.yields.source)]
        for s in self.steps:
            rows.append(
                (
                    f"{s.step}",
                    f"{s.requests:,} requests, {s.prompt_tokens:,} prompt +"
                    f" {s.completion_tokens:,} completion tokens",
                )
            )
        rows.append(("requests", f"{self.total('requests'):,}"))
        rows.append(("prompt tokens", f"{self.total('prompt_tokens'):,}"))
        rows.append(("completion tokens", f"{self.total('completion_tokens'):,}"))
        rows.append(("training examples (step 4)", f"{self.training_examples:,}"))
        for label, value in (("online", self.cost()), ("Batch API", self.cost(batch=True))):
            shown = "give --price" if value is None else f"${value:,.2f}"
            rows.append((f"cost, {label}", shown))
        rows.append(
            (
                f"wall time online at concurrency {self.concurrency}",
                f"{_duration(self.online_seconds())} ({self.seconds_per_request:.2f} s a request)",
            )
        )
        rows.append(
            (
                "wall time, Batch API",
                f"{self.batches_in_sequence()} batches one after another"
                f" (step 1 in {self.batch_rounds} rounds), each within 24 h",
            )
        )
        return rows


def requests_per_prompt_list(model_spec: str, request_batch_size: int) -> int:
    """Prompts one request carries for this model spec, without building the model."""
    spec = parse_spec(model_spec)
    if spec.backend == "local" or spec.api == "chat":
        return 1
    return max(1, min(request_batch_size, int(spec.options.get("batch", 20))))


def estimate(
    seeds: list[SeedTask],
    *,
    num_instructions: int,
    model_spec: str,
    steps: tuple[str, ...] = RUN_STEPS,
    request_batch_size: int = 5,
    num_prompt_instructions: int = 8,
    already: int = 0,
    yields: Yields | None = None,
    price: tuple[float, float] | None = None,
    batch_price: tuple[float, float] | None = None,
    concurrency: int = 8,
    seconds_per_request: float | None = None,
    seed: int = 42,
    lag: int | None = None,
) -> Forecast:
    """The forecast of a run of `num_instructions` instructions, `already` of them made."""
    y = yields or paper_yields()
    per_request = requests_per_prompt_list(model_spec, request_batch_size)
    prompt_tokens = {**_prompt_tokens(seeds, num_prompt_instructions, y, seed), **y.prompt_tokens}
    missing = max(0, num_instructions - already)
    # Step 1 holds at most `lag` requests undecided; in Batch API mode the lag is the round.
    window = min(concurrency, lag or InstructionSettings.lag)
    step1_online = _online_requests(missing, y.kept_per_prompt, per_request, window)
    step1_batch, rounds = _batch_rounds(
        missing, y.kept_per_prompt, per_request, round_requests(num_instructions, per_request)
    )
    requests = {
        "classify": math.ceil(num_instructions / per_request),
        "instances": math.ceil(num_instructions / per_request),
        "judge": math.ceil(num_instructions * y.instances_per_task / per_request),
    }

    def forecast(step: str, n_requests: int) -> StepForecast:
        if step == "instructions":
            prompts = n_requests * per_request
        else:  # every task once; the last request may carry fewer
            prompts = (
                num_instructions
                if step != "judge"
                else round(num_instructions * y.instances_per_task)
            )
        return StepForecast(
            step=step,
            requests=n_requests,
            prompts=prompts,
            prompt_tokens=round(prompts * prompt_tokens[step]),
            completion_tokens=round(prompts * y.completion_tokens[step]),
        )

    online = [forecast(s, step1_online if s == "instructions" else requests[s]) for s in steps]
    batch = [forecast(s, step1_batch if s == "instructions" else requests[s]) for s in steps]
    if seconds_per_request is None:
        seconds_per_request = y.seconds_per_request or _seconds(online)
    return Forecast(
        model=model_spec,
        num_instructions=num_instructions,
        yields=y,
        steps=online,
        batch_steps=batch,
        training_examples=round(num_instructions * y.instances_per_task),
        concurrency=concurrency,
        seconds_per_request=round(seconds_per_request, 3),
        batch_rounds=rounds,
        price=price,
        batch_price=batch_price or (None if price is None else (price[0] / 2, price[1] / 2)),
    )


def _prompt_tokens(
    seeds: list[SeedTask], num_prompt_instructions: int, y: Yields, seed: int
) -> dict[str, float]:
    """Mean prompt tokens of each step's prompts, built as the steps build them."""
    rng = random.Random(seed)
    texts = [t.instruction for t in seeds]
    k = min(num_prompt_instructions, len(texts))
    bootstrap = [bootstrap_prompt(rng.sample(texts, k)) for _ in range(200)]
    share = y.classification_share
    instance = [
        share * count_tokens(instance_prompt(t.instruction, is_classification=True))
        + (1 - share) * count_tokens(instance_prompt(t.instruction, is_classification=False))
        for t in seeds
    ]
    judged = [
        judge_prompt(t.instruction, i.input, i.output) for t in seeds for i in t.instances[:1]
    ]
    return {
        "instructions": _mean(count_tokens(p) for p in bootstrap),
        "classify": _mean(count_tokens(classification_prompt(t)) for t in texts),
        "instances": _mean(instance),
        "judge": _mean(count_tokens(p) for p in judged),
    }


# Step 1 sends a request while a slot is free and the prompts in flight do not yet cover what
# is missing (it counts on one kept instruction a prompt); these replay that rule with the
# expected yield, answers coming back in the order they were sent.
_MAX_STEPS = 1_000_000


def _online_requests(missing: int, kept: float, per_request: int, concurrency: int) -> int:
    in_flight, sent, left = 0, 0, float(missing)
    for _ in range(_MAX_STEPS):
        while in_flight < concurrency and in_flight * per_request < left:
            in_flight, sent = in_flight + 1, sent + 1
        if not in_flight or left <= 0:
            break
        in_flight, left = in_flight - 1, left - per_request * kept
    return sent


def _batch_rounds(missing: int, kept: float, per_request: int, lag: int) -> tuple[int, int]:
    """(requests, rounds) in Batch API mode: a round is what the step sends before it must
    wait, `lag` requests or fewer when fewer cover what is missing."""
    sent, rounds, left = 0, 0, float(missing)
    while left > 0 and rounds < _MAX_STEPS and kept > 0:
        n = min(lag, math.ceil(left / per_request))
        sent, rounds, left = sent + n, rounds + 1, left - n * per_request * kept
    return sent, rounds


def _seconds(steps: list[StepForecast]) -> float:
    requests = sum(s.requests for s in steps) or 1
    tokens = sum(s.completion_tokens for s in steps) / requests
    return BASE_SECONDS + tokens / TOKENS_PER_SECOND


def _by_step(steps: list[StepForecast]) -> dict[str, dict[str, int]]:
    return {s.step: {k: v for k, v in asdict(s).items() if k != "step"} for s in steps}


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- the pilot ------------------------------------------------------------------------------


def pilot(pipeline: Any, requests: int, *, request_batch_size: int = 5) -> Yields:
    """Run `requests` real step-1 requests (online) into the run folder's `pilot/`, then steps
    2 to 4 on what they kept, and return the yields they measured."""
    from selfinstruct.pipeline import Pipeline

    folder = pipeline.folder.path / "pilot"
    engine = replace(pipeline.engine, max_requests=requests)
    with Pipeline(
        folder,
        pipeline.model,
        seeds=pipeline.seeds,
        engine=engine,
        seed=pipeline.seed,
        reporter=pipeline.reporter,
        command="estimate --pilot",
    ) as p:
        p.model  # noqa: B018 - loaded and checked before the clock starts
        started = time.monotonic()
        try:
            p.generate_instructions(10**9, request_batch_size=request_batch_size)
        except BudgetExhausted:
            pass  # the pilot's end
        p.engine = replace(pipeline.engine, max_requests=None)
        p.identify_classification(request_batch_size=request_batch_size)
        p.generate_instances(request_batch_size=request_batch_size)
        elapsed = time.monotonic() - started  # steps 1-3: every model call of the pilot
        p.prepare(decontaminate=[])
    per_request = max(1, min(request_batch_size, pipeline.model.max_batch))
    concurrency = pipeline.engine.concurrency or pipeline.model.default_concurrency
    return _measured(RunFile(folder).data, per_request, elapsed, concurrency)


def _measured(run: dict, per_request: int, elapsed: float, concurrency: int) -> Yields:
    steps = run["steps"]
    kept = steps["instructions"]["counts"]["instructions_in_file"]
    usage = {name: s.get("usage", {}) for name, s in steps.items()}
    sent = usage["instructions"].get("requests", 0)
    step1_prompts = max(1, sent * per_request)
    prompts = {
        "instructions": step1_prompts,
        "classify": steps["classify"]["counts"]["instructions"],
        "instances": steps["instances"]["counts"]["tasks"],
    }
    counts4 = steps["prepare"]["counts"]
    clf = steps["classify"]["counts"]
    # Requests go in waves of `concurrency`: the time of one is the pilot's time per wave.
    waves = sum(
        math.ceil(usage[name].get("requests", 0) / max(1, concurrency))
        for name in ("instructions", "classify", "instances")
    )
    return Yields(
        source=f"a pilot of {sent} requests ({kept} instructions kept) in pilot/",
        kept_per_prompt=kept / step1_prompts,
        classification_share=clf["yes"] / max(1, clf["instructions"]),
        instances_per_task=counts4["generated_instances"] / max(1, counts4["tasks_read"]),
        completion_tokens={
            **paper_yields().completion_tokens,
            **{s: usage[s].get("completion_tokens", 0) / max(1, n) for s, n in prompts.items()},
        },
        prompt_tokens={s: usage[s].get("prompt_tokens", 0) / max(1, n) for s, n in prompts.items()},
        seconds_per_request=elapsed / max(1, waves),
        drops_per_prompt={
            k: v / step1_prompts for k, v in steps["instructions"]["dropped"].items()
        },
    )


# --- forecast beside actual -----------------------------------------------------------------


def beside_actual(forecast: dict[str, Any], run: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(what, forecast, actual) for each figure that forecast.json and run.json both have:
    per step requests and tokens, the whole run's cost, and step 4's training examples. The
    cost is compared at the mode the run's steps used (batch where they ran in batches)."""
    rows: list[tuple[str, Any, Any]] = []
    steps = run.get("steps") or {}
    batch = any("batch" in (s or {}) for s in steps.values())
    planned = forecast.get("batch_steps" if batch else "steps") or {}
    for name, plan in planned.items():
        usage = (steps.get(name) or {}).get("usage")
        if not usage:
            continue
        for what in ("requests", "prompt_tokens", "completion_tokens"):
            rows.append((f"{name}: {what.replace('_', ' ')}", plan.get(what), usage.get(what)))
    made = ((steps.get("prepare") or {}).get("counts") or {}).get("generated_instances")
    if made is not None:
        rows.append(("training examples", forecast.get("training_examples"), made))
    cost = forecast.get("cost_usd_batch" if batch else "cost_usd_online")
    if cost is not None and run.get("cost_usd") is not None:
        rows.append((f"cost, USD ({'Batch API' if batch else 'online'})", cost, run["cost_usd"]))
    return rows
