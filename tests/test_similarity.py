"""selfinstruct.similarity gives rouge-score's ROUGE-L figures exactly, and its index and greedy
dedup give what brute force with rouge-score gives."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfinstruct import similarity
from selfinstruct.similarity import RougeLIndex, Score, greedy_dedup, rouge_l, tokenize

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer", reason="rouge-score not installed")
rouge_tokenize = pytest.importorskip("rouge_score.tokenize", reason="rouge-score not installed")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
SCORER_STEM = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
TOL = 1e-9


def _lines(path: Path) -> list[str]:
    if not path.exists():
        pytest.skip(f"../shared/data absent: {path} lies beside the project only")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["instruction"] for line in fh if line.strip()]


@pytest.fixture(scope="module")
def paper_texts() -> list[str]:
    return _lines(DATA / "self-instruct" / "seed_tasks.jsonl") + _lines(
        DATA / "self-instruct" / "user_oriented_instructions.jsonl"
    )


@pytest.fixture(scope="module")
def bench_texts() -> list[str]:
    return _lines(DATA / "bench_instructions_52k.jsonl")


def _reference(target: str, prediction: str, stem: bool = False):
    return (SCORER_STEM if stem else SCORER).score(target, prediction)["rougeL"]


def _assert_same(target: str, prediction: str, stem: bool = False) -> None:
    ref = _reference(target, prediction, stem)
    got = rouge_l(target, prediction, stem=stem)
    assert isinstance(got, Score)
    assert abs(got.precision - ref.precision) < TOL, (target, prediction)
    assert abs(got.recall - ref.recall) < TOL, (target, prediction)
    assert abs(got.fmeasure - ref.fmeasure) < TOL, (target, prediction)


def _edit(rng: random.Random, text: str) -> str:
    """A near-duplicate: drop, repeat or swap a word, or change punctuation and case."""
    words = text.split()
    if len(words) < 2:
        return text + " again"
    i = rng.randrange(len(words))
    op = rng.randrange(4)
    if op == 0:
        del words[i]
    elif op == 1:
        words.insert(i, words[i])
    elif op == 2:
        j = rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    else:
        words[i] = words[i].upper() + "!"
    return " ".join(words)


# ---- tokenizer and pairwise score ----------------------------------------------------------


def test_tokenize_matches_rouge_score_on_known_cases():
    stemmer = SCORER_STEM._tokenizer._stemmer
    cases = [
        "Hello, World! It's 2024 -- numbers like 3.14 and e-mail.",
        "",
        "   ",
        "!!! ??? ...",
        "İstanbul ẞtraße Café naïve ÀÉÎÕÜ ﬁne K",
        "running runs ran easily fairly generously the cats' toys",
        "tab\tseparated\nnew line\r\nend",
    ]
    for text in cases:
        assert tokenize(text) == rouge_tokenize.tokenize(text, None), text
        assert tokenize(text, stem=True) == rouge_tokenize.tokenize(text, stemmer), text
    assert tokenize("Don't STOP, believing!") == ["don", "t", "stop", "believing"]
    assert tokenize("running quickly", stem=True) == ["run", "quickli"]


def test_rouge_l_on_real_instruction_pairs(paper_texts, bench_texts):
    rng = random.Random(1234)
    pool = paper_texts + rng.sample(bench_texts, 3000)
    for _ in range(2500):
        a, b = rng.choice(pool), rng.choice(pool)
        if rng.random() < 0.3:
            b = _edit(rng, a)
        _assert_same(a, b)
    for _ in range(600):
        a, b = rng.choice(pool), rng.choice(pool)
        if rng.random() < 0.3:
            b = _edit(rng, a)
        _assert_same(a, b, stem=True)


def test_rouge_l_edge_cases():
    assert rouge_l("", "") == Score(0.0, 0.0, 0.0)
    assert rouge_l("a b c", "") == Score(0.0, 0.0, 0.0)
    assert rouge_l("...", "a b") == Score(0.0, 0.0, 0.0)
    assert rouge_l("the cat sat", "the cat sat").fmeasure == 1.0
    got = rouge_l("a b c d", "a c")  # LCS 2: precision 2/2, recall 2/4
    assert (got.precision, got.recall) == (1.0, 0.5)
    assert got.fmeasure == pytest.approx(2 / 3)
    long_a = " ".join(f"w{i % 97}" for i in range(700))
    long_b = " ".join(f"w{(i * 7) % 97}" for i in range(600))
    _assert_same(long_a, long_b)
    _assert_same("x " * 500, "x " * 300)


WORDS = st.sampled_from(
    ["the", "a", "cat", "Cat", "runs", "running", "ran", "fairly", "über", "x1", "2024", "ıi"]
)
SEPARATORS = st.sampled_from([" ", "  ", ", ", "!", "-", "\n", "\t", "'", " ... ", "é"])


@st.composite
def wordy_text(draw) -> str:
    words = draw(st.lists(WORDS, max_size=25))
    seps = draw(st.lists(SEPARATORS, min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps, strict=True))


TEXTS = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(max_codepoint=0x17F), max_size=120),
    st.text(alphabet="!?.,;:-'\" \t\n", max_size=30),
    wordy_text(),
    st.builds(lambda w, n: (w + " ") * n, WORDS, st.integers(0, 400)),
)


@settings(max_examples=250, deadline=None)
@given(TEXTS, TEXTS)
def test_rouge_l_generated(a: str, b: str):
    assert tokenize(a) == rouge_tokenize.tokenize(a, None)
    _assert_same(a, b)
    _assert_same(b, a)


@settings(max_examples=100, deadline=None)
@given(TEXTS, TEXTS)
def test_rouge_l_generated_stemmed(a: str, b: str):
    assert tokenize(a, stem=True) == rouge_tokenize.tokenize(a, SCORER_STEM._tokenizer._stemmer)
    _assert_same(a, b, stem=True)


def test_token_ids_beyond_code_points(monkeypatch):
    # Past the code-point range texts are stored as lists of ints; mixed str/list still agree.
    monkeypatch.setattr(similarity, "_CODE_LIMIT", 5)
    texts = ["a b c d e f g", "g f e d c b a", "a b c", "a b c x y z", "a b c d e f h"]
    index = RougeLIndex(texts)
    assert any(isinstance(c, list) for c in index._codes[: len(index)])
    assert any(isinstance(c, str) for c in index._codes[: len(index)])
    for cand in texts + ["a b", "h g f e d c b a q"]:
        want = [rouge_l(t, cand).fmeasure for t in texts]
        assert index.scores(cand).tolist() == want
        assert rouge_l(texts[0], cand) == Score(*_ref_tuple(texts[0], cand))


def _ref_tuple(target: str, prediction: str) -> tuple[float, float, float]:
    ref = _reference(target, prediction)
    return (ref.precision, ref.recall, ref.fmeasure)


# ---- index ---------------------------------------------------------------------------------


def _brute_scores(pool: list[str], cand: str, stem: bool = False) -> list[float]:
    return [_reference(t, cand, stem).fmeasure for t in pool]


def _brute_top_k(scores: list[float], k: int) -> list[tuple[int, float]]:
    return sorted(enumerate(scores), key=lambda p: (-p[1], p[0]))[:k]


THRESHOLDS = [-0.5, 0.0, 0.2, 0.5, 0.6, 0.7, 0.75, 0.9, 1.0]


def _check_index(index: RougeLIndex, pool: list[str], cands: list[str], stem=False) -> int:
    """Compare every query with brute force; returns how many (candidate, 0.7) exceed."""
    n_exceed = 0
    for cand in cands:
        want = _brute(pool, cand, stem)
        got = index.scores(cand)
        assert len(got) == len(pool)
        assert all(abs(a - b) < TOL for a, b in zip(got.tolist(), want, strict=True))
        best = max(want, default=0.0)
        assert abs(index.max_score(cand) - best) < TOL
        for k in (1, 3, 10):
            top = index.top_k(cand, k)
            ref = _brute_top_k(want, k)
            assert [p for p, _ in top] == [p for p, _ in ref], (cand, k)
            assert all(abs(a - b) < TOL for (_, a), (_, b) in zip(top, ref, strict=True))
        for t in THRESHOLDS:
            expect = any(s > t for s in want)
            assert index.exceeds(cand, t) == expect, (cand, t)
            above = index.best_above(cand, t)
            if expect:
                assert above is not None
                assert above[0] == ref_top1(want)[0] and abs(above[1] - best) < TOL
            else:
                assert above is None
        n_exceed += any(s > 0.7 for s in want)
    for t in THRESHOLDS:
        expect = [any(s > t for s in _brute(pool, c, stem)) for c in cands]
        assert index.exceeds_many(cands, t) == expect
    return n_exceed


def ref_top1(scores: list[float]) -> tuple[int, float]:
    return _brute_top_k(scores, 1)[0]


_BRUTE_CACHE: dict[tuple[int, str, bool], list[float]] = {}


def _brute(pool: list[str], cand: str, stem: bool) -> list[float]:
    key = (id(pool), cand, stem)
    if key not in _BRUTE_CACHE:
        _BRUTE_CACHE[key] = _brute_scores(pool, cand, stem)
    return _BRUTE_CACHE[key]


def test_index_matches_brute_force_on_real_near_duplicates(bench_texts, paper_texts):
    rng = random.Random(7)
    start = rng.randrange(len(bench_texts) - 300)
    pool = bench_texts[start : start + 250] + rng.sample(paper_texts, 30)
    index = RougeLIndex(stem=False)
    for i, text in enumerate(pool):
        assert index.add(text) == i
    assert len(index) == len(pool) and index.text(3) == pool[3]
    cands = [_edit(rng, rng.choice(pool)) for _ in range(25)]
    cands += rng.sample(bench_texts, 10) + [rng.choice(pool), "", "!!!", "zzqx unknown words"]
    assert _check_index(index, pool, cands) >= 10  # the check saw true duplicates
    assert np.array_equal(index.max_scores(cands), np.array([index.max_score(c) for c in cands]))
    many = index.scores_many(cands[:5])
    for row, cand in enumerate(cands[:5]):
        assert np.array_equal(many[row], index.scores(cand))


def test_index_stemmed(bench_texts):
    rng = random.Random(11)
    pool = rng.sample(bench_texts, 80)
    index = RougeLIndex(pool, stem=True)
    cands = [_edit(rng, rng.choice(pool)) for _ in range(8)] + ["Running writes, written!"]
    _check_index(index, pool, cands, stem=True)


def test_empty_index_and_empty_texts():
    index = RougeLIndex()
    assert len(index) == 0
    assert index.max_score("anything") == 0.0
    assert not index.exceeds("anything", 0.7) and not index.exceeds("anything", -1.0)
    assert index.top_k("anything") == [] and len(index.scores("anything")) == 0
    index.add("")
    index.add("...")
    assert index.scores("a b").tolist() == [0.0, 0.0]
    assert index.exceeds("a b", -0.1) and not index.exceeds("a b", 0.0)
    assert index.top_k("", 5) == [(0, 0.0), (1, 0.0)]
    with pytest.raises(ValueError):
        index.exceeds("a", math.nan)


def test_index_bounds_that_mislead():
    # Texts sharing every token with the candidate but in reverse order have a high overlap
    # bound and a low score; the best texts hide behind them.
    cand = "a b c d e f g h"
    fillers = " ".join(f"zz{i}" for i in range(14))
    pool = ["h g f e d c b a"] * 1100 + [f"a b {fillers}", "a b c d e x"]
    index = RougeLIndex(pool)
    want = [rouge_l(t, cand).fmeasure for t in pool]
    assert index.scores(cand).tolist() == want
    assert index.top_k(cand, 2) == _brute_top_k(want, 2)
    assert index.top_k(cand, 1) == [(1101, want[1101])]
    small = RougeLIndex(pool[:1100] + pool[1100:1101])  # the best is the 2-token overlap one
    assert small.max_score(cand) == max(want[:1101]) == want[1100] > want[0]
    for t in (0.1, 0.5, 0.7, 0.72):
        assert index.exceeds(cand, t) == (max(want) > t)
        assert index.exceeds_many([cand], t) == [max(want) > t]


@st.composite
def small_pool(draw):
    vocab = ["a", "b", "c", "d", "e", "f", "g"]
    word = st.sampled_from(vocab)
    text = st.lists(word, max_size=12).map(" ".join)
    return draw(st.lists(text, max_size=25)), draw(st.lists(text, min_size=1, max_size=5))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_pool())
def test_index_generated_pools(data):
    pool, cands = data
    index = RougeLIndex(pool)
    for cand in cands:
        want = [rouge_l(t, cand).fmeasure for t in pool]
        assert index.scores(cand).tolist() == want
        assert index.max_score(cand) == max(want, default=0.0)
        assert index.top_k(cand, 4) == _brute_top_k(want, 4)
        for t in (0.0, 0.4, 0.7, 0.8, 1.0):
            assert index.exceeds(cand, t) == any(s > t for s in want)
    for t in (0.0, 0.5, 0.7):
        assert index.exceeds_many(cands, t) == [
            any(rouge_l(p, c).fmeasure > t for p in pool) for c in cands
        ]


# ---- greedy dedup --------------------------------------------------------------------------


def _brute_dedup(texts, threshold, initial=(), stem=False, *, reference=True):
    """Greedy dedup by comparing each text with every kept one: with rouge-score (its tokenizer
    and LCS scorer, tokens computed once), or with ``rouge_l`` pair by pair."""
    if reference:
        tok = (SCORER_STEM if stem else SCORER)._tokenizer.tokenize
        items = [tok(t) for t in texts]
        kept_items = [tok(t) for t in initial]

        def score(a, b):
            return rouge_scorer._score_lcs(a, b).fmeasure
    else:
        items, kept_items = list(texts), list(initial)

        def score(a, b):
            return rouge_l(a, b, stem=stem).fmeasure

    kept, dropped, best = [], [], []
    for i, item in enumerate(items):
        top = max((score(k, item) for k in kept_items), default=-1.0)
        if top > threshold:
            dropped.append(i)
            best.append(top)
        else:
            kept.append(i)
            kept_items.append(item)
    return kept, dropped, best


def _sample_with_duplicates(bench_texts, n, seed):
    rng = random.Random(seed)
    start = rng.randrange(len(bench_texts) - n)
    texts = list(bench_texts[start : start + n])
    for _ in range(n // 5):  # more near-duplicates, some within a block
        i = rng.randrange(len(texts))
        texts.insert(min(len(texts), i + rng.randrange(1, 20)), _edit(rng, texts[i]))
    return texts


@pytest.fixture(scope="module")
def dedup_sample(bench_texts):
    texts = _sample_with_duplicates(bench_texts, 250, seed=2)
    return texts, _brute_dedup(texts, 0.7)


@pytest.mark.parametrize("block_size", [1024, 7])
def test_greedy_dedup_matches_rouge_score_brute_force(dedup_sample, block_size):
    texts, (kept, dropped, best) = dedup_sample
    seen = []
    res = greedy_dedup(texts, 0.7, block_size=block_size, progress=seen.append)
    assert res.kept == kept and res.dropped == dropped
    assert len(dropped) > 40  # the sample has duplicates to find
    assert np.max(np.abs(np.array(res.dropped_scores) - np.array(best))) < TOL
    assert res.total == len(texts) and seen[-1] == len(texts)
    for i, score, match in zip(res.dropped, res.dropped_scores, res.dropped_match, strict=True):
        # the match is a kept text before i, and the first one with the top score
        assert match in kept and match < i
        scores = [rouge_l(texts[k], texts[i]).fmeasure for k in kept if k < i]
        assert score == max(scores)
        assert match == [k for k in kept if k < i][scores.index(score)]


def test_greedy_dedup_other_thresholds_initial_and_stem(bench_texts, paper_texts):
    texts = _sample_with_duplicates(bench_texts, 150, seed=3)
    initial = paper_texts[:40] + texts[::17]
    for threshold in (0.0, 0.35, 0.5, 0.9, 1.0):
        res = greedy_dedup(texts, threshold, block_size=16)
        want = _brute_dedup(texts, threshold, reference=False)
        assert (res.kept, res.dropped) == want[:2], threshold
    res = greedy_dedup(texts, 0.7, initial=initial, block_size=32)
    kept, dropped, _ = _brute_dedup(texts, 0.7, initial=initial, reference=False)
    assert (res.kept, res.dropped) == (kept, dropped)
    assert any(m < 0 for m in res.dropped_match)  # some were dropped because of `initial`
    res = greedy_dedup(texts, 0.6, stem=True, block_size=50)
    want = _brute_dedup(texts, 0.6, stem=True, reference=False)
    assert (res.kept, res.dropped) == want[:2]
    assert _brute_dedup(texts[:60], 0.6, stem=True)[:2] == want_prefix(texts[:60], 0.6)


def want_prefix(texts, threshold):
    res = greedy_dedup(texts, threshold, stem=True)
    return res.kept, res.dropped


def test_greedy_dedup_score_floor_gives_every_max(bench_texts):
    texts = _sample_with_duplicates(bench_texts, 200, seed=5)
    res = greedy_dedup(texts, 0.7, score_floor=0.4, block_size=64)
    plain = greedy_dedup(texts, 0.7)
    assert (res.kept, res.dropped, res.dropped_scores) == (
        plain.kept,
        plain.dropped,
        plain.dropped_scores,
    )
    kept: list[int] = []
    assert res.max_scores is not None and len(res.max_scores) == len(texts)
    for i, text in enumerate(texts):
        best = max((rouge_l(texts[k], text).fmeasure for k in kept), default=0.0)
        got = res.max_scores[i]
        if best > 0.4:
            assert abs(got - best) < TOL
        else:
            assert math.isnan(got)
        if best <= 0.7:
            kept.append(i)
    assert kept == res.kept
    with pytest.raises(ValueError):
        greedy_dedup(texts, 0.5, score_floor=0.6)


def test_greedy_dedup_small_cases():
    assert greedy_dedup([]).kept == []
    res = greedy_dedup(["a b c", "a b c", "", "", "x y", "A, B; C!"], 0.7)
    assert res.kept == [0, 2, 3, 4] and res.dropped == [1, 5]
    assert res.dropped_scores == [1.0, 1.0] and res.dropped_match == [0, 0]
    res = greedy_dedup(["a", "b", ""], -0.5)  # everything scores above a negative threshold
    assert res.kept == [0] and res.dropped == [1, 2]
    res = greedy_dedup(["a b", "a b"], 0.7, initial=["zz", "a b"])
    assert res.kept == [] and res.dropped_match == [-2, -2]


# ---- another tokenizer -----------------------------------------------------------------------


def _chars(text: str) -> list[str]:
    """One token per non-space character: the shape of a CJK tokenizer."""
    return [ch for ch in text if not ch.isspace()]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.text("天地人山水火木", max_size=10), max_size=20),
    st.lists(st.text("天地人山水火木", max_size=10), min_size=1, max_size=4),
)
def test_index_and_dedup_with_another_tokenizer(pool, cands):
    index = RougeLIndex(pool, tokenizer=_chars)
    for cand in cands:
        want = [rouge_l(t, cand, tokenizer=_chars).fmeasure for t in pool]
        assert index.scores(cand).tolist() == want
        assert index.top_k(cand, 3) == _brute_top_k(want, 3)
        for t in (0.0, 0.5, 0.7):
            assert index.exceeds(cand, t) == any(s > t for s in want)
    texts = pool + cands
    got = greedy_dedup(texts, 0.7, tokenizer=_chars, block_size=4)
    kept: list[str] = []
    want_kept = []
    for i, text in enumerate(texts):
        if all(rouge_l(k, text, tokenizer=_chars).fmeasure <= 0.7 for k in kept):
            kept.append(text)
            want_kept.append(i)
    assert got.kept == want_kept


def test_tokenizer_replaces_rouge_scores_own():
    # rouge-score's tokenizer sees no token in Chinese text: every pair scores 0.
    assert rouge_l("天地人", "天地人").fmeasure == 0.0
    assert rouge_l("天地人", "天地人", tokenizer=_chars).fmeasure == 1.0
    assert rouge_l("天地人", "天人", tokenizer=_chars) == rouge_l("a b c", "a c")
    with pytest.raises(ValueError):
        RougeLIndex(stem=True, tokenizer=_chars)
