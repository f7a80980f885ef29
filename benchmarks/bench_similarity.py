"""ROUGE-L: selfinstruct.similarity against rouge-score, on the same pairs; then greedy dedup.

1. Pair throughput, every figure on the same pairs (Q candidates x the first P lines of the
   52K benchmark corpus): rouge-score's ``RougeScorer(["rougeL"]).score`` pair by pair, our
   single-pair ``rouge_l``, and the index's one-vs-many path (``RougeLIndex.scores``, one
   candidate against all indexed texts, the call the bootstrap loop makes for an accepted
   candidate; and ``scores_many``, several candidates in one batch). All scores are checked
   equal to rouge-score's. Rates are medians over candidates (one row of P pairs each), with
   rouge-score's and ours taken in alternation, so that load from other jobs hits both alike.
   Then the same one-vs-many calls against the whole 52K corpus (rouge-score timed on a random
   sample of those pairs), the bootstrap loop's duplicate test ``exceeds(c, 0.7)``, and
   ``top_k(c, 10)`` / ``max_score(c)`` (pairs "decided": pruned ones count too).
2. Greedy dedup at 0.7 of the whole 52K corpus (``greedy_dedup``) in a fresh child process:
   wall time, peak resident memory (ru_maxrss), number kept.
3. The same greedy dedup by brute force with rouge-score on the first N lines (each line scored
   against every kept line until one exceeds; rouge-score's tokenizer run once per line and its
   ``_score_lcs`` per pair, i.e. rouge-score at its fastest), checked identical to ours on that
   sample, and extrapolated to 52K lines from the number of comparisons brute force would make
   there (counted exactly for kept lines, estimated for dropped ones from the sample).

    .venv/bin/python benchmarks/bench_similarity.py            # about 5 minutes
    .venv/bin/python benchmarks/bench_similarity.py --quick    # about 40 seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "bench_instructions_52k.jsonl"

try:
    import selfinstruct.similarity  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import rapidfuzz  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402

from selfinstruct.similarity import RougeLIndex, greedy_dedup, rouge_l  # noqa: E402


def load(path: Path, limit: int | None = None) -> list[str]:
    if not path.exists():
        sys.exit(f"{path} absent: the benchmark corpus lies beside the project (../shared/data)")
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line)["instruction"])
                if limit is not None and len(out) >= limit:
                    break
    return out


def maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


# ---- 1. pairs -------------------------------------------------------------------------------


def bench_pairs(texts: list[str], n_queries: int, pool_size: int) -> dict:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = texts[:pool_size]
    queries = texts[-n_queries:]
    n_pairs = len(queries) * len(pool)
    print(f"\n[1] pair throughput: {len(queries)} candidates x {len(pool):,} indexed lines ")
    print(f"    = {n_pairs:,} pairs, every method on these same pairs")
    build_s, index = timed(RougeLIndex, pool)
    rows_rouge, rows_single, rows_index = [], [], []
    max_diff = 0.0
    for q in queries:
        t, ref = timed(lambda q=q: [scorer.score(p, q)["rougeL"] for p in pool])
        rows_rouge.append(t)
        t, ours = timed(lambda q=q: [rouge_l(p, q) for p in pool])
        rows_single.append(t)
        reps = []
        for _ in range(5):
            t, got = timed(index.scores, q)
            reps.append(t)
        rows_index.append(statistics.median(reps))
        for r, o, g in zip(ref, ours, got.tolist(), strict=True):
            max_diff = max(
                max_diff,
                abs(r.precision - o.precision),
                abs(r.recall - o.recall),
                abs(r.fmeasure - o.fmeasure),
                abs(r.fmeasure - g),
            )
    batch_s = min(timed(index.scores_many, queries)[0] for _ in range(3))
    per_row = len(pool)
    rouge_rate = per_row / statistics.median(rows_rouge)
    single_rate = per_row / statistics.median(rows_single)
    index_rate = per_row / statistics.median(rows_index)
    batch_rate = n_pairs / batch_s
    print(f"    index build ({len(pool):,} lines, once): {build_s * 1e3:.0f} ms")
    print(f"    {'method':<44} {'pairs/s':>14} {'x rouge-score':>14}")
    for name, rate in [
        ("rouge-score RougeScorer.score, pair by pair", rouge_rate),
        ("ours rouge_l(target, prediction), pair by pair", single_rate),
        ("ours RougeLIndex.scores(c): one vs many", index_rate),
        ("ours RougeLIndex.scores_many(cs): batch vs many", batch_rate),
    ]:
        print(f"    {name:<44} {fmt_rate(rate):>14} {rate / rouge_rate:>13,.0f}x")
    print(f"    max |difference| from rouge-score over P, R and F1: {max_diff:.1e}")
    return {
        "pairs": n_pairs,
        "rouge_pairs_per_s": rouge_rate,
        "rouge_l_pairs_per_s": single_rate,
        "index_scores_pairs_per_s": index_rate,
        "scores_many_pairs_per_s": batch_rate,
        "max_abs_diff": max_diff,
    }


def bench_full_index(texts: list[str], n_queries: int, n_sample: int) -> dict:
    pool = texts[:-n_queries]
    rng = random.Random(0)
    # half of the candidates are near-duplicates of indexed lines, as in a real pool
    queries = [q if i % 2 else rng.choice(pool) + " now" for i, q in enumerate(texts[-n_queries:])]
    print(f"\n[1b] {len(queries)} candidates, each against all {len(pool):,} indexed lines")
    build_s, index = timed(RougeLIndex, pool)
    n = len(index)
    # rouge-score on a random sample of the same pairs (all of them would take hours)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge_s = 0.0
    max_diff = 0.0
    for q in queries:
        picks = rng.sample(range(n), n_sample)
        t, ref = timed(lambda q=q, picks=picks: [scorer.score(pool[j], q) for j in picks])
        rouge_s += t
        got = index.scores(q)
        for j, r in zip(picks, ref, strict=True):
            max_diff = max(max_diff, abs(got[j] - r["rougeL"].fmeasure))
    rouge_rate = n_sample * len(queries) / rouge_s
    out: dict = {"index_size": n, "build_s": build_s, "rouge_pairs_per_s": rouge_rate}
    print(f"    index build: {build_s:.2f} s (once)")
    print(
        f"    rouge-score on {n_sample} sampled pairs per candidate: {fmt_rate(rouge_rate)} "
        f"pairs/s; max |F1 difference| {max_diff:.1e}"
    )
    print(f"    {'call':<26} {'median ms':>9} {'pairs/s':>14} {'x rouge-score':>14}")
    for name, fn in [
        ("scores(c)", index.scores),
        ("top_k(c, 10)", lambda c: index.top_k(c, 10)),
        ("max_score(c)", index.max_score),
        ("exceeds(c, 0.7)", lambda c: index.exceeds(c, 0.7)),
    ]:
        times = []
        for q in queries:
            index._cache_key = None  # time tokenizing too
            times.append(timed(fn, q)[0])
        rate = n * len(times) / sum(times)
        x = rate / rouge_rate
        label = "" if name == "scores(c)" else "(pairs decided)"
        t = statistics.median(times)
        print(f"    {name:<26} {t * 1e3:9.2f} {fmt_rate(rate):>14} {x:>13,.0f}x {label}")
        out[name] = {"median_ms": t * 1e3, "pairs_per_s": rate, "x_rouge": x}
    batch_s = timed(index.scores_many, queries)[0]
    rate = n * len(queries) / batch_s
    name = f"scores_many({len(queries)})"
    ms = batch_s / len(queries) * 1e3
    x = rate / rouge_rate
    print(f"    {name:<26} {ms:9.2f} {fmt_rate(rate):>14} {x:>13,.0f}x (ms per candidate)")
    out["scores_many"] = {"ms_per_candidate": ms, "pairs_per_s": rate, "x_rouge": rate / rouge_rate}
    return out


# ---- 2. greedy dedup of the corpus, in a child process -----------------------------------


def child_dedup(path: Path, threshold: float) -> None:
    texts = load(path)
    rss_before = maxrss_mb()
    seconds, res = timed(greedy_dedup, texts, threshold)
    kept = res.kept
    # comparisons a brute-force greedy dedup would make: every kept line before each line
    upper_kept = sum(range(len(kept)))  # kept line k is compared with the k kept before it
    kept_set = set(kept)
    n_kept_before = 0
    upper_dropped = 0
    for i in range(len(texts)):
        if i in kept_set:
            n_kept_before += 1
        else:
            upper_dropped += n_kept_before
    print(
        json.dumps(
            {
                "lines": len(texts),
                "seconds": seconds,
                "kept": len(kept),
                "maxrss_mb": maxrss_mb(),
                "maxrss_before_mb": rss_before,
                "upper_kept": upper_kept,
                "upper_dropped": upper_dropped,
            }
        )
    )


def bench_dedup(path: Path, threshold: float) -> dict:
    print(f"\n[2] greedy dedup at {threshold} of {path.name} (fresh child process)")
    cmd = [sys.executable, __file__, "--child-dedup", str(path), "--threshold", str(threshold)]
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"    lines {res['lines']:,}  kept {res['kept']:,}  dropped {res['lines'] - res['kept']:,}"
    )
    print(f"    wall time {res['seconds']:.2f} s (tokenizing included, file reading not)")
    print(
        f"    peak RSS {res['maxrss_mb']:.0f} MB for the whole process "
        f"({res['maxrss_before_mb']:.0f} MB before the dedup: interpreter, libraries, texts)"
    )
    return res


# ---- 3. brute force with rouge-score on a sample ---------------------------------------------


def brute_dedup(texts: list[str], threshold: float) -> tuple[list[int], int, float]:
    """Greedy dedup with rouge-score: (kept, comparisons made, seconds)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    start = time.perf_counter()
    tokens = [scorer._tokenizer.tokenize(t) for t in texts]
    kept: list[int] = []
    kept_tokens: list[list[str]] = []
    comparisons = 0
    score = rouge_scorer._score_lcs
    for i, toks in enumerate(tokens):
        for other in kept_tokens:
            comparisons += 1
            if score(other, toks).fmeasure > threshold:
                break
        else:
            kept.append(i)
            kept_tokens.append(toks)
    return kept, comparisons, time.perf_counter() - start


