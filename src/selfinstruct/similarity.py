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
]

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_VALID_TOKEN = re.compile(r"[a-z0-9]+")

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
    tokens = _NON_ALNUM.sub(" ", text.lower()).split()
    if stem:
        stemmer = _get_stemmer()
        tokens = [stemmer(tok) if len(tok) > 3 else tok for tok in tokens]
        tokens = [tok for tok in tokens if _VALID_TOKEN.fullmatch(tok)]
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


def rouge_l(target: str, prediction: str, *, stem: bool = False) -> Score:
    """ROUGE-L of ``prediction`` against ``target``; same argument order as rouge-score's
    ``RougeScorer.score(target, prediction)`` (precision is over the prediction's tokens)."""
    t_tokens = tokenize(target, stem=stem)
    p_tokens = tokenize(prediction, stem=stem)
    if not t_tokens or not p_tokens:
        return Score(0.0, 0.0, 0.0)
    lcs = _lcs_tokens(t_tokens, p_tokens)
    precision = lcs / len(p_tokens)
    recall = lcs / len(t_tokens)
    return Score(precision, recall, _fmeasure(precision, recall))


def _f1_array(lcs: np.ndarray, m: int, lens: np.ndarray) -> np.ndarray:
    """Vectorised rouge-score F1 for LCS lengths ``lcs`` between an m-token text and texts of
    ``lens`` tokens; bit-identical to the scalar formula (same IEEE operations, same order)."""
    lcs_f = lcs.astype(np.float64)
    out = np.zeros(lcs_f.shape, dtype=np.float64)
    if m == 0:
        return out
    lens_f = lens.astype(np.float64)
    recall = np.divide(lcs_f, lens_f, out=np.zeros_like(lcs_f), where=lens_f > 0)
    precision = lcs_f / m
    total = precision + recall
    np.divide(2 * precision * recall, total, out=out, where=total > 0)
    return out


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


# --------------------------------------------------------------------------------------------
# Index


class _Query:
    """A tokenized candidate, encoded with an index's vocabulary."""

    __slots__ = ("code", "elems", "m", "vocab_size")

    def __init__(self, code: str | list[int], elems: list[int], m: int, vocab_size: int):
        self.code = code
        self.elems = elems
        self.m = m
        self.vocab_size = vocab_size


def _elements(ids: Sequence[int]) -> list[int]:
    """The multiset of token ids as distinct keys: k-th occurrence of t -> t | (k << shift)."""
    seen: dict[int, int] = {}
    out = []
    for t in ids:
        k = seen.get(t, 0)
        seen[t] = k + 1
        out.append(t | (k << _OCC_SHIFT) if k else t)
    return out


class _Postings:
    """Growable int32 arrays, one per multiset element, of the positions that contain it."""

    __slots__ = ("arrays", "sizes")

    def __init__(self) -> None:
        self.arrays: dict[int, np.ndarray] = {}
        self.sizes: dict[int, int] = {}

    def add(self, elem: int, pos: int) -> None:
        size = self.sizes.get(elem)
        if size is None:
            arr = np.empty(4, dtype=np.int32)
            self.arrays[elem] = arr
            size = 0
        else:
            arr = self.arrays[elem]
            if size == arr.shape[0]:
                grown = np.empty(size * 2, dtype=np.int32)
                grown[:size] = arr
                arr = self.arrays[elem] = grown
        arr[size] = pos
        self.sizes[elem] = size + 1

    def view(self, elem: int) -> np.ndarray:
        return self.arrays[elem][: self.sizes[elem]]


_EMPTY_I32 = np.zeros(0, dtype=np.int32)


