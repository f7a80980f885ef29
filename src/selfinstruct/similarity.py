"""Exact ROUGE-L (the ``rouge-score`` package's figures) and fast near-duplicate search.

Scores are identical to ``rouge_score.rouge_scorer.RougeScorer(["rougeL"])``: the same
tokenizer (lower-case, every run of characters other than ``a-z0-9`` is a separator, optional
Porter stemming of tokens longer than 3 characters), the same LCS length and the same
floating-point formulas for precision, recall and F1 (0 when either side has no token).

Speed comes from three things:

* each distinct token gets an integer id, and a text becomes a string whose code points are
  those ids, so the LCS over tokens is a bit-parallel LCS over characters computed by
  ``rapidfuzz.distance.LCSseq`` in compiled code;
* exact upper bounds prune pairs before any LCS is computed: LCS <= min(m, n) and
  LCS <= the multiset overlap of the two token lists, F1 = 2 * LCS / (m + n);
* an inverted index on token occurrences finds, for a threshold query, only the indexed texts
  that share one of the candidate's rarest tokens (the prefix filter of set-similarity joins:
  a text whose F1 with the candidate exceeds t must share at least ``alpha`` token occurrences
  with it, so it must contain one of any ``m - alpha + 1`` of the candidate's occurrences).
  The longest posting probed is only read for the narrow band of lengths where one shared
  occurrence could be enough, and searched otherwise;
* in a large collection, an index on *pairs* of each text's rarest tokens (``_PrefixIndex``)
  finds only the texts that share two of the candidate's rarest tokens, in positions that
  leave the threshold reachable: single tokens' postings grow with the pool, pairs' hardly
  do; a 256-bit signature per text (``_Signatures``) bounds the token overlap of whatever is
  left when that is many texts, before any LCS.

``greedy_dedup`` handles texts in blocks: each block is compared with the kept texts, and with
itself, in a few large numpy and rapidfuzz calls, then kept or dropped in order.

Every decision is taken on the exact F1 computed with rouge-score's own formula; the bounds are
only used, with a safety margin, to skip pairs that provably cannot matter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

__all__ = [
    "DedupResult",
    "RougeLIndex",
    "Score",
    "greedy_dedup",
    "rouge_l",
    "tokenize",
    "tokenizer_for",
]

# rouge-score replaces each run of characters other than a-z0-9 by a space and splits on
# whitespace: the tokens are exactly the maximal runs of a-z0-9.
_TOKEN = re.compile(r"[a-z0-9]+")

# Code points a Python str can hold; token ids from here on are stored as lists of ints,
# which rapidfuzz compares by value, so a str text and a list text still compare correctly.
_CODE_LIMIT = 0x110000
# Margin for bounds computed in floating point: a pair is skipped only when its bound is below
# the threshold by more than this, far more than the few ulps of rounding in any F1 figure.
_SLACK = 1e-9
# Occurrence k (0-based) of token id t is the multiset element t | (k << _OCC_SHIFT).
_OCC_SHIFT = 40


# --------------------------------------------------------------------------------------------
# Tokenizer


class _Stemmer:
    """NLTK's Porter stemmer (the one rouge-score uses), with a per-word cache."""

    def __init__(self) -> None:
        try:
            from nltk.stem import porter
        except ImportError as exc:  # pragma: no cover - nltk comes with rouge-score
            from .errors import MissingExtraError

            raise MissingExtraError(
                "stemming (stem=True) needs nltk: pip install nltk (or rouge-score)"
            ) from exc
        self._stem = porter.PorterStemmer().stem
        self._cache: dict[str, str] = {}

    def __call__(self, word: str) -> str:
        out = self._cache.get(word)
        if out is None:
            out = self._stem(word)
            if len(self._cache) < 1_000_000:
                self._cache[word] = out
        return out


_stemmer: _Stemmer | None = None


def _get_stemmer() -> _Stemmer:
    global _stemmer
    if _stemmer is None:
        _stemmer = _Stemmer()
    return _stemmer


def tokenize(text: str, *, stem: bool = False) -> list[str]:
    """Tokens exactly as rouge-score's default tokenizer makes them.

    Lower-case, turn every run of characters other than a-z and 0-9 into a space, split. With
    ``stem=True`` tokens longer than 3 characters go through NLTK's Porter stemmer, then any
    token that is empty or not purely a-z0-9 is dropped (as rouge-score does).
    """
    tokens = _TOKEN.findall(text.lower())
    if stem:
        stemmer = _get_stemmer()
        tokens = [stemmer(tok) if len(tok) > 3 else tok for tok in tokens]
        tokens = [tok for tok in tokens if _TOKEN.fullmatch(tok)]
    return tokens


# --------------------------------------------------------------------------------------------
# Pairwise score


@dataclass(frozen=True)
class Score:
    """ROUGE-L precision, recall and F1, as rouge-score reports them."""

    precision: float
    recall: float
    fmeasure: float


def _fmeasure(precision: float, recall: float) -> float:
    # rouge_score.scoring.fmeasure, same operations in the same order.
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _as_code(ids: Sequence[int]) -> str | list[int]:
    """A token-id sequence as a string of code points (or a list when an id is too large)."""
    if ids and max(ids) >= _CODE_LIMIT:
        return list(ids)
    return "".join(map(chr, ids))


def _lcs_tokens(a: list[str], b: list[str]) -> int:
    ids: dict[str, int] = {}
    ia = [ids.setdefault(tok, len(ids)) for tok in a]
    ib = [ids.setdefault(tok, len(ids)) for tok in b]
    return int(LCSseq.similarity(_as_code(ia), _as_code(ib)))


Tokenizer = Callable[[str], list[str]]


def tokenizer_for(stem: bool = False, tokenizer: Tokenizer | None = None) -> Tokenizer:
    """The function that turns a text into tokens: ``tokenizer`` when given (any tokens; ROUGE-L
    is computed over them), else rouge-score's tokenizer with or without stemming."""
    if tokenizer is None:
        return _stemmed_tokenize if stem else _plain_tokenize
    if stem:
        raise ValueError("stem=True applies to the default tokenizer only; stem inside yours")
    return tokenizer


def _plain_tokenize(text: str) -> list[str]:
    return tokenize(text)


def _stemmed_tokenize(text: str) -> list[str]:
    return tokenize(text, stem=True)


def rouge_l(
    target: str,
    prediction: str,
    *,
    stem: bool = False,
    tokenizer: Tokenizer | None = None,
    language: str | None = None,
) -> Score:
    """ROUGE-L of ``prediction`` against ``target``; same argument order as rouge-score's
    ``RougeScorer.score(target, prediction)`` (precision is over the prediction's tokens).
    ``tokenizer`` replaces rouge-score's tokenizer (see :func:`tokenizer_for`); ``language``
    (an ISO code such as ``"zh"``) takes that language's (``selfinstruct.language``; ``"en"``
    is rouge-score's)."""
    if language is not None and tokenizer is None:
        from .language import tokenizer_of

        tokenizer = tokenizer_of(language)
    split = tokenizer_for(stem, tokenizer)
    t_tokens = split(target)
    p_tokens = split(prediction)
    if not t_tokens or not p_tokens:
        return Score(0.0, 0.0, 0.0)
    lcs = _lcs_tokens(t_tokens, p_tokens)
    precision = lcs / len(p_tokens)
    recall = lcs / len(t_tokens)
    return Score(precision, recall, _fmeasure(precision, recall))