def bench_brute(texts: list[str], n: int, threshold: float, full: dict, rouge_rate: float) -> dict:
    sample = texts[:n]
    print(f"\n[3] the same dedup by brute force with rouge-score, first {n:,} lines")
    kept, comparisons, brute_s = brute_dedup(sample, threshold)
    ours_s, ours = timed(greedy_dedup, sample, threshold)
    same = ours.kept == kept
    print(f"    rouge-score brute force: {brute_s:8.2f} s, kept {len(kept):,}", end="")
    print(f", {comparisons:,} pairs scored")
    print(f"    ours (greedy_dedup):     {ours_s:8.2f} s, kept {len(ours.kept):,}")
    print(f"    kept sets identical: {'YES' if same else 'NO'}  ({brute_s / ours_s:,.0f}x faster)")
    # extrapolate: comparisons at 52K = kept-line comparisons (exact) + dropped-line ones, whose
    # share of their upper bound (the kept lines before them) is taken from the sample
    kept_set = set(kept)
    n_before = 0
    up_dropped = 0
    for i in range(len(sample)):
        if i in kept_set:
            n_before += 1
        else:
            up_dropped += n_before
    kept_cmp = sum(range(len(kept)))
    share = (comparisons - kept_cmp) / up_dropped if up_dropped else 1.0
    est_cmp = full["upper_kept"] + share * full["upper_dropped"]
    per_pair = brute_s / comparisons
    est_fast = est_cmp * per_pair
    est_public = est_cmp / rouge_rate
    print(f"    extrapolated to {full['lines']:,} lines: {est_cmp:,.0f} pairs to score")
    print(
        f"      at this run's rouge-score speed ({per_pair * 1e6:.1f} us/pair, tokens reused): "
        f"{est_fast / 3600:,.1f} h = {est_fast / full['seconds']:,.0f}x ours"
    )
    print(
        f"      with RougeScorer.score per pair ({1e6 / rouge_rate:.0f} us/pair, from [1]): "
        f"{est_public / 3600:,.1f} h = {est_public / full['seconds']:,.0f}x ours"
    )
    return {
        "sample": n,
        "brute_s": brute_s,
        "ours_s": ours_s,
        "kept": len(kept),
        "identical": same,
        "comparisons": comparisons,
        "est_comparisons_full": est_cmp,
        "est_brute_full_s": est_fast,
        "est_public_full_s": est_public,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller pair set and brute-force sample")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument(
        "--sample", type=int, default=None, help="brute-force sample (3000; quick 1000)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--child-dedup", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_dedup is not None:
        child_dedup(args.child_dedup, args.threshold)
        return
    quick = args.quick
    load_avg = os.getloadavg()
    print(
        f"python {platform.python_version()}, rapidfuzz {rapidfuzz.__version__}, "
        f"numpy {np.__version__}, {os.cpu_count()} CPUs, load average {load_avg[0]:.2f} at start"
    )
    texts = load(args.corpus)
    figures: dict = {"quick": quick, "load_start": load_avg[0]}
    figures["pairs"] = bench_pairs(texts, 4 if quick else 8, 2000 if quick else 8000)
    rouge_rate = figures["pairs"]["rouge_pairs_per_s"]
    figures["full_index"] = bench_full_index(texts, 10 if quick else 30, 100 if quick else 300)
    figures["dedup"] = bench_dedup(args.corpus, args.threshold)
    n = args.sample or (1000 if quick else 3000)
    figures["brute"] = bench_brute(texts, n, args.threshold, figures["dedup"], rouge_rate)
    figures["load_end"] = os.getloadavg()[0]
    end = figures["load_end"]
    print(f"\nload average {end:.2f} at the end (2-core machine shared with other jobs)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
