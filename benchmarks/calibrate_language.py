"""Calibrate the similarity threshold and length bounds of each script on parallel text.

ROUGE-L over characters (Chinese, Japanese) or grapheme clusters (Thai) is not ROUGE-L over
words, and a Korean or Russian word carries its endings, so 0.7 does not mean the same thing in
every language. ``tests/data/parallel_pairs.jsonl`` (written for the project) holds 24 pairs of
instructions in English and eight translations: 16 pairs edited by degrees (a word added, a word
swapped, a clause rewritten, the same task said again) and 8 pairs of different tasks.

For each language the pair scores are fitted against the English scores of the same pairs
(least squares, F1_lang = a + b * F1_en); the language's threshold is the fitted value at 0.7,
rounded to 0.05 (the data is too small for finer figures), so that it sits where 0.7 sits in
English and keeps about the same share of the near-duplicate pairs. The length bounds are the
paper's (more than 3, at most 150 words) times the median number of tokens per English word
over the same sentences. A language outside the set takes its script's settings: the mean over
the set's languages of that script (Hebrew takes Arabic's).

    python benchmarks/calibrate_language.py          # the table, and the settings to paste

The figures are in docs/multilingual.md; tests/test_language.py checks that the settings in
``selfinstruct.language.SCRIPTS`` are the ones this script computes.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from selfinstruct.language import CALIBRATED, SCRIPTS, ScriptSettings, get
from selfinstruct.similarity import rouge_l

PAIRS = Path(__file__).resolve().parents[1] / "tests" / "data" / "parallel_pairs.jsonl"
LANGUAGES = ("zh", "ja", "ko", "th", "ru", "ar", "hi", "el")
ENGLISH_THRESHOLD = 0.7
MIN_WORDS, MAX_WORDS = 3, 150
# Each script's settings, for its languages outside the set, from the set's languages in it.
MEASURED = {
    "cjk": ("zh", "ja"),
    "hangul": ("ko",),
    "brahmic_nospace": ("th",),
    "cyrillic": ("ru",),
    "arabic": ("ar",),
    "hebrew": ("ar",),  # no Hebrew text in the set: an abjad with attached clitics, as Arabic
    "indic": ("hi",),
    "greek": ("el",),
}


def load_pairs(path: Path = PAIRS) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def scores(pairs: list[dict], code: str) -> list[float]:
    return [rouge_l(*p[code], language=code).fmeasure for p in pairs]


def fit_at(xs: list[float], ys: list[float], x: float) -> float:
    """The least-squares line through (xs, ys), evaluated at x."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((a - mx) ** 2 for a in xs)
    sxy = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True))
    return my + sxy / sxx * (x - mx)


def tokens_per_word(pairs: list[dict], code: str) -> float:
    en, lang = get("en"), get(code)
    ratios = [
        len(lang.tokens(t)) / len(en.tokens(e))
        for p in pairs
        for e, t in zip(p["en"], p[code], strict=True)
    ]
    return statistics.median(ratios)


def calibrate(
    path: Path = PAIRS,
) -> tuple[dict[str, ScriptSettings], dict[str, ScriptSettings], list[dict]]:
    """The settings of each language measured, of each script (for the languages not
    measured: the mean over the script's measured languages), and a row of figures each."""
    pairs = load_pairs(path)
    english = scores(pairs, "en")
    near = [p["kind"] == "near" for p in pairs]
    rows = []
    for code in ("en", *LANGUAGES):
        ys = scores(pairs, code)
        raw = fit_at(english, ys, ENGLISH_THRESHOLD) if code != "en" else ENGLISH_THRESHOLD
        threshold = round(round(raw / 0.05) * 0.05, 2)
        ratio = tokens_per_word(pairs, code)
        rows.append(
            {
                "language": code,
                "fit": raw,
                "threshold": threshold,
                "near_above": sum(y > threshold for y, n in zip(ys, near, strict=True) if n),
                "near": sum(near),
                "different_max": max(y for y, n in zip(ys, near, strict=True) if not n),
                "tokens_per_word": ratio,
            }
        )
    by_code = {r["language"]: r for r in rows}

    def settings_of(codes: tuple[str, ...]) -> ScriptSettings:
        threshold = round(statistics.fmean(by_code[c]["threshold"] for c in codes), 2)
        ratio = statistics.fmean(by_code[c]["tokens_per_word"] for c in codes)
        return ScriptSettings(threshold, round(MIN_WORDS * ratio), round(MAX_WORDS * ratio))

    languages = {code: settings_of((code,)) for code in LANGUAGES}
    scripts = {"latin": ScriptSettings(ENGLISH_THRESHOLD, MIN_WORDS, MAX_WORDS)}
    scripts |= {script: settings_of(codes) for script, codes in MEASURED.items()}
    return languages, scripts, rows


def main() -> None:
    languages, scripts, rows = calibrate()
    print(f"pairs: {PAIRS.relative_to(PAIRS.parents[2])}")
    print(
        "| language | fitted value at English 0.7 | threshold | near pairs above it"
        " | highest different pair | tokens per English word |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['language']} | {r['fit']:.3f} | {r['threshold']:.2f} |"
            f" {r['near_above']}/{r['near']} | {r['different_max']:.3f} |"
            f" {r['tokens_per_word']:.2f} |"
        )
    for name, table in (("CALIBRATED", languages), ("SCRIPTS", scripts)):
        print(f"\n{name} = {{")
        for key, s in table.items():
            print(f'    "{key}": ScriptSettings({s.threshold}, {s.min_tokens}, {s.max_tokens}),')
        print("}")
    print("\nmatches selfinstruct.language:", languages == CALIBRATED and scripts == SCRIPTS)


if __name__ == "__main__":
    main()
