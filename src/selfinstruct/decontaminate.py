"""Find training examples that overlap an evaluation set, and say why.

A training example (instruction, input) overlaps an evaluation item when

* ``ngram_overlap``: its text shares a run of 13 normalised tokens with the item's instruction
  and input, as GPT-3's contamination analysis did (Brown et al. 2020, appendix C). Normalised:
  lower-cased, punctuation stripped, split on whitespace; apostrophes are deleted and any other
  punctuation becomes a space, so that ``don't`` and ``dont`` agree, and so do ``medium-level``
  and ``medium level``. The example's text is its instruction, a space and its input; so is
  the item's. An item shorter than 13 tokens is matched as a whole: the example
  must contain all of its tokens, in a row (for items of at least ``min_tokens`` = 5 tokens;
  shorter ones are left to the ROUGE-L test, as a 3-word phrase alone is no evidence);
* ``rouge_l``: the ROUGE-L F1 of its instruction to an item's instruction is above 0.7 (the
  bootstrap filter's own test and threshold, on the same exact scorer).

The n-gram test runs over all examples at once: tokens become integer ids (a token no item has
gets id 0, which no item n-gram contains), every window of each needed length gets a 64-bit
polynomial hash in a few numpy passes, and only windows whose hash is an item's are compared
token by token, so a hash collision can never make a false match. The ROUGE-L test asks a
`RougeLIndex` of the items' instructions, once per distinct instruction.

    d = Decontaminator.from_files(default_eval_sets())
    hit = d.check("Design a medium-level sudoku puzzle for me.", "")
    hit.reason, hit.item.id    # ('ngram_overlap', 'user_oriented_task_...')

Evaluation files: anything `selfinstruct.finetune.data.read_examples` reads: the user-oriented
tasks and seed tasks (``{"id", "instruction", "instances": [{"input", "output"}]}``, one item an
instance), instances (``{"instruction", "input", "output"}``), the release's predictions
(``{"instruction", "input", "target", ...}``), chat and prompt/completion files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from selfinstruct.errors import ConfigError, DataFileError
from selfinstruct.similarity import RougeLIndex

__all__ = [
    "EVAL_DIR_ENV",
    "USER_ORIENTED_FILE",
    "Decontaminator",
    "EvalItem",
    "Overlap",
    "TrainingOverlap",
    "default_eval_sets",
    "load_eval_items",
    "normalize",
    "overlap_report",
    "overlap_warning",
    "training_data_of",
]

NGRAM = 13
ROUGE_THRESHOLD = 0.7
MIN_TOKENS = 5
USER_ORIENTED_FILE = "user_oriented_instructions.jsonl"
EVAL_DIR_ENV = "SELFINSTRUCT_EVAL_DIR"

_APOSTROPHES = re.compile("['\u2018\u2019`]")
_PUNCT = re.compile(r"[^\w\s]|_")
_MASK = (1 << 64) - 1
_BASE = 0x9E3779B97F4A7C15  # odd: multiplying by it is a bijection mod 2**64
_CHUNK = 20_000  # examples hashed per pass in check_many (bounds its memory)
_SEPARATOR = "qz0sep0zq"  # joins a chunk's texts: normalised in one go, then split apart


def normalize(text: str) -> list[str]:
    """Lower-case, strip punctuation (apostrophes deleted, the rest made spaces), split."""
    return _PUNCT.sub(" ", _APOSTROPHES.sub("", text.lower())).split()


@dataclass(frozen=True)
class EvalItem:
    """One evaluation item: an instruction and one input, and where it comes from."""

    id: str
    instruction: str
    input: str = ""
    source: str = ""

    @property
    def text(self) -> str:
        return f"{self.instruction} {self.input}".strip()


@dataclass(frozen=True)
class Overlap:
    """Why a training example overlaps an evaluation item."""

    reason: str  # "ngram_overlap" or "rouge_l"
    item: EvalItem
    ngram: str | None = None  # the shared tokens (ngram_overlap), normalised
    score: float | None = None  # the ROUGE-L F1 of the instructions (rouge_l)

    def describe(self) -> str:
        why = (
            f"shares {self.ngram!r}"
            if self.reason == "ngram_overlap"
            else f"ROUGE-L {self.score:.2f} to {self.item.instruction!r}"
        )
        return f"{self.reason}: {why} with eval item {self.item.id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "eval_id": self.item.id,
            "eval_instruction": self.item.instruction,
            "eval_input": self.item.input,
            "eval_source": self.item.source,
            "ngram": self.ngram,
            "rouge_l": self.score,
        }


# --- loading ---------------------------------------------------------------------------------


def load_eval_items(paths: Iterable[str | Path]) -> list[EvalItem]:
    """The items of evaluation files (any format `read_examples` reads), in file order. Ids are
    the file's own (``user_oriented_task_3``, ``seed_task_0#1`` for a task's second instance),
    else ``FILE:N``."""
    from selfinstruct.finetune.data import read_examples

    items: list[EvalItem] = []
    for path in paths:
        path = Path(path)
        for k, e in enumerate(read_examples(path, skip_empty=False)):
            instruction = e.instruction if e.instruction is not None else (e.prompt or "")
            items.append(
                EvalItem(
                    id=e.id if e.id is not None else f"{path.name}:{k + 1}",
                    instruction=instruction.strip(),
                    input=e.input.strip(),
                    source=str(path),
                )
            )
    return items


def default_eval_sets() -> list[Path]:
    """The paper's 252 user-oriented tasks, where they are on this machine: in
    ``$SELFINSTRUCT_EVAL_DIR`` (a folder, or the file itself), else in
    ``shared/data/self-instruct/`` beside the project checkout. [] when absent: they are not
    ours to ship."""
    places: list[Path] = []
    env = os.environ.get(EVAL_DIR_ENV)
    if env:
        env_path = Path(env).expanduser()
        places += [env_path] if env_path.is_file() else [env_path / USER_ORIENTED_FILE]
    checkout = Path(__file__).resolve().parents[2]
    places.append(checkout.parent / "shared" / "data" / "self-instruct" / USER_ORIENTED_FILE)
    for path in places:
        if path.is_file():
            return [path]
    return []


# --- the checker -----------------------------------------------------------------------------


class Decontaminator:
    """Answers, for training examples, whether they overlap an evaluation item, and why.

    ``n``: the n-gram length (13); ``rouge_threshold``: ROUGE-L F1 above which two instructions
    are the same task (0.7; None turns the test off); ``min_tokens``: items shorter than ``n``
    are matched whole when they have at least this many tokens (5). ``tokenizer``: how texts
    become tokens for both tests in a language other than English (e.g.
    ``selfinstruct.language.tokenize``: one token a Chinese character, so the n-gram test looks
    for 13 shared characters in a row); None: the normalisation above and rouge-score's.
    """

    def __init__(
        self,
        items: Iterable[EvalItem],
        *,
        n: int = NGRAM,
        rouge_threshold: float | None = ROUGE_THRESHOLD,
        min_tokens: int = MIN_TOKENS,
        tokenizer: Callable[[str], list[str]] | None = None,
    ) -> None:
        if n < 1 or min_tokens < 1:
            raise ValueError("n and min_tokens must be >= 1")
        self.items = list(items)
        self.n = n
        self.rouge_threshold = rouge_threshold
        self.min_tokens = min_tokens
        self._normalize = normalize if tokenizer is None else tokenizer
        self._vocab: dict[str, int] = {}
        # length -> {token ids: first item holding them}
        self._grams: dict[int, dict[tuple[int, ...], int]] = {}
        for k, item in enumerate(self.items):
            ids = [
                self._vocab.setdefault(t, len(self._vocab) + 1) for t in self._normalize(item.text)
            ]
            if len(ids) >= n:
                grams = self._grams.setdefault(n, {})
                for i in range(len(ids) - n + 1):
                    grams.setdefault(tuple(ids[i : i + n]), k)
            elif len(ids) >= min_tokens:
                self._grams.setdefault(len(ids), {}).setdefault(tuple(ids), k)
        self._lengths = sorted(self._grams)
        self._lookup = {**self._vocab, _SEPARATOR: -1}
        rng = np.random.default_rng(20221220)
        self._random = rng.integers(0, 2**63, size=len(self._vocab) + 1, dtype=np.uint64) * 2 + 1
        self._hashes = {
            length: np.unique(np.fromiter((self._hash(g) for g in grams), np.uint64, len(grams)))
            for length, grams in self._grams.items()
        }
        # ROUGE-L: one entry per distinct instruction, pointing at its first item.
        self._first_item: list[int] = []
        texts: dict[str, int] = {}
        for k, item in enumerate(self.items):
            if item.instruction and item.instruction not in texts:
                texts[item.instruction] = len(self._first_item)
                self._first_item.append(k)
        self._index = RougeLIndex(texts, tokenizer=tokenizer)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path], **options: Any) -> Decontaminator:
        """A checker for the items of evaluation files (see `load_eval_items`)."""
        paths = list(paths)
        if not paths:
            raise DataFileError("no evaluation set given")
        return cls(load_eval_items(paths), **options)

    def __len__(self) -> int:
        return len(self.items)

    # ---- hashing ---------------------------------------------------------------------------

    def _hash(self, ids: Sequence[int]) -> np.uint64:
        h = 0
        for t in ids:
            h = (h * _BASE + int(self._random[t])) & _MASK
        return np.uint64(h)

    def _ids(self, text: str) -> list[int]:
        vocab = self._vocab
        return [vocab.get(t, 0) for t in self._normalize(text)]

    # ---- one example -----------------------------------------------------------------------

    def check(self, instruction: str, input: str = "") -> Overlap | None:
        """The first reason this example overlaps an item, or None: the earliest shared n-gram
        in the example's text, else the instruction's best ROUGE-L match above the threshold."""
        ids = self._ids(f"{instruction} {input}")
        best: tuple[int, int, int] | None = None  # (position, -length, item)
        for length in self._lengths:
            grams = self._grams[length]
            for i in range(len(ids) - length + 1):
                k = grams.get(tuple(ids[i : i + length]))
                if k is not None:
                    if best is None or (i, -length) < best[:2]:
                        best = (i, -length, k)
                    break
        if best is not None:
            return self._ngram_overlap(best[2], instruction, input, best[0], -best[1])
        return self._rouge(instruction)

    def _ngram_overlap(self, k: int, instruction: str, input: str, pos: int, length: int):
        tokens = self._normalize(f"{instruction} {input}")
        return Overlap("ngram_overlap", self.items[k], ngram=" ".join(tokens[pos : pos + length]))

    def _rouge(self, instruction: str) -> Overlap | None:
        if self.rouge_threshold is None or not instruction.strip():
            return None
        hit = self._index.best_above(instruction, self.rouge_threshold)
        if hit is None:
            return None
        return Overlap("rouge_l", self.items[self._first_item[hit[0]]], score=hit[1])

    # ---- many examples ---------------------------------------------------------------------

    def check_many(self, examples: Iterable[tuple[str, str]]) -> list[Overlap | None]:
        """`check` of each (instruction, input) pair, the same answers, computed in bulk."""
        examples = [(str(i), str(x or "")) for i, x in examples]
        out: list[Overlap | None] = [None] * len(examples)
        for start in range(0, len(examples), _CHUNK):
            self._ngrams_block(examples, start, min(len(examples), start + _CHUNK), out)
        if self.rouge_threshold is not None:
            self._rouge_many(examples, out)
        return out

    def _ngrams_block(
        self, examples: list[tuple[str, str]], start: int, stop: int, out: list[Overlap | None]
    ) -> None:
        if not self._lengths:
            return
        arr, starts = self._encode_block(examples[start:stop])
        ids = arr.tolist()
        rand = self._random[arr]
        base = np.uint64(_BASE)
        found: list[tuple[int, int, int]] = []  # (position, -length, item)
        h = rand.copy()
        for length in range(1, self._lengths[-1] + 1):
            if length > 1:
                h = h[:-1] * base + rand[length - 1 :]
            if length not in self._hashes:
                continue
            hits = np.flatnonzero(np.isin(h, self._hashes[length], assume_unique=False))
            grams = self._grams[length]
            for p in hits.tolist():
                k = grams.get(tuple(ids[p : p + length]))
                if k is not None:  # else a hash collision, or a window over a separator
                    found.append((p, -length, k))
        if not found:
            return
        found.sort()
        for p, neg_length, k in found:
            e = int(np.searchsorted(starts, p, side="right")) - 1
            if out[start + e] is None:
                instruction, input = examples[start + e]
                out[start + e] = self._ngram_overlap(
                    k, instruction, input, p - starts[e], -neg_length
                )

    def _encode_block(self, examples: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """The token ids of examples, one after the other with a 0 between two (an id no item
        n-gram holds), and where each example starts."""
        lookup = self._lookup
        joined = f" {_SEPARATOR} ".join(f"{i} {x}" for i, x in examples)
        tokens = self._normalize(joined)
        arr = np.fromiter(map(lookup.get, tokens, repeat(0)), dtype=np.int64, count=len(tokens))
        seps = np.flatnonzero(arr == -1)
        if len(seps) != len(examples) - 1:  # some text holds the separator word itself
            vocab = self._vocab
            ids: list[int] = []
            for k, (instruction, input) in enumerate(examples):
                if k:
                    ids.append(-1)
                ids.extend(vocab.get(t, 0) for t in self._normalize(f"{instruction} {input}"))
            arr = np.asarray(ids, dtype=np.int64)
            seps = np.flatnonzero(arr == -1)
        arr[seps] = 0
        return arr, np.concatenate(([0], seps + 1)).astype(np.int64)

    def _rouge_many(self, examples: list[tuple[str, str]], out: list[Overlap | None]) -> None:
        assert self.rouge_threshold is not None
        todo: dict[str, list[int]] = {}
        for j, (instruction, _) in enumerate(examples):
            if out[j] is None and instruction.strip():
                todo.setdefault(instruction, []).append(j)
        texts = list(todo)
        # One batched threshold test, then the best match only where one is above.
        above = self._index.exceeds_many(texts, self.rouge_threshold)
        for text, flag in zip(texts, above, strict=True):
            if flag:
                hit = self._rouge(text)
                for j in todo[text]:
                    out[j] = hit

    def split(
        self, records: Sequence[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], Overlap]]]:
        """(kept, dropped) of records with ``instruction`` and ``input`` fields, in order; each
        dropped record comes with its reason."""
        hits = self.check_many(
            (str(r.get("instruction") or ""), str(r.get("input") or "")) for r in records
        )
        kept = [r for r, h in zip(records, hits, strict=True) if h is None]
        dropped = [(r, h) for r, h in zip(records, hits, strict=True) if h is not None]
        return kept, dropped


# --- evaluate's check ------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingOverlap:
    """A training example that overlaps an item of a task file."""

    index: int  # the example's position in the training file (0-based)
    instruction: str
    input: str
    overlap: Overlap


def overlap_report(
    tasks_path: str | Path, training_path: str | Path, **options: Any
) -> list[TrainingOverlap]:
    """Every example of a training file that overlaps an item of a task file, in file order."""
    from selfinstruct.finetune.data import read_examples

    checker = Decontaminator.from_files([tasks_path], **options)
    examples = read_examples(training_path, skip_empty=False)
    pairs = [
        (e.instruction if e.instruction is not None else (e.prompt or ""), e.input)
        for e in examples
    ]
    return [
        TrainingOverlap(k, pairs[k][0], pairs[k][1], hit)
        for k, hit in enumerate(checker.check_many(pairs))
        if hit is not None
    ]


def overlap_warning(tasks_path: str | Path, training_path: str | Path) -> str | None:
    """One line for `evaluate` when training data overlaps the task file, else None."""
    found = overlap_report(tasks_path, training_path)
    if not found:
        return None
    first = found[0]
    text = first.instruction if len(first.instruction) <= 80 else first.instruction[:77] + "..."
    return (
        f"{len(found)} training example(s) in {training_path} overlap the tasks in {tasks_path};"
        f" the first, #{first.index + 1} {text!r}: {first.overlap.describe()}"
    )


def training_data_of(model_spec: str) -> Path | None:
    """The training data a fine-tuned local model was made from, where its folder says so:
    ``local?lora=DIR`` or ``local:DIR/model.gguf`` with ``DIR/finetune.json``. The split it
    trained on (``DIR/train.jsonl``) when kept, else the data file finetune.json names."""
    from selfinstruct.models.spec import parse_spec
    from selfinstruct.runfolder import FinetuneFolder

    try:
        spec = parse_spec(model_spec)
    except ConfigError:  # the command reports a bad spec itself
        return None
    if spec.backend != "local":
        return None
    candidates = []
    if spec.options.get("lora"):
        lora = Path(spec.options["lora"]).expanduser()
        candidates.append(lora if lora.is_dir() else lora.parent)
    if spec.name:
        candidates.append(Path(spec.name).expanduser().parent)
    for path in candidates:
        folder = FinetuneFolder(path)
        try:
            report = folder.training_report()
        except DataFileError:
            continue
        if report is None:
            continue
        if folder.train.is_file():
            return folder.train
        recorded = report.data_file
        if recorded is not None:
            for path in (Path(recorded), folder.path.parent / recorded):
                if path.is_file():
                    return path
    return None
