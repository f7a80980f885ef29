"""Similarity speed in Chinese beside English: 52K instructions each, in one run.

The English corpus is the 52K benchmark file (../shared/data/bench_instructions_52k.jsonl). Its
"Chinese-like" twin is made here, deterministically: every English word becomes one to three
CJK ideographs drawn by a hash of the word from the 3,500 characters of U+4E00 onwards, joined
without spaces and ended with "。". So the twin has the corpus's structure (the same near-
duplicates, the same repeated words) with Chinese's tokenization: one token per character, about
two tokens per English word, and a vocabulary of a few thousand characters instead of tens of
thousands of words, which makes every posting list of the index longer.

Printed, for each: tokenizing the corpus, greedy dedup at the language's threshold (the
``selfinstruct dedup`` path), and the bootstrap loop's test (``best_above`` then ``add``, one
candidate at a time as step 1 makes them) over the first N lines. English is timed twice: with
rouge-score's tokenizer (what ``--language en`` uses) and with the multilingual tokenizer (the
same tokens on this ASCII corpus), so that the tokenizer's own cost shows.

    .venv/bin/python benchmarks/bench_language.py --repeat 3   # 5-10 minutes
    .venv/bin/python benchmarks/bench_language.py --quick      # the first 10K lines
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS_NAME = Path("shared") / "data" / "bench_instructions_52k.jsonl"

try:
    import selfinstruct.language  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

from bench_similarity import load  # noqa: E402  (the corpus reader, shared)

from selfinstruct import language  # noqa: E402
from selfinstruct.similarity import RougeLIndex, greedy_dedup, tokenize  # noqa: E402

_CHARS = [chr(0x4E00 + i) for i in range(3500)]


def corpus_path() -> Path:
    for base in (ROOT.parent, ROOT.parent.parent):
        if (base / CORPUS_NAME).exists():
            return base / CORPUS_NAME
    sys.exit(f"{CORPUS_NAME} absent: the benchmark corpus lies beside the project")


def chinese_like(text: str, cache: dict[str, str]) -> str:
    words = []
    for word in tokenize(text):
        chars = cache.get(word)
        if chars is None:
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            n = 1 + digest[0] % 3
            chars = "".join(
                _CHARS[int.from_bytes(digest[1 + 2 * k : 3 + 2 * k]) % 3500] for k in range(n)
            )
            cache[word] = chars
        words.append(chars)
    return "".join(words) + "。"


def timed(f, *args, **kwargs):
    start = time.perf_counter()
    out = f(*args, **kwargs)
    return time.perf_counter() - start, out


def loop(texts: list[str], threshold: float, tokenizer) -> tuple[float, int]:
    """Step 1's decision path: best_above against the pool, then add if kept."""
    index = RougeLIndex(tokenizer=tokenizer)
    start = time.perf_counter()
    kept = 0
    for text in texts:
        if index.best_above(text, threshold) is None:
            index.add(text)
            kept += 1
    return time.perf_counter() - start, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first 10K lines only")
    parser.add_argument("--loop", type=int, default=10_000, help="lines for the loop figure")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case (medians)")
    args = parser.parse_args()
    english = load(corpus_path(), 10_000 if args.quick else None)
    cache: dict[str, str] = {}
    chinese = [chinese_like(t, cache) for t in english]
    zh = language.get("zh")
    cases = [
        ("English, rouge-score tokenizer (--language en)", english, 0.7, None),
        ("English, multilingual tokenizer", english, 0.7, language.tokenize),
        (
            f"Chinese-like, --language zh (threshold {zh.threshold})",
            chinese,
            zh.threshold,
            zh.tokenizer,
        ),
    ]
    print(
        f"{len(english):,} instructions; python {platform.python_version()};"
        f" {platform.machine()}; medians of {args.repeat} runs, the cases taken in turn"
    )
    times: dict[str, list[list[float]]] = {name: [] for name, *_ in cases}
    kept: dict[str, tuple[int, int, float]] = {}
    for _ in range(args.repeat):
        for name, texts, threshold, tok in cases:
            fn = tok or tokenize
            t_tok, tokens = timed(lambda texts=texts, fn=fn: [fn(t) for t in texts])
            t_dedup, result = timed(greedy_dedup, texts, threshold, tokenizer=tok)
            t_loop, kept_loop = loop(texts[: args.loop], threshold, tok)
            times[name].append([t_tok, t_dedup, t_loop])
            kept[name] = (len(result.kept), kept_loop, sum(map(len, tokens)) / len(tokens))
    n_loop = min(args.loop, len(english))
    print(
        "| corpus | tokens/text | tokenize s | dedup s | kept |"
        f" step-1 loop s (first {n_loop:,}) | loop kept |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, *_ in cases:
        t_tok, t_dedup, t_loop = (statistics.median(col) for col in zip(*times[name], strict=True))
        n_kept, n_loop_kept, per_text = kept[name]
        print(
            f"| {name} | {per_text:.1f} | {t_tok:.2f} | {t_dedup:.2f} | {n_kept:,} |"
            f" {t_loop:.2f} | {n_loop_kept:,} |"
        )
    base = statistics.median(t[1] for t in times[cases[0][0]])
    zh_dedup = statistics.median(t[1] for t in times[cases[-1][0]])
    print(f"Chinese-like / English (rouge-score tokenizer) dedup time: {zh_dedup / base:.2f}x")


if __name__ == "__main__":
    main()