class RougeLIndex:
    """A growing collection of texts answering exact ROUGE-L F1 queries against all of them.

    ``exceeds`` (the bootstrap loop's duplicate test) touches only the indexed texts that share
    one of the candidate's rarest tokens; ``scores``, ``top_k`` and ``max_score`` compute the
    exact F1 to every text but run the LCS only where the token overlap is 2 or more (an overlap
    of 0 or 1 *is* the LCS length).

    ``workers`` is passed to rapidfuzz for large one-vs-many batches (``-1``: all cores);
    ``None`` picks all cores only for batches big enough to pay for the threads.
    """

    def __init__(
        self, texts: Iterable[str] = (), *, stem: bool = False, workers: int | None = None
    ) -> None:
        self._stem = stem
        self._workers = workers
        self._vocab: dict[str, int] = {}
        self._texts: list[str] = []
        self._codes: list[str | list[int]] = []
        self._lens = np.zeros(64, dtype=np.int32)
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
        """Give ids in order of decreasing frequency (rare tokens last) before anything is added.

        Only an optimisation: frequent tokens get small code points, which rapidfuzz handles
        fastest. Results never depend on the ids.
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
        pos = len(self._texts)
        self._texts.append(text)
        self._codes.append(_as_code(ids))
        if pos == self._lens.shape[0]:
            grown = np.zeros(pos * 2, dtype=np.int32)
            grown[:pos] = self._lens
            self._lens = grown
        self._lens[pos] = len(ids)
        add = self._post.add
        for elem in _elements(ids):
            add(elem, pos)
        self._cache_key = None
        return pos

    def add(self, text: str) -> int:
        """Index ``text``; returns its position (0, 1, 2, ... in order of addition)."""
        return self._add_tokens(text, tokenize(text, stem=self._stem))

    def add_many(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.add(text)

    # ---- queries -----------------------------------------------------------------------

    def _encode_tokens(self, tokens: list[str]) -> _Query:
        vocab = self._vocab
        # A token the index has never seen matches nothing in it: any unused id will do.
        unseen = len(vocab)
        ids = [vocab.get(tok, unseen) for tok in tokens]
        elems = [e for e, t in zip(_elements(ids), ids, strict=True) if t != unseen]
        return _Query(_as_code(ids), elems, len(ids), len(vocab))

    def _query(self, candidate: str) -> _Query:
        if self._cache_key == candidate and self._cache_val is not None:
            return self._cache_val
        q = self._encode_tokens(tokenize(candidate, stem=self._stem))
        self._cache_key, self._cache_val = candidate, q
        return q

    def _lens_view(self) -> np.ndarray:
        return self._lens[: len(self._texts)]

    def _cdist_workers(self, n_pairs: int) -> int:
        if self._workers is not None:
            return self._workers
        return -1 if n_pairs >= 200_000 else 1

    def _lcs(self, code: str | list[int], positions: np.ndarray) -> np.ndarray:
        """LCS lengths between ``code`` and the indexed texts at ``positions`` (int32 array)."""
        if positions.size == 0:
            return _EMPTY_I32
        codes = self._codes
        choices = [codes[i] for i in positions.tolist()]
        out = process.cdist(
            [code],
            choices,
            scorer=LCSseq.similarity,
            dtype=np.int32,
            workers=self._cdist_workers(len(choices)),
        )
        return out[0]

    def _overlaps(self, q: _Query) -> np.ndarray:
        """Multiset token overlap of ``q`` with every indexed text."""
        n = len(self._texts)
        views = [self._post.view(e) for e in q.elems if e in self._post.sizes]
        if not views:
            return np.zeros(n, dtype=np.int64)
        return np.bincount(np.concatenate(views), minlength=n)

    def _probe(self, q: _Query, threshold: float, *, first_only: bool) -> tuple[float, int]:
        """Best F1 > threshold over the index and its position, or (-1.0, -1) when none.

        With ``first_only`` it returns as soon as one text exceeds (not necessarily the best).
        """
        n_docs = len(self._texts)
        m = q.m
        if n_docs == 0:
            return -1.0, -1
        if threshold < 0:
            # Every pair scores >= 0 > threshold, even pairs without tokens. (With first_only
            # the figure returned is not the best one; only the position's sign matters then.)
            if first_only:
                return 0.0, 0
            scores = self._scores_q(q)
            best = int(np.argmax(scores))
            return float(scores[best]), best
        if m == 0:
            return -1.0, -1
        alpha = _min_overlap(m, threshold)
        n_probe = m - alpha + 1
        if n_probe <= 0:
            return -1.0, -1
        sizes = self._post.sizes
        present = [(sizes[e], e) for e in q.elems if e in sizes]
        # Any text above the threshold holds one of any n_probe of the candidate's occurrences,
        # and has at most (hits among them) + (m - n_probe) occurrences in common with it.
        # Occurrences no indexed text has are the rarest of all and use up probe slots for free.
        rest = m - n_probe
        n_probe -= m - len(present)
        if n_probe <= 0:
            return -1.0, -1
        if n_probe < len(present):
            present.sort()
            present = present[:n_probe]
        view = self._post.view
        if len(present) == 1:
            cands = view(present[0][1])
            hits = None
        else:
            cands, hits = np.unique(
                np.concatenate([view(e) for _, e in present]), return_counts=True
            )
        lens = self._lens[cands]
        tt = threshold - _SLACK
        ub = np.minimum(lens, m)
        if hits is not None:
            ub = np.minimum(ub, hits + rest)
        elif rest + 1 < m:
            ub = np.minimum(ub, rest + 1)
        keep = 2.0 * ub > tt * (m + lens)
        cands = cands[keep]
        if cands.size == 0:
            return -1.0, -1
        lens = lens[keep]
        if first_only and cands.size > 1024:
            order = np.argsort(-(2.0 * ub[keep] / (m + lens)), kind="stable")
            for start in range(0, order.size, 1024):
                part = order[start : start + 1024]
                f1 = _f1_array(self._lcs(q.code, cands[part]), m, lens[part])
                hit = np.flatnonzero(f1 > threshold)
                if hit.size:
                    return float(f1[hit[0]]), int(cands[part][hit[0]])
            return -1.0, -1
        f1 = _f1_array(self._lcs(q.code, cands), m, lens)
        best = int(np.argmax(f1))
        if f1[best] > threshold:
            return float(f1[best]), int(cands[best])
        return -1.0, -1

    def _scores_q(self, q: _Query) -> np.ndarray:
        n = len(self._texts)
        if n == 0 or q.m == 0:
            return np.zeros(n, dtype=np.float64)
        lcs = self._overlaps(q)
        lens = self._lens_view()
        np.minimum(lcs, lens, out=lcs)
        np.minimum(lcs, q.m, out=lcs)
        # An overlap of 0 or 1 is the LCS itself; compute the rest.
        todo = np.flatnonzero(lcs >= 2)
        if todo.size:
            lcs[todo] = self._lcs(q.code, todo)
        return _f1_array(lcs, q.m, lens)

    def _top_k_q(self, q: _Query, k: int) -> list[tuple[int, float]]:
        n = len(self._texts)
        k = min(k, n)
        if k <= 0:
            return []
        if q.m == 0:
            return [(i, 0.0) for i in range(k)]
        lens = self._lens_view()
        bound = self._overlaps(q)
        np.minimum(bound, lens, out=bound)
        np.minimum(bound, q.m, out=bound)
        f1 = _f1_array(bound, q.m, lens)  # exact where bound <= 1, an upper bound elsewhere
        unknown = bound >= 2
        todo = np.flatnonzero(unknown)
        if todo.size:
            batch = k + 63
            if todo.size > batch:
                first = todo[np.argpartition(-f1[todo], batch - 1)[:batch]]
            else:
                first = todo
            f1[first] = _f1_array(self._lcs(q.code, first), q.m, lens[first])
            unknown[first] = False
            # Any text still unknown must be checked if its bound reaches the k-th best so far.
            known = f1[~unknown]
            kth = np.partition(known, known.size - k)[known.size - k]
            rest = np.flatnonzero(unknown & (f1 >= kth - _SLACK))
            if rest.size:
                f1[rest] = _f1_array(self._lcs(q.code, rest), q.m, lens[rest])
                unknown[rest] = False
            f1[unknown] = -1.0  # bounds below the k-th best: not in the top k
        kth = np.partition(f1, n - k)[n - k]
        sel = np.flatnonzero(f1 >= kth)  # ascending positions
        sel = sel[np.argsort(-f1[sel], kind="stable")][:k]
        return [(int(i), float(f1[i])) for i in sel]

    def max_score(self, candidate: str) -> float:
        """The highest F1 between ``candidate`` and any indexed text; 0.0 when empty."""
        top = self._top_k_q(self._query(candidate), 1)
        return top[0][1] if top else 0.0

    def exceeds(self, candidate: str, threshold: float) -> bool:
        """True when some indexed text has F1 > ``threshold`` with ``candidate``."""
        _check_threshold(threshold)
        return self._probe(self._query(candidate), threshold, first_only=True)[1] >= 0

    def best_above(self, candidate: str, threshold: float) -> tuple[int, float] | None:
        """``(position, F1)`` of the best indexed text when its F1 > ``threshold``, else None.

        Ties go to the lower position. Costs about what ``exceeds`` costs.
        """
        _check_threshold(threshold)
        f1, pos = self._probe(self._query(candidate), threshold, first_only=False)
        return None if pos < 0 else (pos, f1)

    def top_k(self, candidate: str, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` indexed texts most similar to ``candidate``: ``(position, F1)``, best first,
        ties broken by lower position."""
        return self._top_k_q(self._query(candidate), k)

    def scores(self, candidate: str) -> np.ndarray:
        """F1 between ``candidate`` and every indexed text, in position order (float64)."""
        return self._scores_q(self._query(candidate))

    # ---- batches -----------------------------------------------------------------------

    def max_scores(self, candidates: Iterable[str]) -> np.ndarray:
        """``max_score`` of each candidate (float64 array)."""
        return np.array([self.max_score(c) for c in candidates], dtype=np.float64)

    def exceeds_many(self, candidates: Iterable[str], threshold: float) -> list[bool]:
        """``exceeds`` of each candidate against the current index (candidates are not added)."""
        return [self.exceeds(c, threshold) for c in candidates]

    def scores_many(self, candidates: Sequence[str]) -> np.ndarray:
        """F1 of each candidate (rows) to every indexed text (columns); one batched LCS pass."""
        cands = list(candidates)
        n = len(self._texts)
        out = np.zeros((len(cands), n), dtype=np.float64)
        if not cands or n == 0:
            return out
        queries = [self._encode_tokens(tokenize(c, stem=self._stem)) for c in cands]
        lcs = process.cdist(
            [q.code for q in queries],
            self._codes,
            scorer=LCSseq.similarity,
            dtype=np.int32,
            workers=self._cdist_workers(len(cands) * n),
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

    ``kept`` and ``dropped`` are indices into the input texts, ascending. For each dropped text,
    ``dropped_scores[i]`` is its highest F1 with an earlier kept (or initial) text and
    ``dropped_match[i]`` that text: an index into the input texts, or ``-1 - j`` for the j-th
    ``initial`` text. ``max_scores``, when asked for with ``score_floor``, holds every text's
    highest F1 with the texts kept before it, or ``nan`` where it is <= the floor.
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


def greedy_dedup(
    texts: Iterable[str],
    threshold: float = 0.7,
    *,
    initial: Iterable[str] = (),
    stem: bool = False,
    progress: Callable[[int], None] | None = None,
    score_floor: float | None = None,
    progress_every: int = 1000,
) -> DedupResult:
    """Keep, in order, each text whose ROUGE-L F1 to every kept text (and to every ``initial``
    text) is <= ``threshold``.

    ``progress(n_done)`` is called every ``progress_every`` texts and once at the end. With
    ``score_floor`` (e.g. 0.5, must be <= threshold) the result also carries every text's highest
    F1 with the texts kept before it whenever that is above the floor (for a histogram); it costs
    a wider search.
    """
    _check_threshold(threshold)
    if score_floor is not None and not score_floor <= threshold:
        raise ValueError("score_floor must be <= threshold")
    texts = list(texts)
    initial = list(initial)
    tok_texts = [tokenize(t, stem=stem) for t in texts]
    tok_init = [tokenize(t, stem=stem) for t in initial]
    index = RougeLIndex(stem=stem)
    index._seed_vocabulary(tok_init + tok_texts)
    owner: list[int] = []  # index position -> input index (>= 0) or -1 - j for initial j
    for j, (text, tokens) in enumerate(zip(initial, tok_init, strict=True)):
        index._add_tokens(text, tokens)
        owner.append(-1 - j)
    result = DedupResult(threshold=threshold)
    if score_floor is not None:
        result.max_scores = []
    probe_at = threshold if score_floor is None else score_floor
    for i, (text, tokens) in enumerate(zip(texts, tok_texts, strict=True)):
        q = index._encode_tokens(tokens)
        best, pos = index._probe(q, probe_at, first_only=False)
        if pos >= 0 and best > threshold:
            result.dropped.append(i)
            result.dropped_scores.append(best)
            result.dropped_match.append(owner[pos])
        else:
            result.kept.append(i)
            index._add_tokens(text, tokens)
            owner.append(i)
        if result.max_scores is not None:
            result.max_scores.append(best if pos >= 0 else math.nan)
        if progress is not None and (i + 1) % progress_every == 0:
            progress(i + 1)
    if progress is not None and len(texts) % progress_every:
        progress(len(texts))
    return result
