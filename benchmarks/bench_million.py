"""Step 1 grown to a million instructions against a loopback server, beside today's kernel.

A loopback OpenAI-compatible server (this file with ``--serve``, its own process) answers the
completions API at once: each prompt gets 7 new instructions, numbered from 9, spliced from
two lines of the 52K benchmark corpus (../shared/data/bench_instructions_52k.jsonl: the start
of one line and the end of another, drawn with a fixed seed), so the pool can keep growing
far past 52K while looking like an instruction pool. Nothing is written to the shared data.

Each kernel runs step 1 (``generate_instructions``, the real openai client, 20 prompts a
request, concurrency 8) in a child process from the 175 default seeds; the parent counts the
lines of the instructions file every half second and prints the rate in each pool-size band,
and the child's peak resident memory (VmHWM):

* ``ours``: the index as shipped, up to ``--target`` (default 1,000,000);
* ``today``: the same code with the prefix index and the sampled mean switched off
  (``similarity._PREFIX_MIN_TEXTS`` and ``MEAN_EXACT_UP_TO`` set out of reach), which is the
  kernel before issue 19: every candidate probed through whole postings and every accepted
  instruction scored against the whole pool; stopped after ``--today-seconds``.

Then it times a resume: the same command on the finished folder with 1,000 more to make
(reading the file, rebuilding the index, the first decisions), and checks a seeded sample of
the decisions against a plain all-pairs reference (``check_sample``).

    .venv/bin/python benchmarks/bench_million.py                      # about 40 minutes
    .venv/bin/python benchmarks/bench_million.py --target 200000 --today-seconds 120
    .venv/bin/python benchmarks/bench_million.py --kernel-pools 50000,200000,1000000
    .venv/bin/python benchmarks/bench_million.py --dedup-lines 1000000

``--kernel-pools`` times the index alone (CPU per candidate, ours beside today's on the same
candidates, and whether both give the same decisions and top 10); ``--dedup-lines`` times
``selfinstruct dedup`` on that many spliced lines.

Linux only (reads /proc for memory). All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

BANDS = [0, 10_000, 25_000, 50_000, 100_000, 200_000, 300_000, 400_000, 500_000, 600_000, 700_000]
BANDS += [800_000, 900_000, 1_000_000, 1_500_000, 2_000_000]
PER_ANSWER = 7
BATCH = 20
CONCURRENCY = 8


def corpus_path() -> Path:
    for base in (ROOT.parent, ROOT.parent.parent):
        path = base / "shared" / "data" / "bench_instructions_52k.jsonl"
        if path.exists():
            return path
    raise SystemExit("bench_instructions_52k.jsonl not found under ../shared/data")


class Splicer:
    """Endless instruction-like lines: the start of one corpus line and the end of another."""

    def __init__(self, lines: list[str], seed: int = 0) -> None:
        self.words = [line.split() for line in lines if len(line.split()) >= 4]
        self.rng = random.Random(seed)

    def __call__(self) -> str:
        rng = self.rng
        x, y = rng.choice(self.words), rng.choice(self.words)
        words = x[: rng.randint(2, len(x))] + y[rng.randint(0, len(y) - 2) :]
        return " ".join(words[:40])


# -- the server ---------------------------------------------------------------------------------


def serve(port_file: str) -> None:
    from aiohttp import web

    with corpus_path().open(encoding="utf-8") as fh:
        splice = Splicer([json.loads(line)["instruction"] for line in fh if line.strip()])

    def answer() -> str:
        return "".join(f" {splice()}\n{n}." for n in range(10, 9 + PER_ANSWER)) + f" {splice()}"

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = [
            {"index": i, "text": answer(), "finish_reason": "stop", "logprobs": None}
            for i in range(len(prompts))
        ]
        usage = {"prompt_tokens": 100, "completion_tokens": 100, "total_tokens": 200}
        return web.json_response(
            {"id": "x", "object": "text_completion", "created": 0, "model": "bench",
             "choices": choices, "usage": usage}
        )  # fmt: skip

    app = web.Application(client_max_size=1 << 26)
    app.router.add_post("/v1/completions", completions)

    async def start() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        Path(port_file).write_text(str(runner.addresses[0][1]))
        while True:
            await asyncio.sleep(3600)

    import asyncio

    asyncio.run(start())


# -- the kernel alone, at fixed pool sizes ---------------------------------------------------


def kernel_costs(pool_sizes: list[int], n_cand: int) -> list[dict]:
    """CPU per candidate of step 1's index work at each pool size, ours and today's: the
    decision (``best_above`` at 0.7, then ``add`` when kept) and the kept record's figures
    (``pool_similarity``: top 10 and mean), on spliced pools and candidates. CPU time
    (``time.process_time``), so that other jobs on the machine weigh less on the figures."""
    from selfinstruct import similarity

    with corpus_path().open(encoding="utf-8") as fh:
        lines = [json.loads(line)["instruction"] for line in fh if line.strip()]
    rows = []
    for size in pool_sizes:
        splice = Splicer(lines, seed=size)
        pool = [splice() for _ in range(size)]
        cands = [splice() for _ in range(n_cand)]
        row: dict = {"pool": size}
        for kernel in ("ours", "today"):
            off = kernel == "today"
            saved = similarity._PREFIX_MIN_TEXTS, similarity.MEAN_EXACT_UP_TO
            if off:
                similarity._PREFIX_MIN_TEXTS = similarity.MEAN_EXACT_UP_TO = 1 << 62
            try:
                index = similarity.RougeLIndex(pool)
                index.best_above(cands[0], 0.7)  # builds what the first query builds
                index.pool_similarity([(cands[0], size)])
                kept = 0
                c0 = time.process_time()
                decided = [index.best_above(c, 0.7) for c in cands]
                c1 = time.process_time()
                for c, d in zip(cands, decided, strict=True):
                    if d is None:
                        index.add(c)
                        kept += 1
                c2 = time.process_time()
                figures = index.pool_similarity([(c, size) for c in cands[:200]])
                c3 = time.process_time()
            finally:
                similarity._PREFIX_MIN_TEXTS, similarity.MEAN_EXACT_UP_TO = saved
            row[kernel] = {
                "decide_ms": 1e3 * (c1 - c0) / n_cand,
                "add_ms": 1e3 * (c2 - c1) / max(kept, 1),
                "figures_ms": 1e3 * (c3 - c2) / 200,
                "decisions": [None if d is None else d[0] for d in decided],
                "top": [t for t, _ in figures],
            }
        row["same"] = row["ours"]["decisions"] == row["today"]["decisions"]
        tops = zip(row["ours"]["top"], row["today"]["top"], strict=True)
        row["top_exact"] = sum(a == b for a, b in tops) / len(row["ours"]["top"])
        rows.append(row)
        print(
            f"  pool {size:,}: ours {row['ours']['decide_ms']:.3f} ms/decision, "
            f"today {row['today']['decide_ms']:.3f}; same decisions: {row['same']}, "
            f"top 10 as exact: {100 * row['top_exact']:.0f} %",
            flush=True,
        )
    return rows


def print_kernel_costs(rows: list[dict]) -> None:
    print("CPU ms per candidate, index work only (ours | today's kernel):")
    print()
    print(
        "| pool | decide: ours | today | add (per kept): ours | today "
        "| top 10 + mean (per kept): ours | today | same decisions | top 10 as exact |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|:---:|---:|")
    for r in rows:
        o, t = r["ours"], r["today"]
        print(
            f"| {r['pool']:,} | {o['decide_ms']:.3f} | {t['decide_ms']:.3f} | {o['add_ms']:.3f} "
            f"| {t['add_ms']:.3f} | {o['figures_ms']:.3f} | {t['figures_ms']:.3f} "
            f"| {'yes' if r['same'] else 'NO'} | {100 * r['top_exact']:.0f} % |"
        )


# -- `selfinstruct dedup` on a large file -----------------------------------------------------


def dedup_file(n_lines: int) -> None:
    """Write ``n_lines`` spliced instructions and time ``selfinstruct dedup`` on them."""
    import resource

    with corpus_path().open(encoding="utf-8") as fh:
        splice = Splicer([json.loads(line)["instruction"] for line in fh if line.strip()], 7)
    with tempfile.TemporaryDirectory(prefix="bench_dedup_") as tmp:
        src, out = Path(tmp) / "pool.jsonl", Path(tmp) / "pool.dedup.jsonl"
        with src.open("w", encoding="utf-8") as fh:
            for i in range(n_lines):
                fh.write(json.dumps({"id": i, "instruction": splice()}) + "\n")
        cmd = [sys.executable, "-c", "from selfinstruct.cli import main; main()", "dedup"]
        t0 = time.perf_counter()
        subprocess.run([*cmd, str(src), "--out", str(out)], check=True)
        wall = time.perf_counter() - t0
        kept = sum(1 for _ in out.open("rb"))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"selfinstruct dedup of {n_lines:,} lines at 0.7: {wall:.0f} s, {kept:,} kept, "
        f"peak resident memory {peak:,.0f} MB; load average {os.getloadavg()[0]:.2f}"
    )


# -- one kernel in a child process ---------------------------------------------------------------


def child(kernel: str, out: str, target: int, base_url: str) -> None:
    from selfinstruct import similarity
    from selfinstruct.engine import EngineSettings
    from selfinstruct.models.openai import OpenAIModel
    from selfinstruct.seeds import default as default_seeds
    from selfinstruct.steps import StepContext
    from selfinstruct.steps.instructions import InstructionSettings, generate_instructions

    if kernel == "today":
        similarity._PREFIX_MIN_TEXTS = 1 << 62
        similarity.MEAN_EXACT_UP_TO = 1 << 62
    model = OpenAIModel("bench", api="completions", base_url=base_url, api_key="x", batch=BATCH)
    settings = InstructionSettings(
        num_instructions=target, request_batch_size=BATCH, max_stalled_requests=10**9
    )
    ctx = StepContext(model=model, engine=EngineSettings(concurrency=CONCURRENCY))
    generate_instructions(ctx, default_seeds(), out, settings)


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_kernel(kernel: str, out: Path, target: int, base_url: str, limit: float) -> dict:
    """Grow the pool in ``out``; returns band times, the pool reached, wall and peak memory."""
    cmd = [sys.executable, __file__, "--child", kernel, str(out), str(target), base_url]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    path = out / "machine_generated_instructions.jsonl"
    seen_at: dict[int, float] = {0: 0.0}
    count, offset, peak = 0, 0, 0.0
    next_band = 1
    while True:
        done = proc.poll() is not None
        now = time.perf_counter() - started
        if path.exists():
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            cut = chunk.rfind(b"\n") + 1
            count += chunk.count(b"\n", 0, cut)
            offset += cut
        while next_band < len(BANDS) and count >= BANDS[next_band]:
            seen_at[BANDS[next_band]] = now
            print(f"  {kernel}: pool {BANDS[next_band]:,} at {now:.0f} s", flush=True)
            next_band += 1
        if not done:
            peak = max(peak, peak_rss_mb(proc.pid))
        if done:
            break
        if now > limit:
            peak = max(peak, peak_rss_mb(proc.pid))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.5)
    wall = time.perf_counter() - started
    return {"kernel": kernel, "bands": seen_at, "pool": count, "wall": wall, "peak_mb": peak}


def _plain_codes(texts: list[str]) -> list[str]:
    """Each text as rouge-score's own tokenizer splits it, one code point per distinct token
    (surrogates skipped), for rapidfuzz's LCS: the plain reference, no index involved."""
    from rouge_score.tokenizers import DefaultTokenizer

    split = DefaultTokenizer(use_stemmer=False).tokenize
    vocab: dict[str, str] = {}

    def point(tok: str) -> str:
        i = len(vocab)
        return vocab.setdefault(tok, chr(i if i < 0xD800 else i + 0x800))

    return ["".join(point(t) for t in split(text)) for text in texts]


