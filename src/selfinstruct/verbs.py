"""The root verb of an instruction and its direct noun object (the paper's Figure 2).

The paper parsed each instruction with a constituency parser and kept the verb closest to the
root and its first direct noun object. Two ways to get that pair here:

* ``spacy``: a dependency parse with any installed ``en_core_web_*`` pipeline. spaCy is not a
  dependency of this package and its English models are not on PyPI, so this is used only where
  someone installed both; the import is guarded.
* ``heuristic``: rules for the imperative shape that almost every instruction has, needing no
  model (used when no spaCy pipeline is installed). See :func:`heuristic_verb_noun`.

:func:`verb_noun_pairs` parses many texts with either, keeping a per-text cache on disk so that
a second report of the same run costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError
from selfinstruct.io import write_atomic

Pair = tuple[str, str]
Progress = Callable[[str], None]

# Bump when the rules change in a way worth naming (caches follow this file's text anyway).
HEURISTIC_VERSION = 1
HEURISTIC = f"heuristic-v{HEURISTIC_VERSION}"

_WH = {"what", "how", "why", "who", "whom", "whose", "where", "when", "which", "whether"}
_AUX = {
    "is", "are", "was", "were", "am", "be", "been", "being", "do", "does", "did", "done",
    "can", "could", "would", "should", "will", "shall", "may", "might", "must", "have", "has",
    "had", "isn't", "aren't", "don't", "doesn't", "didn't", "can't", "won't", "wouldn't",
    "shouldn't", "couldn't",
}  # fmt: skip
_PRONOUNS = {
    "i", "you", "we", "they", "he", "she", "it", "me", "us", "them", "him", "her", "this",
    "that", "these", "those", "there", "here", "my", "your", "our", "their", "his", "its",
    "someone", "something", "everyone", "everything", "anyone", "anything", "one", "let's",
    "i'm", "you're", "we're", "it's", "there's", "here's",
}  # fmt: skip
_DETERMINERS = {
    "a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every", "all",
    "another", "my", "your", "our", "their", "his", "her", "its", "both", "several", "many",
    "few", "more", "most", "no", "such", "either", "neither", "much",
}  # fmt: skip
_NUMBER_WORDS = {
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "twenty", "fifty", "hundred", "thousand", "dozen", "first", "second", "third",
}  # fmt: skip
# Words that end a noun phrase: prepositions, conjunctions, relative and wh-words, "to".
_STOPS = {
    "of", "in", "on", "for", "to", "from", "with", "about", "by", "at", "into", "onto", "as",
    "between", "among", "through", "over", "under", "after", "before", "without", "within",
    "per", "via", "against", "during", "like", "than", "toward", "towards", "up", "out", "off",
    "down", "and", "or", "but", "nor", "so", "because", "while", "since", "unless", "until",
    "if", "then", "that", "which", "who", "whom", "whose", "where", "when", "whether", "how",
    "why", "what", "is", "are", "was", "were", "be", "can", "should", "will", "would",
    "could", "must", "may", "using", "based", "given", "according",
}  # fmt: skip
# Indirect objects skipped between the verb and its object ("Give me a list").
_INDIRECT = {"me", "us", "him", "her", "them", "you"}
# Heads that are not nouns but end up last in a phrase ("Classify the following:").
_NOT_HEADS = _DETERMINERS | _NUMBER_WORDS | {
    "following", "above", "below", "given", "same", "other", "next", "last", "new", "sure",
    "possible", "best", "different", "similar", "correct", "appropriate",
}  # fmt: skip
# Openers skipped before the verb: "Please", "Can you", "Now,", ...
_POLITE = {"please", "kindly", "now", "then", "next", "also", "finally", "first", "lastly"}
_ASK = {"can", "could", "would", "will"}
# Clauses that open with one of these and end at the first comma are skipped ("Given a list
# of numbers, find ..."); "in" covers "In this task, ...", "for" covers "For each word, ...".
_CLAUSE_OPENERS = {
    "given", "using", "based", "according", "in", "for", "with", "if", "when", "after",
    "from", "as", "by", "without", "suppose", "assuming", "considering", "once", "whenever",
}  # fmt: skip
_NOUN_S_KEPT = {
    "series", "species", "news", "means", "lens", "physics", "mathematics", "economics",
    "politics", "ethics", "analysis", "basis", "thesis", "hypothesis", "synopsis", "status",
    "bus", "gas", "yes", "this", "us", "chaos", "crisis", "diagnosis", "emphasis", "axis",
    "summaries", "process", "address", "business", "class", "glass", "pros", "cons",
    "lyrics", "statistics", "genus", "corpus", "virus", "bonus", "census", "campus", "focus",
    "canvas", "atlas", "alias", "iris", "apparatus", "bias",
}  # fmt: skip
_ES_PLURAL = ("ches", "shes", "sses", "xes", "zzes", "oes")
_SPECIAL_PLURALS = {
    "people": "person", "children": "child", "men": "man", "women": "woman", "feet": "foot",
    "teeth": "tooth", "mice": "mouse", "geese": "goose", "criteria": "criterion",
    "phenomena": "phenomenon", "data": "data", "summaries": "summary", "indices": "index",
    "matrices": "matrix", "analyses": "analysis", "hypotheses": "hypothesis", "quizzes": "quiz",
}  # fmt: skip

# First words that are no imperative verb (besides wh-words, auxiliaries, pronouns, ...).
_NOT_VERBS = {
    "let", "good", "great", "best", "new", "old", "very", "just", "only", "not", "yes",
    "hi", "hello", "hey", "dear", "thanks", "ok", "okay", "today", "tomorrow", "yesterday",
    "however", "therefore", "also", "instead", "otherwise", "here", "there",
}  # fmt: skip
# A verb is not followed by these ("Note: ...", "Apples, pears").
_NOT_AFTER_VERB = {":", ",", ";", "|", ")", "=", "/", "&"}

# Modifiers that may open a noun phrase before its words ("the given numbers").
_PREMODIFIERS = {"given", "following", "above", "below", "provided", "entire", "whole"}
# Adverbs ending in -ly that are verbs, not openers ("Apply", "Reply", "Multiply").
_LY_VERBS = {"fly", "rally", "tally", "bully", "ally"}
_LY_NOUNS = {
    "assembly", "anomaly", "butterfly", "dragonfly", "firefly", "jelly", "belly", "holly",
    "folly", "italy", "july", "monopoly", "oligopoly", "homily", "ugly", "poly", "bully",
}  # fmt: skip

# Nouns that look like participles, kept as heads ("a binary string", "a job posting").
_ING_NOUNS = {
    "string", "thing", "king", "ring", "wing", "spring", "building", "painting", "meeting",
    "wedding", "evening", "morning", "ceiling", "clothing", "setting", "heading", "reading",
    "writing", "recording", "training", "posting", "listing", "greeting", "ending", "opening",
    "offering", "saying", "feeling", "finding", "drawing", "warning", "rating", "pudding",
    "booking", "marketing", "programming", "learning", "thinking", "shopping", "cooking",
    "parking", "clustering", "sorting", "hearing", "crossing", "filling", "dumpling",
    "stuffing", "frosting", "icing", "topping", "dressing", "seasoning", "lighting",
    "engineering", "planning", "gathering", "funding", "housing", "earring", "belonging",
    "meaning", "beginning", "timing", "spelling", "wording", "pricing",
}  # fmt: skip
_ED_NOUNS = {"hundred", "bed", "shed", "sled", "shred", "red", "bred"}

_TOKEN = re.compile(r"[A-Za-z][A-Za-z'\u2019-]*|\d[\w%-]*(?:[.,/:]\d[\w%-]*)*|\S")


def _tokens(text: str) -> list[str]:
    """Lower-cased words, numbers and punctuation; a line break ends a sentence."""
    out: list[str] = []
    for line in text.splitlines():
        if out:
            out.append(".")
        out.extend(t.replace("\u2019", "'").lower() for t in _TOKEN.findall(line))
    return out


def _is_word(token: str) -> bool:
    return token[0].isalpha()


def singular(noun: str) -> str:
    """A light plural-to-singular rule for English nouns (no dictionary).

    ``stories`` -> ``story``, ``boxes`` -> ``box``, ``words`` -> ``word``; words that end in
    ``s`` in the singular (``analysis``, ``series``, ``class``) and a few irregular plurals
    are looked up.
    """
    if noun in _SPECIAL_PLURALS:
        return _SPECIAL_PLURALS[noun]
    if noun in _NOUN_S_KEPT or len(noun) <= 3 or not noun.endswith("s"):
        return noun
    if noun.endswith(("ss", "us", "is", "'s")):
        return noun
    if noun.endswith("ies") and len(noun) > 4:
        return noun[:-3] + "y"
    if noun.endswith(_ES_PLURAL):
        return noun[:-2]
    return noun[:-1]


def _could_be_verb(sentence: list[str], text: str) -> bool:
    """Whether the first word of a sentence can be its imperative verb."""
    word, following = sentence[0], sentence[1]
    after = sentence[2] if len(sentence) > 2 else "."
    if not _is_word(word) or "'" in word or (len(word) <= 2 and word != "go"):
        return False
    if any(word in group for group in _NOT_VERB_GROUPS):
        return False
    if word.endswith("ing") and len(word) >= 6:
        return False  # "Solving the equation ...", "Learning Python is ..."
    if word.endswith("ed") and len(word) >= 5 and not word.endswith("eed"):
        return False  # "Based on ...", "Finished products ..."
    if following in _AUX or following in _NOT_AFTER_VERB:
        return False  # "Python is ...", "Note: ..."
    if following[0].isdigit() and not _is_word(after):
        return False  # "Day 1: ...", "Chapter 2."
    # A word written with capitals after its first letter is a name ("AmazonBasics", "NASA").
    original = re.search(rf"(?i)(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text)
    return not (original and any(c.isupper() for c in original.group(0)[1:]))


def _is_participle(token: str) -> bool:
    """A present or past participle after a noun ("a sentence describing", "words used")."""
    if token.endswith("ing"):
        return len(token) > 4 and token not in _ING_NOUNS
    if token.endswith("ed"):
        return len(token) >= 4 and not token.endswith("eed") and token not in _ED_NOUNS
    return False


def _is_adverb(token: str) -> bool:
    return token == "simply" or (
        token.endswith("ly")
        and not token.endswith(("ply", "ily"))
        and token not in _LY_VERBS
        and token not in _LY_NOUNS
    )


def _first_sentence(tokens: list[str]) -> list[str]:
    for i, tok in enumerate(tokens):
        if tok in {".", "?", "!", ";"} or tok == "\n":
            return tokens[:i]
    return tokens


def _skip_openers(tokens: list[str]) -> list[str]:
    """Drop polite openers, "Can you", and a leading "Given ..., " clause, in any order."""
    changed = True
    while tokens and changed:
        changed = False
        head = tokens[0]
        if head in _POLITE and (len(tokens) == 1 or tokens[1] != "the"):
            tokens = tokens[1:]
            changed = True
        elif _is_adverb(head) and len(tokens) > 1 and _is_word(tokens[1]):
            tokens = tokens[1:]  # "Briefly explain ..."
            changed = True
        elif head in {",", ":", "-", "*", "\u2022"}:
            tokens = tokens[1:]
            changed = True
        elif head in _ASK and len(tokens) > 1 and tokens[1] == "you":
            tokens = tokens[2:]
            changed = True
        elif head in _CLAUSE_OPENERS and "," in tokens:
            tokens = tokens[tokens.index(",") + 1 :]
            changed = True
    return tokens


def _object_head(tokens: list[str]) -> str | None:
    """The head noun of the noun phrase at the start of ``tokens``: its last word before a
    preposition, conjunction, relative word, punctuation or participle."""
    i = 0
    while i < len(tokens) and tokens[i] in _INDIRECT:
        i += 1
    phrase: list[str] = []
    for tok in tokens[i:]:
        if not _is_word(tok):
            if tok[0].isdigit() and not phrase:
                continue  # "List 5 ways", "a 500-word essay"
            break
        if not phrase and (tok in _DETERMINERS or tok in _NUMBER_WORDS or tok in _PREMODIFIERS):
            continue
        if tok in _STOPS or tok in _AUX:
            break
        if phrase and (_is_participle(tok) or _is_adverb(tok) or tok in _PRONOUNS):
            break  # "the sentence using", "the words used in", "the list ascendingly", "the
            # article you have been given"
        if tok.endswith("'s"):
            phrase = []  # "the user's name": the possessor is not the head
            continue
        phrase.append(tok)
        if len(phrase) >= 5:
            break
    if not phrase:
        return None
    head = phrase[-1].strip("'-")
    if not head or head in _NOT_HEADS or head in _PRONOUNS or _is_adverb(head):
        return None  # "Classify the following:", "React properly"
    return singular(head)


def heuristic_verb_noun(text: str) -> Pair | None:
    """(verb, noun) of an imperative instruction, or None when it has no such structure.

    Rules, in order:

    1. Lower-case and tokenize; keep the first sentence, or the next one when the first is a
       lone "Given ..." clause.
    2. Skip leading "Please"/"Kindly"/"Now", "Can/Could/Would/Will you", an adverb in -ly
       ("Briefly"), list bullets, and a clause that opens with "Given/Using/Based on/In/For/
       If/When/..." up to its first comma.
    3. The verb is the first word if it is a word and not a wh-word, an auxiliary, a pronoun,
       a determiner, a number, a preposition, a greeting or adverb ("Hello", "However"), a
       participle ("Solving", "Based"), a word of two letters, or a name written with inner
       capitals ("AmazonBasics", "NASA"); and if the next token is not an auxiliary, a colon,
       comma or similar, or a number before punctuation ("Python is", "Note:", "Day 1:").
    4. The object is the head (last word) of the noun phrase after the verb: indirect-object
       pronouns ("me", "us") are skipped, then leading determiners, numbers and "given",
       "following", "above"; the phrase ends at a preposition, conjunction, relative or
       wh-word, auxiliary, "to", punctuation, a participle ("using", "used"), an adverb in
       -ly, a pronoun ("the article you were given") or after five words; its last word, put
       in the singular, is the object unless it is a determiner-like word ("following").
    """
    tokens = _tokens(text)
    sentence = _first_sentence(tokens)
    if sentence and sentence[0] in _CLAUSE_OPENERS and "," not in sentence:
        rest = tokens[len(sentence) + 1 :]
        sentence = _first_sentence(rest)
    sentence = _skip_openers(sentence)
    if len(sentence) < 2:
        return None
    verb = sentence[0]
    if not _could_be_verb(sentence, text):
        return None
    noun = _object_head(sentence[1:])
    if noun is None:
        return None
    return verb, noun


_NOT_VERB_GROUPS = (
    _WH, _AUX, _PRONOUNS, _DETERMINERS, _NUMBER_WORDS, _STOPS, _CLAUSE_OPENERS, _NOT_VERBS
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# spaCy, when a pipeline is installed


def installed_spacy_models() -> list[str]:
    """Names of the installed ``en_core_web_*`` spaCy pipelines (empty without spaCy)."""
    try:
        import spacy.util  # noqa: PLC0415 - optional
    except ImportError:
        return []
    try:
        names = spacy.util.get_installed_models()
    except Exception:  # a broken spaCy install is the same as none
        return []
    order = {"sm": 0, "md": 1, "lg": 2, "trf": 3}
    found = [n for n in names if n.startswith("en_core_web_")]
    return sorted(found, key=lambda n: (order.get(n.rsplit("_", 1)[-1], 9), n))


class SpacyParser:
    """Root verb and its first direct noun object from a spaCy dependency parse."""

    def __init__(self, model: str):
        try:
            import spacy  # noqa: PLC0415 - optional
        except ImportError:
            raise ConfigError(
                "`parser` spacy: spaCy is not installed (pip install spacy)"
            ) from None
        try:
            self._nlp = spacy.load(model)
        except OSError as e:
            raise ConfigError(f"`parser` spacy:{model}: cannot load the pipeline ({e})") from None
        unused = [p for p in self._nlp.pipe_names if p in ("ner", "textcat", "textcat_multilabel")]
        if unused:
            self._nlp.select_pipes(disable=unused)  # only the parse is needed
        version = self._nlp.meta.get("version", "?")
        self.method = f"spacy:{model}-{version}"

    def pairs(self, texts: list[str], progress: Progress | None = None) -> list[Pair | None]:
        out: list[Pair | None] = []
        for n, doc in enumerate(self._nlp.pipe(texts, batch_size=256), start=1):
            out.append(_doc_pair(doc))
            if progress is not None and n % 5000 == 0:
                progress(f"parsed {n:,} of {len(texts):,} instructions")
        return out


def _doc_pair(doc: Any) -> Pair | None:
    sentences = list(doc.sents)
    if not sentences:
        return None
    root = sentences[0].root
    if root.pos_ != "VERB":
        return None
    for child in root.children:
        if child.dep_ in ("dobj", "obj") and child.pos_ in ("NOUN", "PROPN"):
            return root.lemma_.lower(), child.lemma_.lower()
    return None


# --------------------------------------------------------------------------------------------
# Many texts, cached


def resolve_parser(parser: str = "auto") -> tuple[str, SpacyParser | None]:
    """The method a ``parser`` choice means here: ("heuristic-vN", None) or a spaCy parser.

    ``auto``: the first installed ``en_core_web_*`` pipeline (smallest first), else the
    heuristic; ``heuristic``; ``spacy`` (the first installed pipeline, or an error);
    ``spacy:NAME`` (that pipeline).
    """
    if parser == "heuristic":
        return HEURISTIC, None
    if parser in ("auto", "spacy"):
        models = installed_spacy_models()
        if not models:
            if parser == "spacy":
                raise ConfigError(
                    "`parser` spacy: no en_core_web_* spaCy pipeline is installed"
                    " (use `parser` heuristic)"
                )
            return HEURISTIC, None
        p = SpacyParser(models[0])
        return p.method, p
    if parser.startswith("spacy:"):
        p = SpacyParser(parser.split(":", 1)[1])
        return p.method, p
    raise ConfigError(f"`parser` {parser!r}: expected auto, heuristic, spacy or spacy:MODEL")


def verb_noun_pairs(
    texts: Iterable[str],
    *,
    parser: str = "auto",
    cache: Path | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Pair | None], str]:
    """(verb, noun) or None for each distinct text, and the method used.

    ``cache`` is a JSON file of earlier parses by the same method; texts found there are not
    parsed again, and new parses are added to it.
    """
    method, spacy_parser = resolve_parser(parser)
    # The rules' own text is part of the key: a cache made by other rules is not reused.
    rules = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:12]
    distinct = list(dict.fromkeys(texts))
    known: dict[str, Pair | None] = {}
    if cache is not None and cache.exists():
        try:
            stored = json.loads(cache.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            stored = {}
        if (
            isinstance(stored, dict)
            and stored.get("method") == method
            and stored.get("rules") == rules
        ):
            for text, pair in (stored.get("pairs") or {}).items():
                known[text] = (pair[0], pair[1]) if isinstance(pair, list) else None
    todo = [t for t in distinct if t not in known]
    if todo:
        if progress is not None:
            progress(f"parsing {len(todo):,} instructions ({method})")
        if spacy_parser is not None:
            parsed = spacy_parser.pairs(todo, progress)
        else:
            parsed = [heuristic_verb_noun(t) for t in todo]
        known.update(zip(todo, parsed, strict=True))
        if cache is not None:
            payload = {
                "method": method,
                "rules": rules,
                "pairs": {t: list(p) if p else None for t, p in known.items()},
            }
            write_atomic(cache, json.dumps(payload, ensure_ascii=False))
    return {t: known[t] for t in distinct}, method
