"""`build_report` on a 52K-instruction run: cold (no parse cache) and warm, on one core.

Builds a synthetic run folder shaped like a real one at the paper's scale, every file in the
release's format and of realistic size: step 1's records with their ``most_similar`` top 10 and
the prompt/response metadata, step 2's labels (about 22% classification), step 3's raw
instances with both metadata blocks, step 4's ~82K (instruction, input, output) triples (about
43% with an empty input, as in the paper), rejected candidates, LLM-judge and person ratings and
run.json. The instructions are the 52K lines of ``bench_instructions_52k.jsonl`` beside the
project when present (real English text), else synthesized imperative sentences.

Each timing runs in a fresh child process pinned to one core, so it includes importing
matplotlib, numpy and the package, as a user's command would. Target: under 60 s.

    .venv/bin/python benchmarks/bench_report.py                 # ~52K instructions
    .venv/bin/python benchmarks/bench_report.py --n 5000        # a quick look
    .venv/bin/python benchmarks/bench_report.py --keep runs/bench-report   # keep the folder
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS_NAME = "bench_instructions_52k.jsonl"
CORPUS_CANDIDATES = [
    ROOT.parent / "shared" / "data" / CORPUS_NAME,
    Path("/work/shared/data") / CORPUS_NAME,
]
TARGET_S = 60.0

try:
    import selfinstruct.report  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

from selfinstruct.records import example_key  # noqa: E402
from selfinstruct.runfolder import RunFolder  # noqa: E402

VERBS = "write generate create give find classify describe explain list make design suggest".split()
NOUNS = "story list function poem sentence email letter way example word number essay".split()
WORDS = (
    "the a of to and in is for that with on as are this be by from it at an or have data model "
    "user text number result value list answer question people time way year day new good first"
).split()


def load_instructions(n: int, rng: random.Random) -> tuple[list[str], str]:
    for path in CORPUS_CANDIDATES:
        if path.exists():
            texts = []
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    text = json.loads(line).get("instruction", "").strip()
                    if text:
                        texts.append(text)
            texts = list(dict.fromkeys(texts))
            while len(texts) < n:  # a bigger --n than the corpus: vary copies
                texts.append(f"{rng.choice(texts)} ({len(texts)})")
            return texts[:n], str(path)
    out = []
    for i in range(n):
        tail = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16)))
        out.append(f"{rng.choice(VERBS).capitalize()} a {rng.choice(NOUNS)} {tail} ({i}).")
    return out, "synthesized"


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def build_run(folder: Path, n: int, seed: int = 1) -> dict[str, object]:
    rng = random.Random(seed)
    texts, source = load_instructions(n, rng)
    rf = RunFolder(folder)
    prompt = "Come up with a series of tasks:\n" + "\n".join(
        f"{i}. {words(rng, 8, 16)}" for i in range(1, 9)
    )

    def metadata(i: int) -> dict:
        return {
            "prompt": prompt,
            "response": {"choices": [{"text": words(rng, 100, 140), "finish_reason": "stop"}]},
            "created_at": "2026-01-01 00:00:00",
            "model": "openai:bench",
            "usage": {"prompt_tokens": 300, "completion_tokens": 160},
        }

    step1 = []
    for i, text in enumerate(texts):
        pool = {texts[rng.randrange(max(1, i))] for _ in range(10)}
        most = {t: round(rng.betavariate(2, 6), 4) for t in pool}
        step1.append(
            {
                "instruction": text,
                "most_similar": dict(sorted(most.items(), key=lambda kv: -kv[1])),
                "avg_similarity_score": round(rng.random() * 0.2, 4),
                "metadata": metadata(i),
                "request_idx": i // 5,
            }
        )
    write_jsonl(rf.instructions, step1)
    labels = {t: rng.random() < 0.22 for t in texts}
    write_jsonl(
        rf.classification_file_for("bench"),
        ({"instruction": t, "is_classification": "Yes" if y else "No"} for t, y in labels.items()),
    )
    write_jsonl(
        rf.instances,
        (
            {
                "instruction": r["instruction"],
                "raw_instances": "\n".join(
                    f"Example {k}\nInput: {words(rng, 0, 20)}\nOutput: {words(rng, 3, 30)}"
                    for k in range(1, 4)
                ),
                "instance_metadata": metadata(i),
                "instruction_metadata": r["metadata"],
                "most_similar": r["most_similar"],
                "avg_similarity_score": r["avg_similarity_score"],
            }
            for i, r in enumerate(step1)
        ),
    )
    examples = []
    for text in texts:
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            has_input = rng.random() > 0.43
            examples.append(
                {
                    "instruction": text,
                    "input": words(rng, 3, 25) if has_input else "",
                    "output": words(rng, 1, 45),
                }
            )
    write_jsonl(rf.all_instances, examples)
    reasons = ["too_similar"] * 8 + ["too_long", "too_short", "image_words", "write_a_program"]
    write_jsonl(
        rf.rejected,
        ({"instruction": words(rng, 4, 14), "reason": rng.choice(reasons)} for _ in range(n)),
    )
    keyed = [example_key(e["instruction"], e["input"], e["output"]) for e in examples]
    write_jsonl(
        rf.judgments_file,
        ({"key": k, "rating": rng.choice("AAABBCD")} for k in rng.sample(keyed, min(2000, n))),
    )
    yes = lambda p: rng.random() < p  # noqa: E731
    write_jsonl(
        rf.reviews_file,
        (
            {
                "key": k,
                "rating": rng.choice("AABCD"),
                "valid_instruction": yes(0.9),
                "input_fits": yes(0.8),
                "output_correct": yes(0.6),
            }
            for k in rng.sample(keyed, min(200, n))
        ),
    )
    rf.run_file.write_text(
        json.dumps(
            {
                "model": {"backend": "openai", "name": "bench", "api": "completions"},
                "config": {"instructions": {"similarity_threshold": 0.7}},
                "steps": {
                    "instructions": {
                        "counts": {"instructions_in_file": n, "accepted_now": n},
                        "dropped": {"too_similar": int(0.7 * n), "image_words": n // 50},
                        "usage": {"requests": n // 4, "prompt_tokens": 300 * n},
                    },
                    "prepare": {
                        "counts": {"finetuning_examples": len(examples)},
                        "dropped": {"duplicate_instance": n // 10},
                    },
                },
                "usage": {"requests": n // 4, "prompt_tokens": 300 * n},
            }
        ),
        encoding="utf-8",
    )
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"source": source, "examples": len(examples), "bytes": size}


CHILD = """
import os, sys, time, json
t0 = time.perf_counter()
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from selfinstruct.report import build_report
t1 = time.perf_counter()
result = build_report(sys.argv[1], sample_rows=20, seed=0)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "total_s": t2 - t0,
                  "method": result.parse_method,
                  "share": result.stats["verbs"]["share"]}))