def check_sample(out: Path, n: int = 200, seed: int = 0) -> str:
    """Step 1's decisions on a seeded sample against a plain all-pairs reference: a kept
    instruction scores <= 0.7 with every text before it, a `too_similar` one > 0.7 with the
    text and F1 it names (the best, the earliest on ties). The pool holds the seeds, then the
    kept instructions in order; a rejected candidate saw the kept ones with a lower
    `candidate_idx`. One LCS of each sampled text with the whole pool (rapidfuzz, all cores),
    F1 by rouge-score's formula; each best pair checked again with rouge-score itself."""
    from bisect import bisect_left

    import numpy as np
    from rapidfuzz import process
    from rapidfuzz.distance import LCSseq
    from rouge_score import rouge_scorer

    from selfinstruct.seeds import default as default_seeds
    from selfinstruct.similarity import _f1_array

    seeds = [t.instruction for t in default_seeds()]
    with (out / "machine_generated_instructions.jsonl").open(encoding="utf-8") as fh:
        kept = [json.loads(line) for line in fh]
    with (out / "rejected_instructions.jsonl").open(encoding="utf-8") as fh:
        similar = [r for r in map(json.loads, fh) if r["reason"] == "too_similar"]
    texts = seeds + [r["instruction"] for r in kept]
    codes = _plain_codes(texts + [r["instruction"] for r in similar])
    pool_codes, lens = codes[: len(texts)], np.array([len(c) for c in codes[: len(texts)]])
    kept_idx = [r["candidate_idx"] for r in kept]
    rng = random.Random(seed)
    sample = [("kept", i) for i in rng.sample(range(len(kept)), min(n, len(kept)))]
    sample += [("similar", i) for i in rng.sample(range(len(similar)), min(n, len(similar)))]
    queries = [
        codes[len(seeds) + i] if kind == "kept" else codes[len(texts) + i] for kind, i in sample
    ]
    lcs = process.cdist(queries, pool_codes, scorer=LCSseq.similarity, dtype=np.int32, workers=-1)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    wrong = []
    for row, ((kind, i), query) in enumerate(zip(sample, queries, strict=True)):
        if kind == "kept":
            before, text = len(seeds) + i, kept[i]["instruction"]
        else:
            before = len(seeds) + bisect_left(kept_idx, similar[i]["candidate_idx"])
            text = similar[i]["instruction"]
        f1 = _f1_array(lcs[row, :before], len(query), lens[:before])
        best = int(np.argmax(f1))
        reference = scorer.score(texts[best], text)["rougeL"].fmeasure
        if reference != f1[best]:
            wrong.append(f"{kind} {i}: F1 {f1[best]} by formula, {reference} by rouge-score")
        elif kind == "kept" and f1[best] > 0.7:
            wrong.append(f"kept {i}: F1 {f1[best]} with pool text {best}")
        elif kind == "similar" and (
            f1[best] != similar[i]["rouge_l"] or texts[best] != similar[i]["most_similar"]
        ):
            wrong.append(f"too_similar {i}: recorded {similar[i]['rouge_l']}, best {f1[best]}")
    kinds = [k for k, _ in sample]
    head = f"{kinds.count('kept')} kept and {kinds.count('similar')} too_similar"
    if wrong:
        return f"{head}: {len(wrong)} differ from all pairs: " + "; ".join(wrong[:5])
    return f"{head}, sampled from a pool of {len(texts):,}: all as all pairs give them"


