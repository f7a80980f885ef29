"""Languages: a similarity tokenizer that sees every script, detection from the seed tasks, and
each language's filter settings and calibrated similarity threshold.

English (``en``, the default) is exactly today's behaviour: rouge-score's tokenizer (only runs
of ``a-z0-9`` are tokens) and the paper's filters, bit for bit. Every other language uses
:func:`tokenize`:

* the text is NFKC-normalised (full-width ``Ａ１`` become ``A1``, decomposed accents compose)
  and lower-cased;
* each CJK ideograph and each kana (and the prolonged-sound mark) is one token, as Chinese and
  Japanese write no spaces and one character carries about a morpheme;
* Thai, Lao, Khmer and Myanmar text, also written without spaces, is cut into grapheme
  clusters (a consonant with its vowel and tone marks); no dictionary segmenter is used so
  that scores do not depend on which optional package happens to be installed;
* any other run of letters, combining marks and digits is one word: Latin with diacritics
  ("café" whole), Cyrillic, Greek, Arabic, Hebrew, Devanagari and the other Indic scripts,
  Hangul, ...; everything else (spaces, punctuation, symbols) separates.

On lower-case ASCII text these rules give exactly rouge-score's tokens (runs of ``a-z0-9``),
so English inside another language's pool is compared as rouge-score would compare it.

The thresholds and length bounds per script come from ``benchmarks/calibrate_language.py``
over a parallel set of near-duplicate and different instruction pairs written for the project
(``tests/data/parallel_pairs.jsonl``); docs/multilingual.md gives the experiment and figures.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

import regex

from selfinstruct.errors import ConfigError

__all__ = [
    "DEFAULT_LANGUAGE",
    "Language",
    "detect",
    "get",
    "known_codes",
    "recorded",
    "resolve",
    "tokenize",
    "tokenizer_of",
]

DEFAULT_LANGUAGE = "en"
AUTO = "auto"

Tokenizer = Callable[[str], list[str]]

# Scripts written without spaces, one token per character.
_ONE_PER_CHAR = r"\p{Han}\p{Hiragana}\p{Katakana}\u30fc"
# Scripts written without spaces, one token per grapheme cluster.
_CLUSTERED = r"\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
_TOKEN = regex.compile(
    rf"[{_ONE_PER_CHAR}]\p{{M}}*"
    rf"|(?=[{_CLUSTERED}])\X"
    rf"|[[\p{{L}}\p{{M}}\p{{N}}]--[{_ONE_PER_CHAR}{_CLUSTERED}]]+",
    regex.V1,
)


_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")  # rouge-score's tokens, the same on ASCII text


def tokenize(text: str) -> list[str]:
    """The tokens of ``text`` for ROUGE-L in any language (see the module's docstring)."""
    if text.isascii():  # NFKC leaves ASCII as it is, and then the tokens are rouge-score's
        return _ROUGE_TOKEN.findall(text.lower())
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


# --------------------------------------------------------------------------------------------
# Per-script settings


@dataclass(frozen=True)
class ScriptSettings:
    """What depends on how a language is tokenized: the similarity threshold that keeps about
    the share of near-duplicates 0.7 keeps in English, and the instruction length bounds (the
    paper's "more than 3 and at most 150 words", scaled by tokens per English word)."""

    threshold: float
    min_tokens: int  # an instruction is kept only with more than this many tokens
    max_tokens: int


# From benchmarks/calibrate_language.py (docs/multilingual.md); a test checks they agree.
# The languages of the parallel set, each measured:
CALIBRATED: dict[str, ScriptSettings] = {
    "zh": ScriptSettings(0.7, 5, 240),
    "ja": ScriptSettings(0.8, 8, 394),
    "ko": ScriptSettings(0.65, 2, 107),
    "th": ScriptSettings(0.8, 11, 530),
    "ru": ScriptSettings(0.65, 2, 112),
    "ar": ScriptSettings(0.65, 2, 112),
    "hi": ScriptSettings(0.7, 3, 171),
    "el": ScriptSettings(0.65, 3, 150),
}
# Every other language, by script: the mean over the measured languages of that script.
SCRIPTS: dict[str, ScriptSettings] = {
    "latin": ScriptSettings(0.7, 3, 150),
    "cjk": ScriptSettings(0.75, 6, 317),
    "hangul": ScriptSettings(0.65, 2, 107),
    "brahmic_nospace": ScriptSettings(0.8, 11, 530),
    "cyrillic": ScriptSettings(0.65, 2, 112),
    "arabic": ScriptSettings(0.65, 2, 112),
    "hebrew": ScriptSettings(0.65, 2, 112),
    "indic": ScriptSettings(0.7, 3, 171),
    "greek": ScriptSettings(0.65, 3, 150),
}


# --------------------------------------------------------------------------------------------
# Languages


@dataclass(frozen=True)
class Language:
    """A language's similarity tokenizer, threshold and instruction filters.

    ``banned_words`` are the paper's banned words (image, graph, file, map, draw, plot, go to)
    translated: regular expressions matched case-insensitively, as whole words where the
    language puts spaces between words; ``banned_prefixes`` the "Write a program" prefix.
    Both empty means the filter is off for that language (docs/multilingual.md).
    """

    code: str
    name: str
    script: str
    banned_words: tuple[str, ...] = ()
    banned_prefixes: tuple[str, ...] = ()

    @property
    def settings(self) -> ScriptSettings:
        return CALIBRATED.get(self.code) or SCRIPTS[self.script]

    @property
    def threshold(self) -> float:
        """The calibrated default similarity threshold."""
        return self.settings.threshold

    @property
    def is_english(self) -> bool:
        return self.code == DEFAULT_LANGUAGE

    @property
    def tokenizer(self) -> Tokenizer | None:
        """None for English (rouge-score's own tokenizer), else :func:`tokenize`."""
        return None if self.is_english else tokenize

    def tokens(self, text: str) -> list[str]:
        if self.is_english:
            return _ROUGE_TOKEN.findall(text.lower())
        return tokenize(text)


_ZH_BANNED = (
    "图片", "图像", "图表", "图形", "照片", "文件", "地图", "绘制", "绘图", "画一", "画出",
    "前往",
)  # fmt: skip
_JA_BANNED = (
    "画像", "図表", "図を", "グラフ", "写真", "ファイル", "地図", "描いて", "描く", "描け",
    "プロット", "行って",
)  # fmt: skip
_RU_BANNED = (
    r"изображени\w*", r"картин\w*", r"график\w*", r"файл\w*", r"карт(?:а|ы|у|е|ой|ам|ами|ах)",
    r"нарису\w*", r"рисун\w*", r"рисова\w*", r"перейд\w*",
)  # fmt: skip

_LANGUAGES: tuple[Language, ...] = (
    Language("en", "English", "latin"),
    Language(
        "zh",
        "Chinese",
        "cjk",
        _ZH_BANNED,
        ("编写一个程序", "编写程序", "写一个程序", "写程序", "编一个程序"),
    ),
    Language("ja", "Japanese", "cjk", _JA_BANNED, ("プログラムを書", "プログラムを作成")),
    Language("ko", "Korean", "hangul"),
    Language("th", "Thai", "brahmic_nospace"),
    Language("lo", "Lao", "brahmic_nospace"),
    Language("km", "Khmer", "brahmic_nospace"),
    Language("my", "Burmese", "brahmic_nospace"),
    Language(
        "ru",
        "Russian",
        "cyrillic",
        _RU_BANNED,
        ("напишите программу", "напиши программу", "написать программу"),
    ),
    Language("uk", "Ukrainian", "cyrillic"),
    Language("bg", "Bulgarian", "cyrillic"),
    Language("sr", "Serbian", "cyrillic"),
    Language("el", "Greek", "greek"),
    Language("ar", "Arabic", "arabic"),
    Language("fa", "Persian", "arabic"),
    Language("ur", "Urdu", "arabic"),
    Language("he", "Hebrew", "hebrew"),
    Language("hi", "Hindi", "indic"),
    Language("mr", "Marathi", "indic"),
    Language("ne", "Nepali", "indic"),
    Language("bn", "Bengali", "indic"),
    Language("pa", "Punjabi", "indic"),
    Language("gu", "Gujarati", "indic"),
    Language("ta", "Tamil", "indic"),
    Language("te", "Telugu", "indic"),
    Language("kn", "Kannada", "indic"),
    Language("ml", "Malayalam", "indic"),
    Language("fr", "French", "latin"),
    Language("de", "German", "latin"),
    Language("es", "Spanish", "latin"),
    Language("pt", "Portuguese", "latin"),
    Language("it", "Italian", "latin"),
    Language("nl", "Dutch", "latin"),
    Language("pl", "Polish", "latin"),
    Language("cs", "Czech", "latin"),
    Language("sv", "Swedish", "latin"),
    Language("tr", "Turkish", "latin"),
    Language("vi", "Vietnamese", "latin"),
    Language("id", "Indonesian", "latin"),
)
_BY_CODE = {lang.code: lang for lang in _LANGUAGES}


def known_codes() -> list[str]:
    return list(_BY_CODE)


def get(code: str | Language | None) -> Language:
    """The language of an ISO 639-1 code (None: English); ConfigError for an unknown one."""
    if isinstance(code, Language):
        return code
    key = (code or DEFAULT_LANGUAGE).strip().lower().replace("_", "-").split("-")[0]
    lang = _BY_CODE.get(key)
    if lang is None:
        raise ConfigError(
            f"`language` {code!r}: unknown; use 'auto' or one of {', '.join(known_codes())}"
        )
    return lang


def tokenizer_of(code: str | Language | None) -> Tokenizer | None:
    """The similarity tokenizer for a language: None (rouge-score's) for English."""
    return get(code).tokenizer


def resolve(code: str | None, texts: Iterable[str]) -> Language:
    """``code`` as a Language, ``auto`` detected from ``texts`` (the seed instructions)."""
    if code is not None and code.strip().lower() == AUTO:
        return get(detect(texts))
    return get(code)


def recorded(run_json: dict | None) -> str | None:
    """The language step 1 of a run used, as its run.json records it (None: not recorded, an
    older or English-only run)."""
    config = ((run_json or {}).get("config") or {}).get("instructions") or {}
    code = config.get("language")
    return code if isinstance(code, str) else None


# --------------------------------------------------------------------------------------------
# Detection

_SCRIPT_OF = (
    (regex.compile(r"[\p{Hiragana}\p{Katakana}]"), "kana"),
    (regex.compile(r"\p{Han}"), "han"),
    (regex.compile(r"\p{Hangul}"), "ko"),
    (regex.compile(r"\p{Thai}"), "th"),
    (regex.compile(r"\p{Lao}"), "lo"),
    (regex.compile(r"\p{Khmer}"), "km"),
    (regex.compile(r"\p{Myanmar}"), "my"),
    (regex.compile(r"\p{Cyrillic}"), "cyrillic"),
    (regex.compile(r"\p{Greek}"), "el"),
    (regex.compile(r"\p{Arabic}"), "arabic"),
    (regex.compile(r"\p{Hebrew}"), "he"),
    (regex.compile(r"\p{Devanagari}"), "hi"),
    (regex.compile(r"\p{Bengali}"), "bn"),
    (regex.compile(r"\p{Gurmukhi}"), "pa"),
    (regex.compile(r"\p{Gujarati}"), "gu"),
    (regex.compile(r"\p{Tamil}"), "ta"),
    (regex.compile(r"\p{Telugu}"), "te"),
    (regex.compile(r"\p{Kannada}"), "kn"),
    (regex.compile(r"\p{Malayalam}"), "ml"),
    (regex.compile(r"\p{Latin}"), "latin"),
)
_LETTER = regex.compile(r"\p{L}")
# A few frequent words per Latin-script language, to tell them apart.
_LATIN_WORDS = {
    "en": "the a an and of to in for with is are this that write give what how",
    "fr": "le la les un une des et de du pour avec est dans qui écrivez donnez",
    "de": "der die das ein eine und ist mit für von zu den schreiben sie nicht",
    "es": "el la los las un una y de del para con es en que escribe escriba",
    "pt": "o a os as um uma e de do da para com é em que escreva não",
    "it": "il lo la gli le un una e di del per con è che scrivi scriva",
    "nl": "de het een en van voor met is in dat schrijf geef niet",
}
_UKRAINIAN = regex.compile(r"[іїєґ]")


def detect(texts: Iterable[str]) -> str:
    """The language code most of ``texts`` are written in, from their letters' scripts (and,
    for Latin and Cyrillic, a few telling words or letters). English when nothing else shows."""
    texts = list(texts)
    joined = "\n".join(texts)
    counts: Counter[str] = Counter()
    for char in _LETTER.findall(joined):
        for pattern, script in _SCRIPT_OF:
            if pattern.match(char):
                counts[script] += 1
                break
    if not counts:
        return DEFAULT_LANGUAGE
    script = counts.most_common(1)[0][0]
    if script in ("han", "kana"):
        # Japanese mixes kanji and kana; Chinese has no kana at all.
        return "ja" if counts["kana"] >= 0.05 * (counts["han"] + counts["kana"]) else "zh"
    if script == "cyrillic":
        return "uk" if _UKRAINIAN.search(joined.lower()) else "ru"
    if script == "arabic":
        return "fa" if regex.search(r"[پچژگ]", joined) else "ar"
    if script == "latin":
        return _latin_language(joined)
    return script


def _latin_language(text: str) -> str:
    words = Counter(regex.findall(r"\p{L}+", text.lower()))
    scores = {
        code: sum(words[w] for w in vocabulary.split()) for code, vocabulary in _LATIN_WORDS.items()
    }
    best = max(scores, key=lambda c: (scores[c], c == DEFAULT_LANGUAGE))
    return best if scores[best] > 0 else DEFAULT_LANGUAGE


@cache
def banned_word_pattern(code: str) -> regex.Pattern[str] | None:
    """The language's banned words as one pattern (None: that filter is off)."""
    lang = get(code)
    if not lang.banned_words:
        return None
    body = "|".join(lang.banned_words)
    if lang.script in ("cjk", "brahmic_nospace"):
        return regex.compile(rf"(?:{body})", regex.I)
    return regex.compile(rf"\b(?:{body})\b", regex.I)