"""


def timed_child(folder: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"report failed:\n{done.stderr}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=52_000, help="instructions in the synthetic run")
    ap.add_argument("--keep", type=Path, default=None, help="build the run here and keep it")
    args = ap.parse_args()

    tmp = None
    if args.keep is None:
        tmp = tempfile.mkdtemp(prefix="bench-report-")
        folder = Path(tmp) / "run"
    else:
        folder = args.keep
        if folder.exists():
            shutil.rmtree(folder)
    try:
        t = time.perf_counter()
        info = build_run(folder, args.n)
        print(
            f"run folder: {args.n:,} instructions ({info['source']}), {info['examples']:,}"
            f" examples, {info['bytes'] / 1e6:,.0f} MB of files; built in"
            f" {time.perf_counter() - t:.1f} s"
        )
        cold = timed_child(folder)
        warm = timed_child(folder)
        print(f"parse method: {cold['method']}; share with verb+object: {cold['share']:.1%}")
        print(f"{'':10}{'wall (s)':>10}{'import (s)':>12}{'build (s)':>11}{'target (s)':>12}")
        for name, r in (("cold", cold), ("warm", warm)):
            print(
                f"{name:10}{r['wall_s']:>10.1f}{r['import_s']:>12.1f}{r['build_s']:>11.1f}"
                f"{TARGET_S:>12.0f}  {'ok' if r['wall_s'] < TARGET_S else 'OVER'}"
            )
        if args.keep is not None:
            print(f"report: {RunFolder(folder).report_dir / 'report.html'}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