def _f1_array(lcs: np.ndarray, m: int | np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Vectorised rouge-score F1 for LCS lengths ``lcs`` between texts of ``m`` tokens (a number
    or an array) and texts of ``lens`` tokens; bit-identical to the scalar formula (the same
    IEEE operations in the same order; 0 where a side has no token)."""
    lcs_f = lcs.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs_f / m
        recall = np.divide(lcs_f, lens, out=lcs_f)
        total = precision + recall
        precision *= 2
        precision *= recall
        out = np.divide(precision, total, out=precision)
    out[~(total > 0)] = 0.0  # no common token, or an empty side (0/0)
    return out


_f1_tables: dict[tuple[int, int], np.ndarray] = {}


def _f1_lookup(lcs: np.ndarray, m: int, lens: np.ndarray, width: int) -> np.ndarray:
    """``_f1_array(lcs, m, lens)`` for one m, by table look-up (lens < width): the table holds
    the very same floating-point results for every (LCS, length) pair."""
    if (m + 1) * width > 1 << 20:
        return _f1_array(lcs, m, lens)
    key = (m, width)
    table = _f1_tables.get(key)
    if table is None:
        grid_l = np.repeat(np.arange(m + 1, dtype=np.int64), width)
        grid_n = np.tile(np.arange(width, dtype=np.int64), m + 1)
        table = _f1_array(grid_l, m, grid_n)
        if len(_f1_tables) >= 256:
            _f1_tables.clear()
        _f1_tables[key] = table
    idx = lcs.astype(np.int64) * width
    idx += lens
    return table[idx]


def _min_overlap(m: int, threshold: float) -> int:
    """A lower bound on the token overlap an m-token text needs with any text for F1 > threshold.

    F1 = 2L/(m+n) with L <= min(m, n), so F1 > t needs L > t*m/(2-t) whatever n is. The result is
    kept on the safe (small) side of every rounding.
    """
    tt = threshold - _SLACK
    if tt <= 0:
        return 1
    x = tt * m / (2.0 - tt)
    return max(1, math.floor(x - 1e-6) + 1)


_BIG_POSTING = 64  # postings at least this long are searched rather than read in full
_MAX_BAND = 1 << 20  # lengths beyond this are never handled by the search path
_band_cache: dict[tuple[int, int, float], tuple[int, int]] = {}


def _band(m: int, cap: int, tt: float) -> tuple[int, int]:
    """The lengths n (an interval, possibly empty: lo > hi) for which a text of n tokens can
    pass ``2 * min(cap, m, n) > tt * (m + n)``, the bound test used on candidates; the same
    floating-point test, so the two agree exactly."""
    key = (m, cap, tt)
    hit = _band_cache.get(key)
    if hit is not None:
        return hit
    c = min(cap, m)

    def ok(n: int) -> bool:
        return 2.0 * min(c, n) > tt * (m + n)

    if tt <= 0:
        out = (1, _MAX_BAND) if c > 0 else (1, 0)
    else:
        lo = max(1, int(tt * m / (2.0 - tt)) - 1)
        while lo <= c and not ok(lo):
            lo += 1
        if lo > c:
            out = (1, 0)
        else:
            hi = max(lo, min(_MAX_BAND, int(2.0 * c / tt) - m - 1))
            while hi < _MAX_BAND and ok(hi + 1):
                hi += 1
            while hi > lo and not ok(hi):
                hi -= 1
            out = (lo, hi)
    if len(_band_cache) < 100_000:
        _band_cache[key] = out
    return out


# --------------------------------------------------------------------------------------------
# Index


class _Query:
    """A tokenized candidate, encoded with an index's vocabulary."""

    __slots__ = ("code", "complete", "elems", "m")

    def __init__(self, code: str | list[int], elems: list[int], m: int, complete: bool):
        self.code = code  # token ids as code points
        self.elems = elems  # multiset elements of the tokens the index knows
        self.m = m  # number of tokens
        self.complete = complete  # every token known to the index (so ids are exact)


def _ids_of(code: str | list[int]) -> list[int]:
    return list(map(ord, code)) if isinstance(code, str) else code


def _elements(ids: Sequence[int]) -> list[int]:
    """The multiset of token ids as distinct keys: k-th occurrence of t -> t | (k << shift)."""
    if len(set(ids)) == len(ids):
        return list(ids)
    seen: dict[int, int] = {}
    out = []
    for t in ids:
        k = seen.get(t, 0)
        seen[t] = k + 1
        out.append(t | (k << _OCC_SHIFT) if k else t)
    return out


class _Postings:
    """For each multiset element, the ascending positions of the indexed texts that hold it.

    Appends wait in plain lists and are moved into growable int32 arrays when a posting is
    read, so adding a text costs a few list appends and reading a posting is a slice.
    """

    __slots__ = ("arrays", "dtype", "pending", "sizes")

    def __init__(self, dtype: type = np.int32) -> None:
        self.dtype = dtype
        self.arrays: dict[int, np.ndarray] = {}
        self.pending: dict[int, list[int]] = {}
        self.sizes: dict[int, int] = {}  # document frequency, pending appends included

    def add(self, elem: int, pos: int) -> None:
        sizes = self.sizes
        sizes[elem] = sizes.get(elem, 0) + 1
        waiting = self.pending.get(elem)
        if waiting is None:
            self.pending[elem] = [pos]
        else:
            waiting.append(pos)

    def extend(self, elems: np.ndarray, positions: np.ndarray) -> None:
        """Add many (element, position) at once; every position above those already held."""
        if elems.size == 0:
            return
        order = np.lexsort((positions, elems))
        elems, positions = elems[order], positions[order].astype(self.dtype)
        heads = np.flatnonzero(np.concatenate(([True], elems[1:] != elems[:-1])))
        bounds = np.append(heads, elems.size).tolist()
        sizes, arrays = self.sizes, self.arrays
        for elem, lo, hi in zip(elems[heads].tolist(), bounds, bounds[1:], strict=False):
            held = sizes.get(elem)
            chunk = positions[lo:hi]  # a view: the posting grows into a new array, if ever
            arrays[elem] = chunk if held is None else np.concatenate((self.view(elem), chunk))
            sizes[elem] = (held or 0) + hi - lo

    def view(self, elem: int) -> np.ndarray:
        size = self.sizes[elem]
        waiting = self.pending.pop(elem, None)
        if waiting is None:
            return self.arrays[elem][:size]
        start = size - len(waiting)
        arr = self.arrays.get(elem)
        if arr is None or arr.shape[0] < size:
            grown = np.empty(max(4, 2 * size), dtype=self.dtype)
            if arr is not None:
                grown[:start] = arr[:start]
            arr = self.arrays[elem] = grown
        arr[start:size] = waiting
        return arr[:size]


# A pair-index entry packs, high bits to low: the pair's hashed key, the text's position, and
# the rank in the text of the pair's second element, capped (a lower rank only loosens the
# bound, so a capped one is safe).
_RANK_BITS = 6
_POS_BITS = 28  # positions up to 268 million
_KEY_SHIFT = np.uint64(_RANK_BITS + _POS_BITS)
_RANK_CAP = (1 << _RANK_BITS) - 1  # ranks beyond are stored as this (a looser bound)
_RANK_FIELD = np.uint64(_RANK_CAP)
_POS_FIELD = np.uint64((1 << _POS_BITS) - 1)
_LOW_FIELDS = np.uint64((1 << (_RANK_BITS + _POS_BITS)) - 1)
_KEY_DROP = 64 - (64 - _RANK_BITS - _POS_BITS)  # a 64-bit hash keeps its top 30 bits
_UNRANKED = 1 << 62  # elements first seen after the last re-ranking sort before all others
_PREFIX_MIN_TEXTS = 32_768  # below this, whole postings are as fast (measured: even near 50K)
_PREFIX_BLOCK_MIN_TEXTS = 65_536  # the same for blocks of queries (``greedy_dedup``)
_TAIL_TEXTS = 8192  # the fewest new texts a prefix index takes into its runs at once
_BATCH_SHARE = 16  # ... and at least this share of those it holds (1/16)
_DIRECTORY_MAX_BITS = 24  # a run's directory: at most 16M buckets (64 MB)
_BULK_FROM = 1024  # ``add_many`` indexes this many texts or more with numpy, not one by one
_M64 = (1 << 64) - 1
_PAIR_A = 0x9E3779B97F4A7C15  # two odd multipliers: an ordered pair -> 32 mixed bits
_PAIR_B = 0xC2B2AE3D27D4EB4F
_need_tables: dict[tuple[int, float], np.ndarray] = {}
_limits: dict[tuple[int, float, int, int], tuple[np.ndarray, list[int]]] = {}


def _pair_keys(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The hash key of each ordered pair of elements; the same integers as the scalar
    ``((a * _PAIR_A) mod 2**64 ^ (b * _PAIR_B) mod 2**64) >> _KEY_DROP`` in ``_PrefixIndex``."""
    a = first.astype(np.uint64) * np.uint64(_PAIR_A)  # wraps modulo 2**64, as intended
    a ^= second.astype(np.uint64) * np.uint64(_PAIR_B)
    a >>= np.uint64(_KEY_DROP)
    return a


def _probe_limits(m: int, tt: float, lo: int, hi: int) -> tuple[np.ndarray, list[int]]:
    """``(need, reach)`` for an m-token query: ``need`` as ``_need_table``; ``reach[i]`` the
    highest rank j an element can have in a text of a passing length (lo..hi) and still be the
    first common element when it has rank i in the query (both prefix bounds: need <= m - i
    and need <= n - j), -1 when there is no such length."""
    key = (m, tt, lo, hi)
    hit = _limits.get(key)
    if hit is not None:
        return hit
    need = _need_table(m, tt, hi)
    ns = np.arange(lo, hi + 1)
    room = ns - need[lo : hi + 1]
    reach = []
    for i in range(m + 1):
        ok = need[lo : hi + 1] <= m - i
        reach.append(int(room[ok].max()) if ok.any() else -1)
    if len(_limits) >= 4096:
        _limits.clear()
    _limits[key] = out = (need, reach)
    return out


def _need_table(m: int, tt: float, top: int) -> np.ndarray:
    """``need[n]`` for n in 0..top: the least token overlap L >= 1 for which an m-token and an
    n-token text can have ``2 * L > tt * (m + n)`` (F1 = 2L/(m+n) must exceed the threshold);
    the very floating-point test applied to candidates, so the two agree exactly."""
    key = (m, tt)
    table = _need_tables.get(key)
    if table is None or table.shape[0] <= top:
        if len(_need_tables) >= 4096:
            _need_tables.clear()
        table = _need_tables[key] = _need(m, np.arange(max(top + 1, 64), dtype=np.int64), tt)
    return table


def _need(m: int | np.ndarray, n: np.ndarray, tt: float) -> np.ndarray:
    """``_need_table``'s entries for these m and n (arrays, or m a number)."""
    bound = tt * (m + n.astype(np.float64))
    need = np.maximum(np.floor(bound / 2.0).astype(np.int64) + 1, 1)
    # Correct any rounding of the division by one step either way.
    need += ~(2.0 * need > bound)
    lower = need - 1
    need -= (lower >= 1) & (2.0 * lower > bound)
    return need


class _Run:
    """Entries of the pair index, each one integer: the pair's key, the text's position and
    the rank of the pair's second element in it (``_pack``), all sorted, so the entries of a
    key are one slice and building a run is one fast sort of plain integers.

    A binary search of tens of millions of entries misses the cache at nearly every step, so
    a directory on the keys' top bits (about four entries a bucket) leads a lookup straight
    to the few entries its key can be among."""

    __slots__ = ("directory", "packed", "shift")

    def __init__(self, packed: np.ndarray) -> None:
        self.packed = packed  # ascending uint64
        bits = min(max(int(packed.size).bit_length() - 2, 1), _DIRECTORY_MAX_BITS)
        self.shift = np.uint64(64 - bits)
        counts = np.bincount((packed >> self.shift).astype(np.intp), minlength=1 << bits)
        small = packed.size < 1 << 32  # offsets fit 32 bits: half the directory's memory
        directory = np.zeros((1 << bits) + 1, dtype=np.uint32 if small else np.int64)
        np.cumsum(counts, out=directory[1:])
        self.directory = directory

    def merged(self, other: _Run) -> _Run:
        # Two sorted runs end to end: the stable sort (timsort) merges them in linear time.
        return _Run(np.sort(np.concatenate((self.packed, other.packed)), kind="stable"))

    def lookup(
        self, wanted: np.ndarray, tags: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position, rank in the text, the tag given with the key) of each entry under the
        ``wanted`` keys (uint64)."""
        bucket = ((wanted << _KEY_SHIFT) >> self.shift).astype(np.intp)
        lo = self.directory[bucket].astype(np.int64)
        width = self.directory[bucket + 1] - lo
        total = int(width.sum())
        if total == 0:
            return _EMPTY_I64, _EMPTY_I64, _EMPTY_I64
        ends = np.cumsum(width)
        idx = np.arange(total, dtype=np.int64) + np.repeat(lo - (ends - width), width)
        found = self.packed[idx]
        same = (found >> _KEY_SHIFT) == np.repeat(wanted, width)  # the bucket's other keys out
        found = found[same]
        pos = ((found >> _RANK_BITS) & _POS_FIELD).astype(np.int64)
        rank = (found & _RANK_FIELD).astype(np.int64)
        return pos, rank, np.repeat(tags, width)[same]


_EMPTY_RUN_KEYS = np.zeros(0, dtype=np.uint64)


class _PrefixIndex:
    """The prefix filter of set-similarity joins on pairs of elements, length- and
    position-aware, for queries at thresholds >= ``floor`` (those whose passing lengths all
    need two common tokens or more: ``candidates`` says None to the others).

    Elements are put in one global order (rarest first, by document frequency when last
    re-ranked; elements seen only since then first of all). If an m-token and an n-token
    text share L >= need >= 2 elements, their first two common elements in that order both
    sit among the first ``m - need + 2`` elements of one and the first ``n - need + 2`` of
    the other, with at most ``min(m - 1 - i, n - 1 - j)`` common elements after the second
    (i, j its ranks). So a text is indexed under each pair of its first
    ``n - max(2, need_min(n)) + 2`` elements, and a query reads the pairs of its own first
    few. Two of a text's rarest tokens together are far rarer than either alone: what a query
    reads stays small as the pool grows, where single tokens' postings grow with it.

    Pairs are hashed to 32 bits. A collision only adds entries: each entry is judged on its
    own bound, and a text is a candidate when any of its entries passes, so the entry of its
    true first two common elements always keeps it.

    Texts are indexed in bulk, with numpy: all of them again, re-ranked, when the collection
    has doubled since the last ranking (``base``); the texts added since then in batches
    (``delta``), once they are a sixteenth of those indexed. The newest texts, until they are
    a batch, go one by one into a dict (``fresh``), entries in the runs' packing without the
    key.
    """

    def __init__(self, floor: float) -> None:
        self.floor = floor
        self.rank: dict[int, int] = {}
        self.base = _Run(_EMPTY_RUN_KEYS)  # texts 0..ranked_at-1
        self.delta = _Run(_EMPTY_RUN_KEYS)  # texts ranked_at..size-1
        self.size = 0  # texts in the runs
        self.ranked_at = 0  # collection size at the last re-ranking
        self.fresh: dict[int, int | list[int]] = {}  # texts size..fresh_to-1: key -> entries
        self.fresh_to = 0

    def _order(self, elems: Sequence[int]) -> list[int]:
        rank = self.rank
        return sorted(elems, key=lambda e: rank.get(e, e - _UNRANKED))

    def _prefix_len(self, n: int) -> int:
        return n - max(2, _min_overlap(n, self.floor)) + 2

    def catch_up(self, codes: np.ndarray, lens: np.ndarray, count: int) -> None:
        """Bring the index up to texts 0..count-1 (see the class)."""
        if 2 * self.ranked_at <= count:
            self.rebuild(codes, lens, count)
        elif count - self.size >= max(_TAIL_TEXTS, self.size // _BATCH_SHARE):
            self.extend(codes, lens, count)
        for pos in range(self.fresh_to, count):
            self.add_fresh(pos, self.pairs_of(pos, codes[pos], int(lens[pos])))

    def add_fresh(self, pos: int, pairs: list[tuple[int, int]]) -> None:
        """Put text ``pos``'s ``pairs_of`` in ``fresh`` if it is the next text it takes."""
        if pos == self.fresh_to:
            _dict_add(self.fresh, pairs)
            self.fresh_to += 1

    def pairs_of(self, pos: int, code: str | list[int], n: int) -> list[tuple[int, int]]:
        """(key, entry) of each pair a text is indexed under: what ``_pairs`` gives it, the
        entry without its key."""
        ordered = self._order(_elements(_ids_of(code)))
        firsts = [(e * _PAIR_A) & _M64 for e in ordered]
        out: list[tuple[int, int]] = []
        for j in range(1, self._prefix_len(n)):
            second = (ordered[j] * _PAIR_B) & _M64
            entry = (pos << _RANK_BITS) | min(j, _RANK_CAP)
            out += [((a ^ second) >> _KEY_DROP, entry) for a in firsts[:j]]
        return out

    def _clear_fresh(self, count: int) -> None:
        self.fresh = {}
        self.fresh_to = count

    def rebuild(self, codes: np.ndarray, lens: np.ndarray, count: int) -> None:
        """Re-rank by document frequency and index texts 0..count-1 again, in a few sorts."""
        self.base = self.delta = _Run(_EMPTY_RUN_KEYS)
        n_tok = lens[:count].astype(np.int64)
        doc, elem = _all_elements(codes[:count], n_tok)
        # Rank: by document frequency (each element is in a text at most once), then id.
        distinct, inverse, df = np.unique(elem, return_inverse=True, return_counts=True)
        rank_of = np.empty(distinct.size, dtype=np.int64)
        rank_of[np.lexsort((distinct, df))] = np.arange(distinct.size, dtype=np.int64)
        self.rank = dict(zip(distinct.tolist(), rank_of.tolist(), strict=True))
        order_key = rank_of[inverse.ravel()]
        del inverse, distinct, df
        self.base = self._pairs(doc, elem, order_key, n_tok, 0)
        self.size = self.ranked_at = count
        self._clear_fresh(count)

    def extend(self, codes: np.ndarray, lens: np.ndarray, count: int) -> None:
        """Index texts size..count-1 in the present order (no re-ranking)."""
        start = self.size
        n_tok = lens[start:count].astype(np.int64)
        doc, elem = _all_elements(codes[start:count], n_tok)
        rank = self.rank
        order_key = np.fromiter(
            (rank.get(e, e - _UNRANKED) for e in elem.tolist()), dtype=np.int64, count=elem.size
        )
        self.delta = self.delta.merged(self._pairs(doc, elem, order_key, n_tok, start))
        self.size = count
        self._clear_fresh(count)

    def _pairs(
        self,
        doc: np.ndarray,
        elem: np.ndarray,
        order_key: np.ndarray,
        n_tok: np.ndarray,
        start: int,
    ) -> _Run:
        """The run of texts (``doc`` counted from ``start``) with these elements, each
        element placed in the global order by ``order_key``."""
        by_rank = _order_within_texts(doc, order_key)
        doc, elem = doc[by_rank], elem[by_rank]
        j = np.arange(doc.size, dtype=np.int64) - (np.cumsum(n_tok) - n_tok)[doc]
        top = int(n_tok.max(initial=0))
        plen = np.array([max(0, self._prefix_len(n)) for n in range(top + 1)], dtype=np.int64)
        prefix = plen[n_tok]
        packed = _prefix_pairs(elem[j < prefix[doc]], prefix, start)
        packed.sort()
        return _Run(packed)

    def keys(self, queries: Sequence[_Query], tt: float) -> _Keys:
        """The pair keys the queries read at the bound threshold ``tt``: the pairs of each
        query's first elements in the global order, as far as a passing text can have its
        second common element there; made with numpy for all the queries at once."""
        spans: list[tuple[int, int, int, int]] = []  # query, offset in ``flat``, elements, first
        flat: list[int] = []
        served = [False] * len(queries)
        bands = [_band(q.m, q.m, tt) for q in queries]
        for k, q in enumerate(queries):
            m = q.m
            lo, hi = bands[k]
            if m == 0 or lo > hi:
                served[k] = True  # no text can pass: no keys
                continue
            need, reach = _probe_limits(m, tt, lo, hi)
            if need[lo : hi + 1].min() < 2:
                continue  # some passing length needs a single common token: not served
            served[k] = True
            ordered = self._order(q.elems)
            first = m - len(ordered)  # tokens unknown to the index come first (they match none)
            b = 1  # the elements used: those up to the last rank a second common one can have
            while b < len(ordered) and reach[first + b - 1] >= 0:
                b += 1
            spans.append((k, len(flat), b, first))
            flat += ordered[:b]
        return _Keys.of(served, bands, spans, flat)

    def candidates(self, q: _Query, threshold: float, lens: np.ndarray) -> np.ndarray | None:
        """Ascending positions of the indexed texts (those before ``fresh_to``) that may have
        F1 > ``threshold`` (>= floor) with ``q``; every one that does is among them. None
        when some passing length needs a single common token only (pairs cannot find those:
        search whole postings)."""
        return self.candidates_many([q], threshold, lens)[0]

    def candidates_many(
        self,
        queries: Sequence[_Query],
        threshold: float,
        lens: np.ndarray,
        keys: _Keys | None = None,
    ) -> list[np.ndarray | None]:
        """``candidates`` of each query, looked up and judged together (a few numpy calls
        for them all, where one query alone costs a dozen); ``keys``: their ``keys``, if
        already made."""
        tt = threshold - _SLACK
        if keys is None:
            keys = self.keys(queries, tt)
        out: list[np.ndarray | None] = [_EMPTY_I64 if served else None for served in keys.served]
        if keys.keys.size == 0:
            return out
        rows = np.arange(keys.keys.size, dtype=np.int64)
        found = [run.lookup(keys.keys, rows) for run in self._runs()]
        if self.fresh:
            found.append(_dict_lookup(self.fresh, keys.keys.tolist(), range(rows.size)))
        if not found:  # nothing indexed
            return out
        pos = np.concatenate([f[0] for f in found])
        jj = np.concatenate([f[1] for f in found])
        row = np.concatenate([f[2] for f in found])
        qn = keys.owner[row]
        ii = keys.ranks[row]
        ms = np.fromiter((q.m for q in queries), dtype=np.int64, count=len(queries))
        keep = _pair_bound_passes(ms[qn], lens[pos].astype(np.int64), ii, jj, keys.bands[qn], tt)
        both = np.unique((qn[keep] << 32) | pos[keep])  # by query, then position; distinct
        where = np.searchsorted(both >> 32, np.arange(len(queries) + 1))
        both &= _POS_MASK
        for k in range(len(queries)):
            if out[k] is not None:
                out[k] = both[where[k] : where[k + 1]]
        return out

    def _runs(self) -> list[_Run]:
        return [run for run in (self.base, self.delta) if run.packed.size]


@dataclass(frozen=True)
class _Keys:
    """The pair keys some queries read (``_PrefixIndex.keys``): for each key, the query
    reading it (``owner``) and the rank in that query of the pair's second element; each
    query's keys are one slice (``bounds[k]:bounds[k + 1]``). ``served[k]`` is False for a
    query the pairs cannot serve; ``bands[k]`` its passing lengths (lo, hi)."""

    keys: np.ndarray  # uint64
    ranks: np.ndarray
    owner: np.ndarray
    bounds: np.ndarray
    served: list[bool]
    bands: np.ndarray

    @classmethod
    def of(
        cls,
        served: list[bool],
        bands: list[tuple[int, int]],
        spans: list[tuple[int, int, int, int]],
        flat: list[int],
    ) -> _Keys:
        """From each query's used elements (``flat[offset : offset + b]``): every pair
        (a, c), a < c < b, the key of (element a, element c), rank ``first + c``."""
        spec = np.array(spans, dtype=np.int64).reshape(-1, 4)
        query, offset, used, first = spec.T
        n_pairs = used * (used - 1) // 2
        total = int(n_pairs.sum())
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
        a, c = _triangle(int(used.max(initial=0)))
        a, c = a[within], c[within]
        at = np.repeat(offset, n_pairs)
        elems = np.array(flat, dtype=np.uint64)
        counts = np.zeros(len(served), dtype=np.int64)
        counts[query] = n_pairs
        bounds = np.concatenate(([0], np.cumsum(counts)))
        return cls(
            keys=_pair_keys(elems[at + a], elems[at + c]),
            ranks=np.repeat(first, n_pairs) + c,
            owner=np.repeat(query, n_pairs),
            bounds=bounds,
            served=served,
            bands=np.array(bands, dtype=np.int64).reshape(-1, 2),
        )

    def of_query(self, k: int) -> tuple[list[int], np.ndarray]:
        """Query k's keys (as Python ints, for dict look-ups) and ranks."""
        lo, hi = self.bounds[k], self.bounds[k + 1]
        return self.keys[lo:hi].tolist(), self.ranks[lo:hi]


_triangles: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _triangle(b: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) of every pair a < c < b, by c then a: the first c(c-1)/2 are those under c,
    so one table serves every smaller b."""
    size = 1 << max(b - 1, 0).bit_length()
    table = _triangles.get(size)
    if table is None:
        c = np.repeat(np.arange(size, dtype=np.int64), np.arange(size, dtype=np.int64))
        a = np.arange(c.size, dtype=np.int64) - np.repeat(
            np.cumsum(np.arange(size)) - np.arange(size), np.arange(size)
        )
        table = _triangles[size] = (a, c)
    return table


def _dict_add(table: dict[int, int | list[int]], pairs: list[tuple[int, int]]) -> None:
    """Add (key, entry) pairs to a dict of entries: one entry as itself, more as a list."""
    for key, entry in pairs:
        held = table.get(key)
        if held is None:
            table[key] = entry
        elif isinstance(held, list):
            held.append(entry)
        else:
            table[key] = [held, entry]


def _dict_lookup(
    table: dict[int, int | list[int]], keys: Sequence[int], tags: Iterable[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_Run.lookup`` on a dict of entries (``_PrefixIndex.fresh``)."""
    entries: list[int] = []
    found_tags: list[int] = []
    for key, tag in zip(keys, tags, strict=True):
        held = table.get(key)
        if held is None:
            continue
        if isinstance(held, list):
            entries += held
            found_tags += [tag] * len(held)
        else:
            entries.append(held)
            found_tags.append(tag)
    if not entries:
        return _EMPTY_I64, _EMPTY_I64, _EMPTY_I64
    found = np.array(entries, dtype=np.int64)
    return found >> _RANK_BITS, found & _RANK_CAP, np.array(found_tags, dtype=np.int64)


def _pair_bound_passes(
    m: np.ndarray, n: np.ndarray, ii: np.ndarray, jj: np.ndarray, band: np.ndarray, tt: float
) -> np.ndarray:
    """Which entries can still reach F1 > tt: an m-token query whose pair has its second
    element at rank ii, an n-token text where it is at rank jj, ``band`` the query's passing
    lengths (lo, hi). At most min(m - 1 - ii, n - 1 - jj) common elements follow that one."""
    ub = 2 + np.minimum(m - 1 - ii, n - 1 - jj)
    return (n >= band[:, 0]) & (n <= band[:, 1]) & (ub >= _need(m, n, tt))


def _all_elements(codes: np.ndarray, n_tok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text number, multiset element) of every token of the texts with these codes and
    token counts, texts in order."""
    count = n_tok.shape[0]
    parts = codes.tolist()
    if any(not isinstance(c, str) for c in parts):  # ids beyond code points: rare
        ids = np.fromiter((t for c in parts for t in _ids_of(c)), dtype=np.int64)
    else:
        joined = "".join(parts).encode("utf-32-le", errors="surrogatepass")  # see _encode_many
        ids = np.frombuffer(joined, dtype=np.uint32)
    ids = ids.astype(np.int64)
    total = ids.size
    doc = np.repeat(np.arange(count, dtype=np.int64), n_tok)
    step = np.arange(total, dtype=np.int64)
    # The k-th occurrence of a token in its text is the element id | k << _OCC_SHIFT.
    order = _order_within_texts(doc, ids)
    sd, si = doc[order], ids[order]
    fresh = np.ones(total, dtype=bool)
    fresh[1:] = (sd[1:] != sd[:-1]) | (si[1:] != si[:-1])
    occurrence = step - np.maximum.accumulate(np.where(fresh, step, 0))
    elem = np.empty(total, dtype=np.int64)
    elem[order] = si | (occurrence << _OCC_SHIFT)
    return doc, elem


def _order_within_texts(doc: np.ndarray, key: np.ndarray) -> np.ndarray:
    """``np.lexsort((key, doc))`` (stable) for ascending ``doc``: one stable sort of
    ``doc << 32 | key``, ten times faster, ``key`` first made dense where it does not fit."""
    if key.size and (key.min() < 0 or key.max() >= 1 << 32):
        key = np.unique(key, return_inverse=True)[1].reshape(-1)
    return np.argsort((doc.astype(np.int64) << 32) | key.astype(np.int64), kind="stable")


def _prefix_pairs(elem: np.ndarray, prefix: np.ndarray, start: int) -> np.ndarray:
    """The packed entries (unsorted) of every pair within each text's prefix: ``elem`` holds
    the texts' prefixes one after another (text t's ``prefix[t]`` elements, in rank order),
    text t being at position ``start + t``."""
    if start + prefix.size > 1 << _POS_BITS:
        raise ValueError(f"the pair index holds at most {1 << _POS_BITS:,} texts")
    starts = np.cumsum(prefix) - prefix
    parts: list[np.ndarray] = []
    for j in range(1, int(prefix.max(initial=0))):
        docs = np.flatnonzero(prefix > j)
        at = starts[docs]
        second = elem[at + j]
        rank = np.uint64(min(j, _RANK_CAP))
        tail = ((docs + start).astype(np.uint64) << np.uint64(_RANK_BITS)) | rank
        for i in range(j):
            part = _pair_keys(elem[at + i], second) << _KEY_SHIFT
            part |= tail
            parts.append(part)
    return np.concatenate(parts) if parts else _EMPTY_RUN_KEYS


class _Signatures:
    """For each indexed text, which of ``_SIG_BITS`` buckets its multiset elements hash to.

    A bucket that a text fills and a query does not holds at least one of the text's
    elements that the query lacks, and the reverse; so ``n - |text buckets - query buckets|``
    and ``m - |query buckets - text buckets|`` both bound the token overlap, which bounds
    the LCS (F1 = 2 * LCS / (m + n)). A few word operations a text rule out, before any LCS,
    most of what the prefix index finds in a large pool: texts sharing one rare token with
    the query and little else.
    """

    __slots__ = ("rows", "used")

    def __init__(self) -> None:
        self.rows = np.zeros((64, _SIG_WORDS), dtype=np.uint64)
        self.used = 0

    def add(self, elems: Sequence[int]) -> None:
        if self.used == self.rows.shape[0]:
            self.rows = _grown(self.rows, self.used + 1)
        self.rows[self.used] = _signature(elems)
        self.used += 1

    def extend(self, texts: np.ndarray, elems: np.ndarray, count: int) -> None:
        """Add ``count`` texts at once, from (text number among them, element) pairs."""
        if self.used + count > self.rows.shape[0]:
            self.rows = _grown(self.rows, self.used + count)
        hashed = elems.astype(np.uint64) * np.uint64(_HASH_MULT)  # wraps, as ``_signature``
        bucket = (hashed >> np.uint64(64 - 8)).astype(np.int64)
        bits = np.left_shift(np.uint64(1), (bucket & 63).astype(np.uint64))
        np.bitwise_or.at(self.rows, (texts + self.used, bucket >> 6), bits)
        self.used += count

    def overlap_bounds(self, elems: Sequence[int], positions: np.ndarray, lens: np.ndarray):
        """An upper bound on the token overlap of a query with known ``elems`` and each text
        at ``positions`` (``lens`` their token counts); int64 array."""
        query = _signature(elems)
        rows = self.rows[positions]
        text_only = _popcount(rows & ~query).sum(axis=1)
        query_only = _popcount(query & ~rows).sum(axis=1)
        return np.minimum(lens - text_only, len(elems) - query_only)


_SIG_WORDS = 4
_SIG_BITS = 64 * _SIG_WORDS
_HASH_MULT = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads the element ids' low bits


def _signature(elems: Sequence[int]) -> np.ndarray:
    words = [0] * _SIG_WORDS
    for e in elems:
        bucket = ((e * _HASH_MULT) & 0xFFFFFFFFFFFFFFFF) >> (64 - 8)
        words[bucket >> 6] |= 1 << (bucket & 63)
    return np.array(words, dtype=np.uint64)


if hasattr(np, "bitwise_count"):  # numpy >= 2.0

    def _popcount(words: np.ndarray) -> np.ndarray:
        return np.bitwise_count(words).astype(np.int64)

else:  # pragma: no cover - numpy 1.x
    _BYTE_BITS = np.array([bin(b).count("1") for b in range(256)], dtype=np.int64)

    def _popcount(words: np.ndarray) -> np.ndarray:
        per_byte = _BYTE_BITS[words.view(np.uint8)].reshape(*words.shape, 8)
        return per_byte.sum(axis=-1)


def _grown(arr: np.ndarray, needed: int) -> np.ndarray:
    out = np.zeros((max(needed, 2 * arr.shape[0]), *arr.shape[1:]), dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


_POS_MASK = (1 << 32) - 1
# Below this many candidates an LCS with each costs less than their signature bounds.
_SHORTLIST_FROM = 512
_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_EMPTY_F64 = np.zeros(0, dtype=np.float64)


def _run_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of ``keys`` (ascending) and how often each occurs."""
    keys = np.sort(keys)
    if keys.size == 0:
        return keys, _EMPTY_I64
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    counts = np.diff(np.append(starts, keys.size))
    return keys[starts], counts


def _code_array(queries: Sequence[_Query] | Sequence[Probe]) -> np.ndarray:
    """The queries' codes as an object array (cheap to gather from)."""
    out = np.empty(len(queries), dtype=object)
    for i, q in enumerate(queries):
        out[i] = q.code
    return out


def _lcs_pairs(left: np.ndarray, right: np.ndarray, workers: int) -> np.ndarray:
    """LCS length of each (left[i], right[i]) pair."""
    if left.size == 0:
        return _EMPTY_I32
    return process.cpdist(left, right, scorer=LCSseq.similarity, dtype=np.int32, workers=workers)


class RougeLIndex:
    """A growing collection of texts answering exact ROUGE-L F1 queries against all of them.

    ``exceeds`` (the bootstrap loop's duplicate test) looks only at the indexed texts that share
    one of the candidate's rarest tokens; ``scores``, ``top_k`` and ``max_score`` give the exact
    F1 to every text but run the LCS only where the token overlap is 2 or more (an overlap of 0
    or 1 *is* the LCS length).

    ``workers`` is passed to rapidfuzz for large batches of LCS computations (``-1``: all
    cores); ``None`` (default) computes on one thread. ``tokenizer`` replaces rouge-score's
    tokenizer for every text the index sees (``None``: rouge-score's, stemmed with ``stem``).
    """

    def __init__(
        self,
        texts: Iterable[str] = (),
        *,
        stem: bool = False,
        workers: int | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self._stem = stem
        self._split = tokenizer_for(stem, tokenizer)
        self._workers = workers
        self._vocab: dict[str, int] = {}
        self._texts: list[str] = []
        self._codes = np.empty(64, dtype=object)  # str (or list of ints) per text
        self._lens = np.zeros(64, dtype=np.int32)
        self._max_len = 0
        self._post = _Postings()
        self._signatures = _Signatures()
        self._prefixes: dict[float, _PrefixIndex] = {}  # by floor threshold, built on demand
        self._cache_key: str | None = None
        self._cache_val: _Query | None = None
        self._scored: tuple[np.ndarray, np.ndarray] = (_EMPTY_I64, _EMPTY_F64)  # last probe's
        self.add_many(texts)

    # ---- building ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def stem(self) -> bool:
        return self._stem

    def text(self, position: int) -> str:
        """The text added at ``position``."""
        return self._texts[position]

    def _seed_vocabulary(self, token_lists: Iterable[list[str]]) -> None:
        """Give ids in order of decreasing frequency before anything is added.

        Only an optimisation (frequent tokens get small code points, which rapidfuzz handles
        fastest, and every token of a known corpus gets an id); results never depend on ids.
        """
        if self._vocab:
            return
        counts: dict[str, int] = {}
        for tokens in token_lists:
            for tok in tokens:
                counts[tok] = counts.get(tok, 0) + 1
        for i, tok in enumerate(sorted(counts, key=counts.__getitem__, reverse=True)):
            self._vocab[tok] = i

    def _add_tokens(self, text: str, tokens: list[str]) -> int:
        vocab = self._vocab
        ids = []
        for tok in tokens:
            tid = vocab.get(tok)
            if tid is None:
                tid = vocab[tok] = len(vocab)
            ids.append(tid)
        return self._add_encoded(text, _Query(_as_code(ids), _elements(ids), len(ids), True))

    def _add_encoded(self, text: str, q: _Query) -> int:
        """Index a text encoded with this index's vocabulary, every token known."""
        if not q.complete:
            raise ValueError("cannot index a text encoded with tokens unknown to the index")
        pos = len(self._texts)
        self._texts.append(text)
        if pos == self._lens.shape[0]:
            self._lens = _grown(self._lens, pos + 1)
            self._codes = _grown(self._codes, pos + 1)
        self._lens[pos] = q.m
        self._max_len = max(self._max_len, q.m)
        self._codes[pos] = q.code
        add = self._post.add
        for elem in q.elems:
            add(elem, pos)
        self._signatures.add(q.elems)
        self._cache_key = None
        return pos

    def add(self, text: str) -> int:
        """Index ``text``; returns its position (0, 1, 2, ... in order of addition)."""
        return self._add_tokens(text, self._split(text))

    def add_many(self, texts: Iterable[str]) -> None:
        """Index each text in turn (positions follow on); many at once with numpy (a run
        folder's pool, when step 1 resumes)."""
        texts = list(texts)
        if len(texts) < max(_BULK_FROM, 1):
            for text in texts:
                self.add(text)
            return
        codes, n_tok = self._encode_many([self._split(text) for text in texts])
        start, stop = len(self._texts), len(self._texts) + len(texts)
        self._texts.extend(texts)
        if stop > self._lens.shape[0]:
            self._lens = _grown(self._lens, stop)
            self._codes = _grown(self._codes, stop)
        self._codes[start:stop] = codes
        self._lens[start:stop] = n_tok
        self._max_len = max(self._max_len, int(n_tok.max()))
        doc, elem = _all_elements(self._codes[start:stop], n_tok)
        self._post.extend(elem, doc + start)
        self._signatures.extend(doc, elem, len(texts))
        self._cache_key = None

    def _encode_many(self, tokens: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """The codes (an object array) and token counts of many token lists, new tokens
        given ids in order of first appearance, as ``add`` one by one gives them."""
        vocab = self._vocab
        flat = [t for one in tokens for t in one]
        for tok in dict.fromkeys(flat):
            if tok not in vocab:
                vocab[tok] = len(vocab)
        n_tok = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        codes = np.empty(len(tokens), dtype=object)
        if len(vocab) > _CODE_LIMIT:  # some ids are no code points: lists, one by one
            for i, one in enumerate(tokens):
                codes[i] = _as_code([vocab[t] for t in one])
            return codes, n_tok
        ids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.uint32, count=len(flat))
        # All codes as one string, cut per text ("surrogatepass": ids 0xD800-0xDFFF are code
        # points a str holds, as chr() makes them, though UTF-32 text may not carry them).
        joined = ids.tobytes().decode("utf-32-le", errors="surrogatepass")
        ends = np.cumsum(n_tok).tolist()
        codes[:] = [joined[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        return codes, n_tok

    # ---- internals of queries ----------------------------------------------------------

    def _encode_tokens(self, tokens: list[str]) -> _Query:
        vocab = self._vocab
        # A token the index has never seen matches nothing in it: any unused id will do.
        unseen = len(vocab)
        ids = [vocab.get(tok, unseen) for tok in tokens]
        elems = _elements(ids)
        if unseen in ids:
            elems = [e for e, t in zip(elems, ids, strict=True) if t != unseen]
            return _Query(_as_code(ids), elems, len(ids), False)
        return _Query(_as_code(ids), elems, len(ids), True)

    def _query(self, candidate: str) -> _Query:
        # The pipeline asks exceeds(c), then scores(c) or top_k(c): tokenize c once.
        if self._cache_key == candidate and self._cache_val is not None:
            return self._cache_val
        q = self._encode_tokens(self._split(candidate))
        self._cache_key, self._cache_val = candidate, q
        return q

    def _lens_view(self) -> np.ndarray:
        return self._lens[: len(self._texts)]

    def _cdist_workers(self, n_pairs: int) -> int:
        # Threads did not pay on the shared 2-core machine this was measured on (rapidfuzz
        # splits one-vs-many work by query row, and the other cores were busy), so one thread
        # unless asked; ``workers=-1`` helps big batches on an idle multi-core machine.
        if self._workers is not None and n_pairs >= 50_000:
            return self._workers
        return 1

    def _lcs(self, code: str | list[int], positions: np.ndarray) -> np.ndarray:
        """LCS lengths between ``code`` and the indexed texts at ``positions``."""
        if positions.size == 0:
            return _EMPTY_I32
        choices = self._codes[positions]
        workers = self._cdist_workers(len(choices))
        out = process.cdist(
            [code], choices, scorer=LCSseq.similarity, dtype=np.int32, workers=workers
        )
        return out[0]

    def _overlaps(self, q: _Query) -> np.ndarray:
        """Multiset token overlap of ``q`` with every indexed text (int64 array)."""
        n = len(self._texts)
        sizes = self._post.sizes
        views = [self._post.view(e) for e in q.elems if e in sizes]
        if not views:
            return np.zeros(n, dtype=np.int64)
        return np.bincount(np.concatenate(views), minlength=n)

    def _prefix_for(self, threshold: float) -> _PrefixIndex | None:
        """A prefix index good for queries at ``threshold`` (its floor at or below it), made or
        re-ranked as needed; None where the whole-posting path serves as well."""
        n = len(self._texts)
        if n < _PREFIX_MIN_TEXTS or not threshold >= 0:
            return None
        prefix = self._prefixes.get(threshold)
        if prefix is None and len(self._prefixes) < 3:
            prefix = self._prefixes[threshold] = _PrefixIndex(threshold)
        elif prefix is None:  # any built for a lower threshold will do
            floors = [f for f in self._prefixes if f <= threshold]
            if not floors:
                return None
            prefix = self._prefixes[max(floors)]
        prefix.catch_up(self._codes, self._lens, n)
        return prefix

    def _above(self, q: _Query, threshold: float, before: int | None = None, near: int = 0):
        """(positions, F1) of the texts with F1 > threshold >= 0 (positions ascending, only
        those < ``before`` if given), through the prefix index; None when it is not used.
        ``near``: also score that many more of the prefix index's finds, those of highest
        token overlap (the likely nearest texts; see ``probe``)."""
        prefix = self._prefix_for(threshold)
        if prefix is None:
            return None
        cands = prefix.candidates(q, threshold, self._lens)
        if cands is None:
            return None
        if before is not None:
            cands = cands[: np.searchsorted(cands, before)]
        cands = cands[self._shortlist(q, cands, threshold, near)]
        if cands.size == 0:
            return _EMPTY_I64, _EMPTY_F64
        f1 = _f1_array(self._lcs(q.code, cands), q.m, self._lens[cands])
        self._scored = cands, f1
        sel = f1 > threshold
        return cands[sel], f1[sel]

    def _shortlist(
        self, q: _Query, cands: np.ndarray, threshold: float, near: int = 0
    ) -> np.ndarray:
        """Which ``cands`` to score (a mask): those whose token overlap with ``q`` (bounded
        by their signatures) leaves F1 > threshold possible, and the ``near`` others of
        highest bound."""
        if cands.size <= max(near, _SHORTLIST_FROM):
            return np.ones(cands.size, dtype=bool)
        lens = self._lens[cands].astype(np.int64)
        total = q.m + lens
        overlap = self._signatures.overlap_bounds(q.elems, cands, lens)
        passing = 2.0 * overlap > (threshold - _SLACK) * total
        if near:
            rest = np.flatnonzero(~passing)
            if rest.size > near:
                ub = overlap[rest] / total[rest]
                rest = rest[np.argpartition(-ub, near - 1)[:near]]
            passing[rest] = True
        return passing

    def _plan(self, q: _Query, threshold: float) -> tuple[list[int], int] | None:
        """Which of ``q``'s occurrences to look up to find every text with F1 > threshold >= 0.

        A text above the threshold shares at least ``alpha`` occurrences with ``q``, so it holds
        one of any ``n_probe = m - alpha + 1`` of them, and shares at most (hits among those) +
        ``rest`` (= m - n_probe) in all. Returns ``(probe, rest)`` with ``probe`` the rarest
        known occurrences by document frequency, rarest first, those absent from the index
        included; occurrences of tokens unknown to the index count as probe slots but are not
        listed (they are in no text). None when no text can be above the threshold.
        """
        m = q.m
        if m == 0:
            return None
        n_probe = m - _min_overlap(m, threshold) + 1
        n_known = n_probe - (m - len(q.elems))
        if n_known <= 0:
            return None
        sizes = self._post.sizes
        probe = sorted(q.elems, key=lambda e: sizes.get(e, 0))[:n_known]
        return probe, m - n_probe

    def _probe_block(
        self,
        queries: Sequence[_Query],
        threshold: float,
        plans: Sequence[tuple[list[int], int] | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query number, position, F1) with F1 > threshold >= 0, in one batched pass,
        sorted by query number then position.

        Besides the plan's bounds, each query's most frequent probed occurrence is not read in
        full: a text holding only that one of the probed occurrences can pass only in a narrow
        band of lengths, so only that band of its posting yields candidates; for the other
        candidates its posting is only searched (membership), not enumerated.
        """
        n_docs = len(self._texts)
        empty = (_EMPTY_I64, _EMPTY_I64, _EMPTY_F64)
        n_q = len(queries)
        if n_docs == 0 or n_q == 0:
            return empty
        if n_q >= 1 << 11:
            parts = [
                self._probe_block(
                    queries[i : i + 1024], threshold, None if plans is None else plans[i : i + 1024]
                )
                for i in range(0, n_q, 1024)
            ]
            offsets = range(0, n_q, 1024)
            return (
                np.concatenate([p[0] + off for p, off in zip(parts, offsets, strict=True)]),
                np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]),
            )
        # Batched whole postings beat the prefix index's query-by-query work on blocks until
        # the collection is large (measured: about even at 50K texts).
        prefix = self._prefix_for(threshold) if n_docs >= _PREFIX_BLOCK_MIN_TEXTS else None
        if prefix is not None:
            return self._probe_block_prefix(prefix, queries, threshold)
        if plans is None:
            plans = [self._plan(q, threshold) for q in queries]
        tt = threshold - _SLACK
        sizes = self._post.sizes
        view = self._post.view
        views: list[np.ndarray] = []
        owners: list[int] = []
        bigs: list[np.ndarray] = []
        big_owners: list[int] = []
        ms = np.zeros(n_q, dtype=np.int64)
        rests = np.zeros(n_q, dtype=np.int64)
        # Lengths for which a query's big posting is read ([w_lo, b_hi]) or searched (b_hi, w_hi].
        w_lo = np.zeros(n_q, dtype=np.int64)
        b_hi = np.full(n_q, -1, dtype=np.int64)
        w_hi = np.full(n_q, -1, dtype=np.int64)
        for qi, plan in enumerate(plans):
            if plan is None:
                continue
            probe, rest = plan
            present = [e for e in probe if e in sizes]
            if not present:
                continue
            m = queries[qi].m
            ms[qi] = m
            rests[qi] = rest
            if len(present) >= 2 and sizes[present[-1]] >= _BIG_POSTING:
                lo, hi = _band(m, m, tt)
                w_lo[qi] = lo
                w_hi[qi] = hi
                b_hi[qi] = max(_band(m, rest + 1, tt)[1], lo - 1)
                bigs.append(view(present.pop()))
                big_owners.append(qi)
            for e in present:
                views.append(view(e))
                owners.append(qi)
        keys = _EMPTY_I64
        if views:
            counts = np.fromiter((v.shape[0] for v in views), dtype=np.int64, count=len(views))
            keys = np.repeat(np.asarray(owners, dtype=np.int64) << 32, counts)
            keys |= np.concatenate(views)
        lens_all = self._lens
        members = _EMPTY_I64
        if bigs:
            big = np.concatenate(bigs).astype(np.int64)
            big_q = np.repeat(
                np.asarray(big_owners, dtype=np.int64),
                np.fromiter((v.shape[0] for v in bigs), dtype=np.int64, count=len(bigs)),
            )
            big_n = lens_all[big]
            upper = b_hi[big_q]
            read = (big_n >= w_lo[big_q]) & (big_n <= upper)
            searched = (big_n > upper) & (big_n <= w_hi[big_q])
            keys = np.concatenate((keys, (big_q[read] << 32) | big[read]))
            members = (big_q[searched] << 32) | big[searched]  # ascending
        if keys.size == 0:
            return empty
        keys, hits = _run_counts(keys)
        qn = keys >> 32
        pos = keys & _POS_MASK
        m = ms[qn]
        lens = lens_all[pos].astype(np.int64)
        if members.size:
            todo = np.flatnonzero((lens > b_hi[qn]) & (lens <= w_hi[qn]))
            wanted = keys[todo]
            at = np.minimum(np.searchsorted(members, wanted), members.size - 1)
            hits[todo] += members[at] == wanted
        ub = np.minimum(np.minimum(lens, m), hits + rests[qn])
        keep = 2.0 * ub > tt * (m + lens)
        qn, pos, m, lens = qn[keep], pos[keep], m[keep], lens[keep]
        if qn.size == 0:
            return empty
        lcs = _lcs_pairs(
            _code_array(queries)[qn], self._codes[pos], self._cdist_workers(4 * qn.size)
        )
        f1 = _f1_array(lcs, m, lens)
        sel = f1 > threshold
        return qn[sel], pos[sel], f1[sel]

    def _probe_block_prefix(
        self, prefix: _PrefixIndex, queries: Sequence[_Query], threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_probe_block`` through the prefix index: candidates query by query, one LCS
        batch for the block. For a query too short for the pair index it gives only the
        best text above the threshold (all that ``greedy_dedup`` and ``exceeds_many`` use)."""
        lens_all = self._lens
        found = prefix.candidates_many(queries, threshold, lens_all)
        for i, q in enumerate(queries):
            if found[i] is None:  # a short query: whole postings, its best text only
                pos = self._probe(q, threshold, first_only=False)[1]
                found[i] = _EMPTY_I64 if pos < 0 else np.array([pos], dtype=np.int64)
            else:
                found[i] = found[i][self._shortlist(q, found[i], threshold)]
        counts = np.fromiter((f.shape[0] for f in found), dtype=np.int64, count=len(found))
        if counts.sum() == 0:
            return _EMPTY_I64, _EMPTY_I64, _EMPTY_F64
        qn = np.repeat(np.arange(len(queries), dtype=np.int64), counts)
        pos = np.concatenate(found)
        m = np.fromiter((q.m for q in queries), dtype=np.int64, count=len(queries))[qn]
        lcs = _lcs_pairs(
            _code_array(queries)[qn], self._codes[pos], self._cdist_workers(4 * qn.size)
        )
        f1 = _f1_array(lcs, m, lens_all[pos])
        sel = f1 > threshold
        return qn[sel], pos[sel], f1[sel]

    def _probe(
        self, q: _Query, threshold: float, *, first_only: bool, near: int = 0
    ) -> tuple[float, int]:
        """Best F1 > threshold over the index and its position (lowest on ties), or (-1.0, -1)
        when none. With ``first_only`` it returns as soon as one text is above the threshold
        (then the figure need not be the best one). ``near`` as for ``_above``."""
        if not self._texts:
            return -1.0, -1
        if threshold < 0:
            # Every pair scores >= 0 > threshold, even pairs without tokens.
            if first_only:
                return 0.0, 0
            scores = self._scores_q(q)
            best = int(np.argmax(scores))
            return float(scores[best]), best
        found = self._above(q, threshold, near=near)
        if found is not None:
            pos, f1 = found
            if pos.size == 0:
                return -1.0, -1
            best = int(np.argmax(f1))  # positions ascend, so ties go to the lowest
            return float(f1[best]), int(pos[best])
        plan = self._plan(q, threshold)
        if plan is None:
            return -1.0, -1
        probe, rest = plan
        m = q.m
        sizes = self._post.sizes
        view = self._post.view
        views = [view(e) for e in probe if e in sizes]
        if not views:
            return -1.0, -1
        lens_all = self._lens
        cands, hits = _run_counts(np.concatenate(views))
        ub = np.minimum(np.minimum(lens_all[cands], m), hits + rest)
        lens = lens_all[cands]
        keep = 2.0 * ub > (threshold - _SLACK) * (m + lens)
        keep[keep] = self._shortlist(q, cands[keep], threshold)
        cands, lens, ub = cands[keep], lens[keep], ub[keep]
        if cands.size == 0:
            return -1.0, -1
        if first_only and cands.size > 1024:
            # Most promising first, in slices, stopping at the first text above.
            order = np.argsort(-(2.0 * ub / (m + lens)), kind="stable")
            for start in range(0, order.size, 1024):
                part = order[start : start + 1024]
                f1 = _f1_array(self._lcs(q.code, cands[part]), m, lens[part])
                hit = np.flatnonzero(f1 > threshold)
                if hit.size:
                    return float(f1[hit[0]]), int(cands[part][hit[0]])
            return -1.0, -1
        f1 = _f1_array(self._lcs(q.code, cands), m, lens)
        self._scored = cands, f1
        best = int(np.argmax(f1))  # candidates ascend, so ties go to the lowest position
        if f1[best] > threshold:
            return float(f1[best]), int(cands[best])
        return -1.0, -1

    def _scores_q(self, q: _Query) -> np.ndarray:
        n = len(self._texts)
        if n == 0 or q.m == 0:
            return np.zeros(n, dtype=np.float64)
        lens = self._lens_view()
        lcs = self._overlaps(q)  # never more than either length
        # An overlap of 0 or 1 is the LCS itself; compute the others.
        todo = np.flatnonzero(lcs >= 2)
        if todo.size:
            lcs[todo] = self._lcs(q.code, todo)
        return _f1_lookup(lcs, q.m, lens, self._max_len + 1)

    def _top_k_q(self, q: _Query, k: int) -> list[tuple[int, float]]:
        n = len(self._texts)
        k = min(k, n)
        if k <= 0:
            return []
        if q.m == 0:
            return [(i, 0.0) for i in range(k)]
        lens = self._lens_view()
        width = self._max_len + 1
        bound = self._overlaps(q)  # never more than either length
        f1 = _f1_lookup(bound, q.m, lens, width)  # exact where bound <= 1, else a bound
        unknown = bound >= 2
        todo = np.flatnonzero(unknown)
        if todo.size:
            batch = k + 63
            if todo.size > batch:
                first = todo[np.argpartition(-f1[todo], batch - 1)[:batch]]
            else:
                first = todo
            f1[first] = _f1_lookup(self._lcs(q.code, first), q.m, lens[first], width)
            unknown[first] = False
            # A text still unknown matters only if its bound reaches the k-th best so far.
            known = f1[~unknown]
            kth = np.partition(known, known.size - k)[known.size - k]
            rest = np.flatnonzero(unknown & (f1 >= kth - _SLACK))
            if rest.size:
                f1[rest] = _f1_lookup(self._lcs(q.code, rest), q.m, lens[rest], width)
                unknown[rest] = False
            f1[unknown] = -1.0  # below the k-th best: out of the top k
        kth = np.partition(f1, n - k)[n - k]
        sel = np.flatnonzero(f1 >= kth)  # ascending positions
        sel = sel[np.argsort(-f1[sel], kind="stable")][:k]
        return [(int(i), float(f1[i])) for i in sel]

    # ---- queries -----------------------------------------------------------------------

    def max_score(self, candidate: str) -> float:
        """The highest F1 between ``candidate`` and any indexed text; 0.0 when empty."""
        top = self._top_k_q(self._query(candidate), 1)
        return top[0][1] if top else 0.0

    def exceeds(self, candidate: str, threshold: float) -> bool:
        """True when some indexed text has F1 > ``threshold`` with ``candidate``."""
        _check_threshold(threshold)
        return self._probe(self._query(candidate), threshold, first_only=True)[1] >= 0

    def best_above(self, candidate: str, threshold: float) -> tuple[int, float] | None:
        """``(position, F1)`` of the best indexed text if its F1 > ``threshold``, else None.

        Ties go to the lower position. Costs about what ``exceeds`` costs.
        """
        _check_threshold(threshold)
        f1, pos = self._probe(self._query(candidate), threshold, first_only=False)
        return None if pos < 0 else (pos, f1)

    def probe(self, candidate: str, threshold: float) -> Probe:
        """``best_above``, with what the search scored on the way, each with its exact F1:
        every indexed text it could not rule out from F1 > ``threshold`` by token bounds and,
        in a large pool, the ``PROBE_NEAR`` others of highest token overlap among those
        sharing the candidate's rarest tokens. They are its likely nearest; `figures` uses
        them as a kept candidate's `most_similar` in a large pool."""
        _check_threshold(threshold)
        q = self._query(candidate)
        self._scored = (_EMPTY_I64, _EMPTY_F64)
        f1, pos = self._probe(q, threshold, first_only=False, near=PROBE_NEAR)
        near, near_f1 = self._scored
        match = None if pos < 0 else (pos, f1)
        return Probe(match, q.code, q.m, len(self._texts), near, near_f1)

    def probe_many(self, candidates: Sequence[str], threshold: float) -> ProbeBatch:
        """``probe`` for candidates decided in turn, those kept indexed with
        ``ProbeBatch.keep`` before the next is probed: the same ``Probe`` each, at a fraction
        of the cost in a large pool (see ``ProbeBatch``)."""
        return ProbeBatch(self, candidates, threshold)

    def top_k(self, candidate: str, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` indexed texts most similar to ``candidate`` as ``(position, F1)``, best
        first, ties broken by lower position."""
        return self._top_k_q(self._query(candidate), k)

    def scores(self, candidate: str) -> np.ndarray:
        """F1 between ``candidate`` and every indexed text, in position order (float64)."""
        return self._scores_q(self._query(candidate))

    def max_scores(self, candidates: Iterable[str]) -> np.ndarray:
        """``max_score`` of each candidate (float64 array)."""
        return np.array([self.max_score(c) for c in candidates], dtype=np.float64)

    def exceeds_many(self, candidates: Iterable[str], threshold: float) -> list[bool]:
        """``exceeds`` of each candidate against the index as it is (none of them is added)."""
        _check_threshold(threshold)
        queries = [self._encode_tokens(self._split(c)) for c in candidates]
        if threshold < 0:
            return [bool(self._texts)] * len(queries)
        out = [False] * len(queries)
        qn, _, _ = self._probe_block(queries, threshold)
        for i in np.unique(qn).tolist():
            out[i] = True
        return out

    def scores_many(self, candidates: Iterable[str]) -> np.ndarray:
        """F1 of each candidate (rows) to every indexed text (columns), in one batched LCS
        pass: the fastest way to score many candidates against everything."""
        queries = [self._encode_tokens(self._split(c)) for c in candidates]
        n = len(self._texts)
        if not queries or n == 0:
            return np.zeros((len(queries), n), dtype=np.float64)
        return self._f1_rows(queries, self._codes[:n], self._lens[:n])

    def pool_similarity(
        self, items: Sequence[tuple[str, int]], k: int = 10, near_threshold: float = 0.7
    ) -> list[tuple[list[tuple[int, float]], float]]:
        """For each ``(text, before)``: ``figures`` of ``text`` against the indexed texts at
        positions < ``before``, the neighbours found by a probe at ``near_threshold``."""
        probes = []
        for text, before in items:
            q = self._encode_tokens(self._split(text))
            self._scored = (_EMPTY_I64, _EMPTY_F64)
            if before > MEAN_EXACT_UP_TO:
                self._near_before(q, near_threshold, before)
            probes.append(Probe(None, q.code, q.m, before, *self._scored))
        return self.figures(probes, k)

    def _near_before(self, q: _Query, threshold: float, before: int) -> None:
        """Leave in ``_scored`` what a probe of ``q`` scores among positions < ``before``."""
        if self._above(q, threshold, before, near=PROBE_NEAR) is None:
            self._probe(q, threshold, first_only=False)  # a query the pairs cannot serve
            near, near_f1 = self._scored
            kept = near < before
            self._scored = near[kept], near_f1[kept]

    def figures(
        self, probes: Sequence[Probe], k: int = 10
    ) -> list[tuple[list[tuple[int, float]], float]]:
        """For each probe: the ``k`` texts at positions < its ``before`` most similar to the
        probed text (``(position, F1)``, best first, ties to the lower position) and its mean
        F1 over them (0.0 when there are none): the ``most_similar`` and
        ``avg_similarity_score`` of a bootstrap record.

        Both are exact, from an LCS with every earlier text, while ``before`` is at most
        ``MEAN_EXACT_UP_TO``. Beyond it, where exact figures would cost an LCS with every
        pool text for each kept one (5 x 10^11 for a million), they are cheap instead: the
        mean is over ``MEAN_SAMPLE`` evenly spaced earlier texts (a systematic sample, shared
        by the probes of one call), and the top ``k`` is the best of those and of the texts
        the probe scored (every text sharing enough of the candidate's rarest tokens).

        Reads only the codes and lengths of positions < ``before``, so one thread may call
        it while another adds texts (step 1's writer and decision threads).
        """
        out: list[tuple[list[tuple[int, float]], float]] = [([], 0.0)] * len(probes)
        small = [i for i, p in enumerate(probes) if p.before <= MEAN_EXACT_UP_TO]
        large = [i for i, p in enumerate(probes) if p.before > MEAN_EXACT_UP_TO]
        if small:
            width = max(probes[i].before for i in small)
            # A slice, not a gather: the writer's hot path below 50,000 texts.
            rows = self._f1_rows(
                [probes[i] for i in small], self._codes[:width], self._lens[:width]
            )
            for i, row in zip(small, rows, strict=True):
                scores = row[: probes[i].before]
                mean = float(scores.mean()) if len(scores) else 0.0
                top = _top_positions(scores, k)
                out[i] = ([(int(p), float(scores[p])) for p in top], mean)
        if large:
            lowest = min(probes[i].before for i in large)
            if lowest <= MEAN_SAMPLE:
                sample = np.arange(lowest, dtype=np.int64)
            else:
                sample = np.arange(MEAN_SAMPLE, dtype=np.int64) * lowest // MEAN_SAMPLE
            # One thread: past 50,000 the decisions are the bottleneck, and step 1's decision
            # worker needs the other core more than this sample does.
            rows = self._f1_rows(
                [probes[i] for i in large], self._codes[sample], self._lens[sample], workers=1
            )
            means = rows.mean(axis=1)
            for i, row, mean in zip(large, rows, means.tolist(), strict=True):
                p = probes[i]
                best = _top_positions(row, k)  # sample positions ascend: ties stay in order
                pos = np.concatenate((p.near, sample[best]))
                f1 = np.concatenate((p.near_f1, row[best]))
                pos, first = np.unique(pos, return_index=True)  # in both: the same F1
                f1 = f1[first]
                order = np.lexsort((pos, -f1))[:k]
                out[i] = ([(int(pos[j]), float(f1[j])) for j in order], mean)
        return out

    def _f1_rows(
        self,
        queries: Sequence[_Query] | Sequence[Probe],
        codes: np.ndarray,
        lens: np.ndarray,
        workers: int | None = None,
    ) -> np.ndarray:
        """F1 of each query (rows) to the indexed texts with ``codes`` and ``lens`` (columns),
        in one batched LCS call (on ``workers`` threads, by default as the index says)."""
        if workers is None:
            workers = self._cdist_workers(len(queries) * len(codes))
        lcs = process.cdist(
            _code_array(queries), codes, scorer=LCSseq.similarity, dtype=np.int32, workers=workers
        )
        ms = np.array([q.m for q in queries], dtype=np.int64)[:, None]
        return _f1_array(lcs, ms, lens)


@dataclass(frozen=True)
class Probe:
    """A candidate as ``RougeLIndex.probe`` saw it: the best text above the threshold
    (``(position, F1)``, or None), the candidate's encoding, the index size then
    (``before``), and the texts scored on the way (positions ascending, exact F1)."""

    match: tuple[int, float] | None
    code: str | list[int]
    m: int
    before: int
    near: np.ndarray
    near_f1: np.ndarray


class ProbeBatch:
    """``RougeLIndex.probe`` for many candidates decided in order, as step 1 decides the
    answers of one request: ``probe(k)`` gives exactly the ``Probe`` that ``index.probe`` would
    give for candidate k at that moment, and ``keep(k)`` indexes it.

    Each candidate's search of the pair index as it stood when the batch began, and its LCS
    with every text found there, is done for all the candidates at once: a handful of numpy
    and rapidfuzz calls where one candidate alone costs a dozen. What was kept since is
    searched at ``probe`` time in a small dict of those texts' pairs. A candidate the batch
    cannot serve (too many texts to score them all, too short for pairs, a small pool, a
    word it shares with a text kept since that was new to the index) is probed one at a
    time; so is every candidate once the index has grown enough to be re-ranked, since that
    changes which texts the pairs find. Texts must reach the index through ``keep`` while the
    batch is in use.
    """

    def __init__(self, index: RougeLIndex, texts: Sequence[str], threshold: float) -> None:
        _check_threshold(threshold)
        self.index, self.texts, self.threshold = index, list(texts), threshold
        self.start = self.added = len(index)
        self.queries = [index._encode_tokens(index._split(t)) for t in self.texts]
        self.found: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(self.texts)
        self.keys: _Keys | None = None
        self.since: dict[int, int | list[int]] = {}  # pairs of the texts kept since
        self.valid_below = 0
        self.prefix = index._prefix_for(threshold) if threshold >= 0 else None
        if self.prefix is not None and self.texts:
            self.valid_below = 2 * self.prefix.ranked_at  # where ``catch_up`` re-ranks
            self._search_start()

    def _search_start(self) -> None:
        """Each candidate's candidates in the index as it is, with their F1. Words new to the
        index match nothing there, whatever id they get."""
        index, prefix = self.index, self.prefix
        queries = self.queries
        self.keys = prefix.keys(queries, self.threshold - _SLACK)
        found = prefix.candidates_many(queries, self.threshold, index._lens, self.keys)
        usable = [
            (k, c) for k, c in enumerate(found) if c is not None and c.size <= _SHORTLIST_FROM
        ]
        if not usable:
            return
        counts = np.fromiter((c.size for _, c in usable), dtype=np.int64, count=len(usable))
        qn = np.repeat(np.arange(len(usable), dtype=np.int64), counts)
        pos = np.concatenate([c for _, c in usable])
        used = [self.queries[k] for k, _ in usable]
        ms = np.fromiter((q.m for q in used), dtype=np.int64, count=len(used))
        lcs = _lcs_pairs(
            _code_array(used)[qn], index._codes[pos], index._cdist_workers(4 * qn.size)
        )
        f1 = _f1_array(lcs, ms[qn], index._lens[pos])
        ends = np.cumsum(counts)
        for (k, c), end in zip(usable, ends.tolist(), strict=True):
            self.found[k] = (c, f1[end - c.size : end])

    def probe(self, k: int) -> Probe:
        """Candidate k's ``Probe`` against the index as it is now."""
        index, found = self.index, self.found[k]
        if found is None or len(index) != self.added or self.added >= self.valid_below:
            return index.probe(self.texts[k], self.threshold)
        pos, f1 = found
        q = self.queries[k]
        if not q.complete:
            # Encoded again: an unknown word's stand-in id may now belong to a kept text's word.
            q = index._encode_tokens(index._split(self.texts[k]))
            if q.elems != self.queries[k].elems:  # a word of it is no longer new
                return index.probe(self.texts[k], self.threshold)
        if self.since:
            more = self._since_candidates(k)
            if pos.size + more.size > _SHORTLIST_FROM:
                return index.probe(self.texts[k], self.threshold)
            if more.size:
                more_f1 = _f1_array(index._lcs(q.code, more), q.m, index._lens[more])
                pos, f1 = np.concatenate((pos, more)), np.concatenate((f1, more_f1))
        match = None
        if pos.size:
            above = np.flatnonzero(f1 > self.threshold)
            if above.size:
                best = above[np.argmax(f1[above])]  # positions ascend: ties to the lowest
                match = (int(pos[best]), float(f1[best]))
        else:
            pos, f1 = _EMPTY_I64, _EMPTY_F64
        return Probe(match, q.code, q.m, len(index), pos, f1)

    def _since_candidates(self, k: int) -> np.ndarray:
        """``_PrefixIndex.candidates`` of candidate k among the texts kept since the start."""
        q = self.queries[k]  # its length and keys stay as they were
        keys, ranks = self.keys.of_query(k)
        pos, jj, ii = _dict_lookup(self.since, keys, ranks.tolist())
        if pos.size == 0:
            return _EMPTY_I64
        band = self.keys.bands[k : k + 1]
        n = self.index._lens[pos].astype(np.int64)
        passes = _pair_bound_passes(q.m, n, ii, jj, band, self.threshold - _SLACK)
        return np.unique(pos[passes])

    def keep(self, k: int) -> int:
        """Index candidate k (kept); its position."""
        index, q = self.index, self.queries[k]
        pos = index._add_encoded(self.texts[k], q) if q.complete else index.add(self.texts[k])
        self.added += 1
        if self.prefix is not None and self.added < self.valid_below:
            pairs = self.prefix.pairs_of(pos, index._codes[pos], int(index._lens[pos]))
            _dict_add(self.since, pairs)
            self.prefix.add_fresh(pos, pairs)  # spares ``catch_up`` the same work
        return pos


# Where ``figures`` switches from exact figures to cheap ones, and the sample size.
MEAN_EXACT_UP_TO = 50_000
MEAN_SAMPLE = 2048
# How many texts a probe scores beyond those that could pass its threshold (see ``probe``).
PROBE_NEAR = 32


def _top_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """The first k positions of a stable sort by descending score (ties: earlier first),
    found without sorting the whole array."""
    n = len(scores)
    if n <= k:
        return np.lexsort((np.arange(n), -scores))
    kth = np.partition(scores, n - k)[n - k]  # the k-th highest score
    above = np.flatnonzero(scores > kth)  # fewer than k
    above = above[np.lexsort((above, -scores[above]))]
    ties = np.flatnonzero(scores == kth)[: k - len(above)]
    return np.concatenate((above, ties))


def _check_threshold(threshold: float) -> None:
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")


# --------------------------------------------------------------------------------------------
# Greedy dedup


@dataclass
class DedupResult:
    """Outcome of :func:`greedy_dedup`.

    ``kept`` and ``dropped`` are ascending indices into the input texts. For the i-th dropped
    text, ``dropped_scores[i]`` is its highest F1 with a text kept before it (or an ``initial``
    text) and ``dropped_match[i]`` that text: an index into the input texts, or ``-1 - j`` for
    the j-th ``initial`` text (ties go to the earliest). ``max_scores``, filled only when
    :func:`greedy_dedup` is given ``score_floor``, holds every input text's highest F1 with the
    texts kept before it, or ``nan`` where that is <= the floor.
    """

    threshold: float
    kept: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    dropped_scores: list[float] = field(default_factory=list)
    dropped_match: list[int] = field(default_factory=list)
    max_scores: list[float] | None = None

    @property
    def total(self) -> int:
        return len(self.kept) + len(self.dropped)


def _pairs_within(
    queries: Sequence[_Query],
    plans: Sequence[tuple[list[int], int] | None],
    threshold: float,
    workers: int,
) -> dict[int, list[tuple[int, float]]]:
    """Pairs j < i of ``queries`` with F1 > threshold >= 0, as ``{i: [(j, F1), ...]}``, j
    ascending. Queries must be complete (every token with its own id); ``plans`` as made by
    ``RougeLIndex._plan`` for them (any ``n_probe`` occurrences will do)."""
    n_q = len(queries)
    if n_q < 2:
        return {}
    elem_counts = [len(q.elems) for q in queries]
    all_elems = np.fromiter(
        (e for q in queries for e in q.elems), dtype=np.int64, count=sum(elem_counts)
    )
    if all_elems.size == 0:
        return {}
    distinct, dense = np.unique(all_elems, return_inverse=True)
    # Sorted (element, query) keys: the postings of the block, all in one array.
    post = np.sort(dense.astype(np.int64) * n_q + np.repeat(np.arange(n_q), elem_counts))
    probe_e: list[int] = []
    probe_i: list[int] = []
    ms = np.fromiter((q.m for q in queries), dtype=np.int64, count=n_q)
    rests = np.zeros(n_q, dtype=np.int64)
    for i, plan in enumerate(plans):
        if plan is None or i == 0:
            continue
        probe, rests[i] = plan
        probe_e.extend(probe)
        probe_i.extend([i] * len(probe))
    if not probe_e:
        return {}
    pi = np.asarray(probe_i, dtype=np.int64)
    base = np.searchsorted(distinct, np.asarray(probe_e, dtype=np.int64)) * n_q
    lo = np.searchsorted(post, base)
    hi = np.searchsorted(post, base + pi)  # holders j < i only
    width = hi - lo
    total = int(width.sum())
    if total == 0:
        return {}
    ends = np.cumsum(width)
    idx = np.arange(total) + np.repeat(lo - (ends - width), width)
    keys = np.repeat(pi * n_q, width) + post[idx] % n_q
    keys, hits = _run_counts(keys)
    ii, jj = np.divmod(keys, n_q)
    mi, mj = ms[ii], ms[jj]
    ub = np.minimum(np.minimum(mi, mj), hits + rests[ii])
    keep = 2.0 * ub > (threshold - _SLACK) * (mi + mj)
    ii, jj, mi, mj = ii[keep], jj[keep], mi[keep], mj[keep]
    out: dict[int, list[tuple[int, float]]] = {}
    if ii.size == 0:
        return out
    codes = _code_array(queries)
    lcs = _lcs_pairs(codes[ii], codes[jj], workers)
    f1 = _f1_array(lcs, mi, mj)
    sel = np.flatnonzero(f1 > threshold)
    rows = zip(ii[sel].tolist(), jj[sel].tolist(), f1[sel].tolist(), strict=True)
    for i, j, f in rows:  # keys ascend: j ascends within each i
        out.setdefault(i, []).append((j, f))
    return out


def _decide(result: DedupResult, i: int, best: float, match: int | None) -> bool:
    """Record text i as kept or dropped; ``best`` is its highest F1 above the probe threshold
    with a kept text and ``match`` that text (None when no kept text is above)."""
    keep = match is None or best <= result.threshold
    if keep:
        result.kept.append(i)
    else:
        result.dropped.append(i)
        result.dropped_scores.append(best)
        result.dropped_match.append(match)
    if result.max_scores is not None:
        result.max_scores.append(math.nan if match is None else best)
    return keep


def greedy_dedup(
    texts: Iterable[str],
    threshold: float = 0.7,
    *,
    initial: Iterable[str] = (),
    stem: bool = False,
    progress: Callable[[int], None] | None = None,
    score_floor: float | None = None,
    block_size: int = 1024,
    workers: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> DedupResult:
    """Keep, in order, each text whose ROUGE-L F1 to every kept text (and to every ``initial``
    text) is <= ``threshold``; the same outcome as comparing each text with rouge-score to
    every text kept before it.

    Texts go in blocks of ``block_size``: a block is compared in one batched pass with the kept
    texts and with itself, then its texts are kept or dropped in order. ``progress(n_done)`` is
    called after each block. With ``score_floor`` (<= threshold, e.g. 0.5) the result also
    holds each text's highest F1 with the texts kept before it wherever that is above the
    floor, at the cost of a wider search. ``tokenizer`` replaces rouge-score's tokenizer (see
    :func:`tokenizer_for`).
    """
    _check_threshold(threshold)
    if score_floor is not None and not score_floor <= threshold:
        raise ValueError("score_floor must be <= threshold")
    texts = list(texts)
    initial = list(initial)
    split = tokenizer_for(stem, tokenizer)
    tok_texts = [split(t) for t in texts]
    tok_init = [split(t) for t in initial]
    index = RougeLIndex(stem=stem, workers=workers, tokenizer=tokenizer)
    index._seed_vocabulary(tok_init + tok_texts)
    owner: list[int] = []  # index position -> input index, or -1 - j for initial text j
    for j, (text, tokens) in enumerate(zip(initial, tok_init, strict=True)):
        index._add_tokens(text, tokens)
        owner.append(-1 - j)
    result = DedupResult(threshold=threshold)
    if score_floor is not None:
        result.max_scores = []
    probe_at = threshold if score_floor is None else score_floor
    if probe_at < 0:
        # Every pair is above a negative threshold: nothing to prune, and every text after
        # the first kept one is dropped.
        for i, (text, tokens) in enumerate(zip(texts, tok_texts, strict=True)):
            best, pos = index._probe(index._encode_tokens(tokens), probe_at, first_only=False)
            if _decide(result, i, best, None if pos < 0 else owner[pos]):
                index._add_tokens(text, tokens)
                owner.append(i)
            if progress is not None:
                progress(i + 1)
        return result
    queries = [index._encode_tokens(tokens) for tokens in tok_texts]
    block_size = max(1, block_size)
    for start in range(0, len(texts), block_size):
        block = queries[start : start + block_size]
        plans = [index._plan(q, probe_at) for q in block]
        qn, pos, f1 = index._probe_block(block, probe_at, plans)
        best_f = [-1.0] * len(block)
        best_o: list[int | None] = [None] * len(block)
        if qn.size:
            # Best per query, ties to the lowest position (rows come by query, position).
            order = np.lexsort((pos, -f1, qn))
            sq = qn[order]
            heads = order[np.flatnonzero(np.concatenate(([True], sq[1:] != sq[:-1])))]
            rows = zip(qn[heads].tolist(), pos[heads].tolist(), f1[heads].tolist(), strict=True)
            for b, p, f in rows:
                best_f[b] = f
                best_o[b] = owner[p]
        within = _pairs_within(block, plans, probe_at, index._cdist_workers(1 << 20))
        kept_here: list[bool] = []
        for b in range(len(block)):
            bf, bo = best_f[b], best_o[b]
            for j, f in within.get(b, ()):
                if kept_here[j] and f > bf:  # kept texts before the block win ties
                    bf, bo = f, start + j
            kept_here.append(_decide(result, start + b, bf, bo))
        for b, q in enumerate(block):
            if kept_here[b]:
                index._add_encoded(texts[start + b], q)
                owner.append(start + b)
        if progress is not None:
            progress(start + len(block))
    return result
