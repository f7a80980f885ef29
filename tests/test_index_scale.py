"""The prefix index (what keeps step 1's cost per candidate about flat as a pool grows) gives the
decisions, nearest texts and means that a plain all-pairs comparison gives.

The prefix index is used once an index holds ``_PREFIX_MIN_TEXTS`` texts (blocks of queries:
``_PREFIX_BLOCK_MIN_TEXTS``); most tests here set both to 0 so that small generated pools go
through it (see ``prefix_always``), and one test runs a real instruction pool through it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfinstruct import similarity
from selfinstruct.similarity import RougeLIndex, greedy_dedup, rouge_l

# ../shared/data beside the project (or beside the worktrees' folder, for a git worktree)
_HERE = Path(__file__).resolve().parents[1]
DATA = next(
    (p / "shared" / "data" for p in (_HERE.parent, _HERE.parent.parent) if (p / "shared").exists()),
    _HERE.parent / "shared" / "data",
)


@pytest.fixture(params=["newest_in_dict", "all_in_runs"])
def prefix_always(monkeypatch, request):
    """The prefix index from the first text, in two ways: the newest texts (fewer than
    ``_TAIL_TEXTS``) in its dict, or every text taken into the sorted runs at once."""
    monkeypatch.setattr(similarity, "_PREFIX_MIN_TEXTS", 0)
    monkeypatch.setattr(similarity, "_PREFIX_BLOCK_MIN_TEXTS", 0)
    if request.param == "all_in_runs":
        monkeypatch.setattr(similarity, "_TAIL_TEXTS", 1)
        monkeypatch.setattr(similarity, "_BATCH_SHARE", 1 << 40)


def brute_best(pool: list[str], cand: str, threshold: float) -> tuple[int, float] | None:
    """The plain reference: every pool text scored, the best above the threshold (first on
    ties)."""
    best = None
    for pos, text in enumerate(pool):
        f = rouge_l(text, cand).fmeasure
        if f > threshold and (best is None or f > best[1]):
            best = (pos, f)
    return best


def brute_greedy(texts: list[str], threshold: float) -> list[int]:
    kept: list[str] = []
    out = []
    for i, text in enumerate(texts):
        if all(rouge_l(k, text).fmeasure <= threshold for k in kept):
            kept.append(text)
            out.append(i)
    return out


def step_one(texts: list[str], threshold: float, seeds: list[str] = ()) -> list[int]:
    """Step 1's decisions: ``best_above`` against the pool, then ``add`` when kept."""
    index = RougeLIndex(seeds)
    kept = []
    for i, text in enumerate(texts):
        if index.best_above(text, threshold) is None:
            index.add(text)
            kept.append(i)
    return kept


def texts_of(words: list[str], max_len: int):
    return st.lists(st.sampled_from(words), max_size=max_len).map(" ".join)


@st.composite
def near_duplicate_pool(draw):
    """Texts over a small vocabulary, with repeats, near-copies, and very short and long texts."""
    vocab = draw(st.sampled_from([list("abcd"), list("abcdefg"), [f"w{i}" for i in range(30)]]))
    base = draw(st.lists(texts_of(vocab, 14), min_size=1, max_size=30))
    out = []
    for text in base:
        out.append(text)
        words = text.split()
        kind = draw(st.integers(0, 5))
        if kind == 0:
            out.append(text)  # repeated
        elif kind == 1 and words:
            i = draw(st.integers(0, len(words) - 1))
            out.append(" ".join(words[:i] + words[i + 1 :]))  # one word dropped
        elif kind == 2 and words:
            i = draw(st.integers(0, len(words) - 1))
            out.append(" ".join(words[:i] + [draw(st.sampled_from(vocab))] + words[i:]))
        elif kind == 3:
            out.append(" ".join(draw(st.sampled_from(vocab)) for _ in range(120)))  # long
    draw(st.randoms()).shuffle(out)
    return out


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(near_duplicate_pool(), st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.75, 1.0]))
def test_decisions_equal_all_pairs(prefix_always, texts, threshold):
    assert step_one(texts, threshold) == brute_greedy(texts, threshold)
    assert greedy_dedup(texts, threshold, block_size=7).kept == brute_greedy(texts, threshold)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(near_duplicate_pool())