def band_rate(res: dict, lo: int, hi: int) -> str:
    bands = res["bands"]
    if lo in bands and hi in bands:
        return f"{60 * (hi - lo) / max(bands[hi] - bands[lo], 1e-9):,.0f}"
    return "not reached"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=int, default=1_000_000, help="pool size to grow to")
    ap.add_argument("--today-seconds", type=float, default=300, help="time given to today's")
    ap.add_argument("--ours-seconds", type=float, default=3600, help="time given to ours")
    ap.add_argument("--skip-today", action="store_true")
    ap.add_argument(
        "--folder", default=None, help="grow ours in DIR/ours and keep it (default: a temp dir)"
    )
    ap.add_argument(
        "--resume-only",
        action="store_true",
        help="with --folder: only time the resume (plus 1,000) of the pool already in DIR/ours",
    )
    ap.add_argument(
        "--kernel-pools",
        default=None,
        help="instead of the run: the index's CPU per candidate at these pool sizes, e.g."
        " 50000,200000,1000000 (ours beside today's, same candidates)",
    )
    ap.add_argument("--candidates", type=int, default=2000, help="with --kernel-pools")
    ap.add_argument(
        "--dedup-lines", type=int, default=None, help="instead: time `selfinstruct dedup` on N"
    )
    args = ap.parse_args()
    if args.dedup_lines:
        dedup_file(args.dedup_lines)
        return 0
    if args.kernel_pools:
        sizes = [int(x) for x in args.kernel_pools.split(",")]
        print(f"cores: {os.cpu_count()}  load average at start: {os.getloadavg()[0]:.2f}")
        print_kernel_costs(kernel_costs(sizes, args.candidates))
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
        return 0
    print(
        f"cores: {os.cpu_count()}  load average at start: {os.getloadavg()[0]:.2f}  "
        f"completions API, {BATCH} prompts a request, concurrency {CONCURRENCY}, no latency"
    )
    with tempfile.TemporaryDirectory(prefix="bench_million_") as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        try:
            while not port_file.exists() or not port_file.read_text():
                if server.poll() is not None:
                    raise SystemExit("the loopback server did not start")
                time.sleep(0.1)
            base_url = f"http://127.0.0.1:{port_file.read_text()}/v1"
            results = []
            if not args.skip_today:
                out = Path(tmp) / "today"
                results.append(run_kernel("today", out, args.target, base_url, args.today_seconds))
            out = Path(args.folder or tmp) / "ours"
            if args.resume_only:
                pool = sum(1 for _ in (out / "machine_generated_instructions.jsonl").open("rb"))
                ours = {"kernel": "ours", "pool": pool, "wall": 0.0, "peak_mb": 0.0, "bands": {}}
            else:
                ours = run_kernel("ours", out, args.target, base_url, args.ours_seconds)
            results.insert(0, ours)
            t0 = time.perf_counter()
            again = run_kernel("ours", out, ours["pool"] + 1000, base_url, 600)
            resume = time.perf_counter() - t0
            exactness = check_sample(out)
        finally:
            server.terminate()
            server.wait()
    print()
    print("Instructions accepted per minute, by pool-size band (same server, same machine):")
    print()
    print("| pool band | " + " | ".join(r["kernel"] for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for lo, hi in zip(BANDS, BANDS[1:], strict=False):
        if hi > args.target:
            break
        print(f"| {lo:,}-{hi:,} | " + " | ".join(band_rate(r, lo, hi) for r in results) + " |")
    print()
    for r in results:
        print(
            f"{r['kernel']}: pool {r['pool']:,} in {r['wall']:.0f} s, "
            f"peak resident memory {r['peak_mb']:,.0f} MB"
        )
    print(
        f"resume at a pool of {ours['pool']:,} plus 1,000 more: {resume:.1f} s "
        f"(pool {again['pool']:,}, peak {again['peak_mb']:,.0f} MB)"
    )
    print(f"exactness on a sample: {exactness}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
