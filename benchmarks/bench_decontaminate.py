"""Decontamination at the paper's scale: 82K training instances against an evaluation set.

Training data: 52K distinct instructions from the fault server's generator
(tests/servers/openai_fault_server.py), 82K instances in all (an input on 60 % of them), with
40 planted copies of evaluation items (case and punctuation changed, words around them).
Evaluation set: the paper's 252 user-oriented tasks when `default_eval_sets()` finds them
(``$SELFINSTRUCT_EVAL_DIR`` or ``shared/data/self-instruct/`` beside the checkout), else our own
175 seed tasks as a stand-in.

Reported, each beside the others:

* ours: `Decontaminator.check_many` over all 82K (both tests: 13-grams and ROUGE-L > 0.7);
* the same checker one example at a time (`check`, plain Python loops over the n-gram windows
  and one ROUGE-L query per instance), on a sample, extrapolated;
* the naive ROUGE-L baseline: rouge-score's scorer on every (instruction, eval instruction)
  pair, on a sample of instances, extrapolated to 82K (what the rest of the check costs is not
  even counted for it).

    .venv/bin/python benchmarks/bench_decontaminate.py            # about 1 minute
    .venv/bin/python benchmarks/bench_decontaminate.py --quick    # 20K instances
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfinstruct.decontaminate import (  # noqa: E402
    Decontaminator,
    EvalItem,
    default_eval_sets,
    load_eval_items,
)
from selfinstruct.seeds import default as default_seeds  # noqa: E402
from tests.servers.openai_fault_server import ContentGenerator  # noqa: E402


def training_set(n_instances: int, n_instructions: int, items: list[EvalItem], seed: int = 1):
    content = ContentGenerator(seed)
    rng = random.Random(seed)
    instructions = [content.instruction(rng) for _ in range(n_instructions)]
    examples = []
    for k in range(n_instances):
        # Every instruction once, then the rest at random: 1 to a few instances each.
        instruction = instructions[k] if k < n_instructions else rng.choice(instructions)
        examples.append((instruction, content.sentence(rng) if rng.random() < 0.6 else ""))
    planted = set()
    for _ in range(40):
        item = rng.choice(items)
        edited = (f"Hey! {item.instruction.upper()} Thanks.", item.input.lower() + " ...")
        k = rng.randrange(len(examples))
        examples[k] = edited
        planted.add(k)
    return examples, planted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20K instances instead of 82K")
    ap.add_argument("--sample", type=int, default=300, help="instances timed for the baselines")
    args = ap.parse_args()
    n_instances, n_instructions = (20_000, 13_000) if args.quick else (82_000, 52_000)

    paths = default_eval_sets()
    if paths:
        items = load_eval_items(paths)
        name = f"{paths[0].name} ({len(items)} items)"
    else:
        items = [
            EvalItem(f"{t.id}#{k}", t.instruction, i.input)
            for t in default_seeds()
            for k, i in enumerate(t.instances)
        ]
        name = f"our default seed tasks as a stand-in ({len(items)} items; the 252 are absent)"
    print(f"load average before: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}")
    print(f"evaluation set: {name}")
    t0 = time.perf_counter()
    examples, planted = training_set(n_instances, n_instructions, items)
    made = time.perf_counter() - t0
    print(
        f"training set: {len(examples):,} instances, {len({i for i, _ in examples}):,}"
        f" distinct instructions, {len(planted)} planted copies (made in {made:.1f} s)"
    )

    t0 = time.perf_counter()
    checker = Decontaminator(items)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    hits = checker.check_many(examples)
    ours = time.perf_counter() - t0
    flagged = {k for k, h in enumerate(hits) if h is not None}
    reasons: dict[str, int] = {}
    for h in hits:
        if h is not None:
            reasons[h.reason] = reasons.get(h.reason, 0) + 1
    missed = planted - flagged

    rng = random.Random(2)
    sample = rng.sample(range(len(examples)), min(args.sample, len(examples)))
    t0 = time.perf_counter()
    one_by_one = [checker.check(*examples[k]) for k in sample]
    per_example = (time.perf_counter() - t0) / len(sample)
    assert one_by_one == [hits[k] for k in sample], "check and check_many disagree"

    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    eval_instructions = list(dict.fromkeys(i.instruction for i in items))
    small = sample[: max(20, len(sample) // 10)]
    t0 = time.perf_counter()
    for k in small:
        for target in eval_instructions:
            scorer.score(target, examples[k][0])
    naive = (time.perf_counter() - t0) / len(small)

    n = len(examples)
    print()
    print(f"| method | time for {n:,} instances | vs ours |")
    print("|---|---:|---:|")
    print(f"| ours: Decontaminator.check_many (13-grams + ROUGE-L) | {ours:.2f} s | 1x |")
    print(
        f"| the same checker, one example at a time (check; {len(sample)} timed, extrapolated)"
        f" | {per_example * n:.1f} s | {per_example * n / ours:.0f}x |"
    )
    print(
        f"| rouge-score on every instruction x eval instruction pair (ROUGE-L only;"
        f" {len(small)} instances x {len(eval_instructions)} timed, extrapolated)"
        f" | {naive * n:,.0f} s | {naive * n / ours:,.0f}x |"
    )
    print()
    print(f"index built in {build:.2f} s; flagged {len(flagged):,} instances: {reasons}")
    print(f"planted copies found: {len(planted) - len(missed)} of {len(planted)}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