def test_pair_hash_collisions_only_add_candidates(prefix_always, monkeypatch, texts):
    """Every pair hashed to one key: each lookup reads every entry, each judged on its own
    bound, and the decisions are still those of all pairs."""
    monkeypatch.setattr(similarity, "_PAIR_A", 0)
    monkeypatch.setattr(similarity, "_PAIR_B", 0)
    assert step_one(texts, 0.7) == brute_greedy(texts, 0.7)
    one = decide_one_by_one(texts[:2], texts[2:], 0.7)
    batched = decide_in_batches(texts[:2], texts[2:], 0.7, 9)
    assert all(probes_equal(g, w) for g, w in zip(batched, one, strict=True))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(near_duplicate_pool(), st.data())
def test_best_above_equals_all_pairs_as_the_index_grows(prefix_always, texts, data):
    index = RougeLIndex()
    for i, text in enumerate(texts):
        pool = texts[:i]
        cand = data.draw(st.sampled_from(texts))
        for t in (0.0, 0.5, 0.7):
            assert index.best_above(cand, t) == brute_best(pool, cand, t)
            assert index.exceeds(cand, t) == (brute_best(pool, cand, t) is not None)
        index.add(text)  # re-ranks each time the index doubles


def probes_equal(a: similarity.Probe, b: similarity.Probe) -> bool:
    return (
        (a.match, a.code, a.m, a.before) == (b.match, b.code, b.m, b.before)
        and a.near.tolist() == b.near.tolist()
        and a.near_f1.tolist() == b.near_f1.tolist()
    )


def decide_one_by_one(seeds: list[str], texts: list[str], threshold: float):
    index = RougeLIndex(seeds)
    probes = []
    for text in texts:
        probes.append(index.probe(text, threshold))
        if probes[-1].match is None:
            index.add(text)
    return probes


def decide_in_batches(seeds: list[str], texts: list[str], threshold: float, size: int):
    index = RougeLIndex(seeds)
    probes = []
    for start in range(0, len(texts), size):
        batch = index.probe_many(texts[start : start + size], threshold)
        for k in range(len(batch.texts)):
            probes.append(batch.probe(k))
            if probes[-1].match is None:
                batch.keep(k)
    return probes


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(near_duplicate_pool(), st.sampled_from([0.0, 0.5, 0.7]), st.integers(1, 40))
def test_probes_in_batches_equal_probes_one_by_one(prefix_always, texts, threshold, size):
    """Every field of every ``Probe``, the texts scored on the way included: new words, texts
    kept within a batch, re-ranking in the middle of one."""
    seeds, rest = texts[:3], texts[3:]
    one = decide_one_by_one(seeds, rest, threshold)
    assert len(one) == len(rest)
    for got, want in zip(decide_in_batches(seeds, rest, threshold, size), one, strict=True):
        assert probes_equal(got, want)


def test_probes_in_batches_on_real_lines_equal_probes_one_by_one(monkeypatch):
    """2,500 real lines and reordered copies, the pair index from 1,024 texts: batches of 140
    (a request of 20 answers) give every ``Probe`` as one by one does, and most of the
    candidates are served by the batch, not one at a time."""
    monkeypatch.setattr(similarity, "_PREFIX_MIN_TEXTS", 1024)
    lines = _bench_lines(2500)
    rng = random.Random(3)
    lines += [" ".join(rng.sample(t.split(), len(t.split()))) for t in rng.sample(lines, 200)]
    rng.shuffle(lines)
    seeds, rest = lines[:1100], lines[1100:]
    served = []
    real_probe = similarity.RougeLIndex.probe

    def counting_probe(self, text, threshold):
        served.append(text)
        return real_probe(self, text, threshold)

    one = decide_one_by_one(seeds, rest, 0.7)
    monkeypatch.setattr(similarity.RougeLIndex, "probe", counting_probe)
    batched = decide_in_batches(seeds, rest, 0.7, 140)
    assert all(probes_equal(g, w) for g, w in zip(batched, one, strict=True))
    assert sum(p.match is not None for p in one) > 50
    assert len(served) < len(rest) // 4


