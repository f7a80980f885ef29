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
  occurrence could be enough, and searched otherwise.

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

    __slots__ = ("arrays", "pending", "sizes")

    def __init__(self) -> None:
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

    def view(self, elem: int) -> np.ndarray:
        size = self.sizes[elem]
        waiting = self.pending.pop(elem, None)
        if waiting is None:
            return self.arrays[elem][:size]
        start = size - len(waiting)
        arr = self.arrays.get(elem)
        if arr is None or arr.shape[0] < size:
            grown = np.empty(max(4, 2 * size), dtype=np.int32)
            if arr is not None:
                grown[:start] = arr[:start]
            arr = self.arrays[elem] = grown
        arr[start:size] = waiting
        return arr[:size]


_POS_MASK = (1 << 32) - 1
_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_EMPTY_F64 = np.zeros(0, dtype=np.float64)


def _run_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of ``keys`` (ascending) and how often each occurs."""
    keys = np.sort(keys)
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    counts = np.diff(np.append(starts, keys.size))
    return keys[starts], counts


def _code_array(queries: Sequence[_Query]) -> np.ndarray:
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
        self._cache_key: str | None = None
        self._cache_val: _Query | None = None
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
            grown = np.zeros(pos * 2, dtype=np.int32)
            grown[:pos] = self._lens
            self._lens = grown
            codes = np.empty(pos * 2, dtype=object)
            codes[:pos] = self._codes
            self._codes = codes
        self._lens[pos] = q.m
        self._max_len = max(self._max_len, q.m)
        self._codes[pos] = q.code
        add = self._post.add
        for elem in q.elems:
            add(elem, pos)
        self._cache_key = None
        return pos

    def add(self, text: str) -> int:
        """Index ``text``; returns its position (0, 1, 2, ... in order of addition)."""
        return self._add_tokens(text, self._split(text))

    def add_many(self, texts: Iterable[str]) -> None:
        """Index each text in turn (positions follow on)."""
        for text in texts:
            self.add(text)

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

    def _probe(self, q: _Query, threshold: float, *, first_only: bool) -> tuple[float, int]:
        """Best F1 > threshold over the index and its position (lowest on ties), or (-1.0, -1)
        when none. With ``first_only`` it returns as soon as one text is above the threshold
        (then the figure need not be the best one)."""
        if not self._texts:
            return -1.0, -1
        if threshold < 0:
            # Every pair scores >= 0 > threshold, even pairs without tokens.
            if first_only:
                return 0.0, 0
            scores = self._scores_q(q)
            best = int(np.argmax(scores))
            return float(scores[best]), best
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
        out = np.zeros((len(queries), n), dtype=np.float64)
        if not queries or n == 0:
            return out
        lcs = process.cdist(
            _code_array(queries),
            self._codes[:n],
            scorer=LCSseq.similarity,
            dtype=np.int32,
            workers=self._cdist_workers(len(queries) * n),
        )
        lens = self._lens_view()
        for row, q in enumerate(queries):
            out[row] = _f1_array(lcs[row], q.m, lens)
        return out


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