def test_exact_ties_at_the_threshold(prefix_always):
    # 10 and 10 tokens with an LCS of 7: F1 is 0.7 as rouge-score computes it, not above.
    pool = ["a b c d e f g h i j", "a b c d e f g x y z", "k l m n o p q r s t"]
    tie = "a b c d e f g u v w"
    ref = [rouge_l(p, tie).fmeasure for p in pool]
    assert ref[0] == ref[1] and not ref[0] > 0.7 and abs(ref[0] - 0.7) < 1e-12
    index = RougeLIndex(pool)
    assert index.best_above(tie, 0.7) is None
    assert index.best_above(tie, 0.69) == (0, ref[0])  # ties go to the earlier text
    assert step_one([*pool, tie], 0.7) == [0, 1, 2, 3] == brute_greedy([*pool, tie], 0.7)


def test_unknown_tokens_and_empty_texts(prefix_always):
    index = RougeLIndex(["alpha beta", "", "...", "alpha beta gamma delta"])
    assert index.best_above("alpha beta zeta", 0.5) == (
        0,
        rouge_l("alpha beta", "alpha beta zeta").fmeasure,
    )
    assert index.best_above("zeta eta", 0.0) is None
    assert index.best_above("", 0.0) is None


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(near_duplicate_pool())
def test_pool_similarity_beyond_the_exact_mean(monkeypatch, texts):
    """Past ``MEAN_EXACT_UP_TO``: the top 10 holds every earlier text above the probe's
    threshold first, each with its exact F1, then the best of the rest that the probe scored
    or the sample holds; the mean is the sample's, one sample for a whole call (below the
    earliest item's position). A pool no bigger than the sample gives exact figures."""
    monkeypatch.setattr(similarity, "_PREFIX_MIN_TEXTS", 0)
    monkeypatch.setattr(similarity, "MEAN_EXACT_UP_TO", 0)
    monkeypatch.setattr(similarity, "MEAN_SAMPLE", 2048)  # the fixture outlives one example
    index = RougeLIndex(texts)
    items = [(texts[i], i) for i in range(len(texts))]
    for text, before in items:
        [(top, mean)] = index.pool_similarity([(text, before)])
        scores = [rouge_l(p, text).fmeasure for p in texts[:before]]
        order = sorted(range(before), key=lambda p: (-scores[p], p))[:10]
        assert top == [(p, scores[p]) for p in order]
        assert mean == pytest.approx(float(np.mean(scores)) if scores else 0.0, abs=1e-12)
    monkeypatch.setattr(similarity, "MEAN_SAMPLE", 3)
    lowest = min((b for _, b in items if b > 0), default=0)
    sample = list(range(lowest)) if lowest <= 3 else [i * lowest // 3 for i in range(3)]
    for (text, before), (top, mean) in zip(items, index.pool_similarity(items), strict=True):
        scores = [rouge_l(p, text).fmeasure for p in texts[:before]]
        above = sorted((p for p in range(before) if scores[p] > 0.7), key=lambda p: -scores[p])
        above = sorted(above, key=lambda p: (-scores[p], p))[:10]
        assert [p for p, _ in top[: len(above)]] == above
        assert all(f == scores[p] for p, f in top)
        assert [f for _, f in top] == sorted((f for _, f in top), reverse=True)
        if before:
            best = min(sample, key=lambda p: (-scores[p], p))
            assert best in {p for p, _ in top} or scores[best] <= top[-1][1]
            want = float(np.mean([scores[p] for p in sample]))
            assert mean == pytest.approx(want, abs=1e-12)


def test_pool_similarity_small_pools_are_todays_figures():
    texts = ["write a poem", "write a short poem", "sort a list", "translate this text"]
    index = RougeLIndex(texts)
    (top, mean), (top0, mean0) = index.pool_similarity([(texts[3], 3), (texts[0], 0)])
    scores = np.array([rouge_l(p, texts[3]).fmeasure for p in texts[:3]])
    assert mean == float(scores.mean()) and (top0, mean0) == ([], 0.0)
    assert top == sorted(((p, scores[p]) for p in range(3)), key=lambda x: (-x[1], x[0]))


def _bench_lines(n: int) -> list[str]:
    path = DATA / "bench_instructions_52k.jsonl"
    if not path.exists():
        pytest.skip(f"../shared/data absent: {path} lies beside the project only")
    with path.open(encoding="utf-8") as fh:
        lines = [json.loads(line)["instruction"] for _, line in zip(range(n), fh, strict=False)]
    return lines


def test_real_pool_past_the_prefix_size_equals_the_block_dedup_and_all_pairs(monkeypatch):
    """6,000 real lines with near-duplicates through step 1's path (prefix index from 2,048 here
    texts, re-ranked at 4,096): the same kept set as the block dedup, and the same best match as
    all pairs for a sample of candidates."""
    monkeypatch.setattr(similarity, "_PREFIX_MIN_TEXTS", 2048)
    lines = _bench_lines(6000)
    rng = random.Random(5)
    lines += [" ".join(rng.sample(t.split(), len(t.split()))) for t in rng.sample(lines, 300)]
    seeds = lines[:175]
    texts = lines[175:]
    index = RougeLIndex(seeds)
    kept = []
    for i, text in enumerate(texts):
        if i % 97 == 0 and len(index) > similarity._PREFIX_MIN_TEXTS:
            pool = [index.text(p) for p in range(len(index))]
            assert index.best_above(text, 0.7) == brute_best(pool, text, 0.7)
        if index.best_above(text, 0.7) is None:
            index.add(text)
            kept.append(i)
    assert index._prefixes, "the prefix index was not used"
    assert kept == greedy_dedup(texts, 0.7, initial=seeds).kept


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(near_duplicate_pool(), st.integers(0, 6))
def test_many_texts_added_at_once_index_as_one_by_one(monkeypatch, texts, split):
    """``add_many`` (with numpy past ``_BULK_FROM`` texts, as when step 1 resumes) leaves the
    index as adding the texts one by one does: the same postings, signatures and answers."""
    monkeypatch.setattr(similarity, "_BULK_FROM", 0)
    monkeypatch.setattr(similarity, "_PREFIX_MIN_TEXTS", 0)
    head = texts[: min(split, len(texts))]
    one_by_one, at_once = RougeLIndex(), RougeLIndex(head[:1])
    for text in texts:
        one_by_one.add(text)
    at_once.add_many(head[1:])  # onto texts already there, then onto an empty index
    at_once.add_many(texts[len(head) :])
    post_a, post_b = one_by_one._post, at_once._post
    assert sorted(post_a.sizes) == sorted(post_b.sizes)
    for elem in post_a.sizes:
        assert post_a.view(elem).tolist() == post_b.view(elem).tolist()
    used = len(texts)
    assert (one_by_one._signatures.rows[:used] == at_once._signatures.rows[:used]).all()
    for cand in texts + ["a b c", "w1 w2 w3 w4"]:
        assert one_by_one.best_above(cand, 0.5) == at_once.best_above(cand, 0.5)
        assert one_by_one.top_k(cand, 3) == at_once.top_k(cand, 3)


def test_a_vocabulary_past_the_surrogate_code_points(monkeypatch):
    """Token ids are code points; ids 0xD800-0xDFFF (a vocabulary past 55,296 words) are
    surrogates, which a str holds but UTF-32 may not carry: building in bulk, re-ranking and
    probing still work, and decide as all pairs."""
    monkeypatch.setattr(similarity, "_PREFIX_MIN_TEXTS", 0)
    texts = [" ".join(f"w{10 * i + j}" for j in range(10)) for i in range(6000)]
    index = RougeLIndex(texts)  # in bulk: ids up to 59,999
    assert any(0xD800 <= ord(ch) <= 0xDFFF for ch in index._codes[5600])
    near = " ".join(f"w{56000 + j}" for j in range(9))  # nine of text 5600's ten words
    assert index.best_above(near, 0.7) == (5600, rouge_l(texts[5600], near).fmeasure)
    index.add(near + " fresh")
    assert index.best_above(near + " fresh", 0.7) == (6000, 1.0)
