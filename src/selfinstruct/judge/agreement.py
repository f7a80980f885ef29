"""Agreement between the judge and people: Cohen's kappa (plain and weighted), Spearman."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from selfinstruct.judge.verdict import QUESTIONS, RATING_ORDER, RATING_SCORE, normalize_rating

# --- agreement ----------------------------------------------------------------------------


def cohen_kappa(
    pairs: Iterable[tuple[Any, Any]],
    categories: Iterable[Any] | None = None,
    *,
    weights: str | None = None,
) -> float | None:
    """Cohen's kappa of (rater 1, rater 2) pairs; `weights="quadratic"` for the weighted one.

    Categories are ordered as given (default: A, B, C, D); with quadratic weights a
    disagreement costs (i - j)^2 / (k - 1)^2. None when chance agreement is already perfect
    (both raters used one and the same category) or there are no pairs.
    """
    cats = list(categories) if categories is not None else list(RATING_ORDER)
    index = {c: i for i, c in enumerate(cats)}
    k = len(cats)
    table = [[0] * k for _ in range(k)]
    n = 0
    for a, b in pairs:
        table[index[a]][index[b]] += 1
        n += 1
    if n == 0 or k < 2:
        return None
    rows = [sum(r) for r in table]
    cols = [sum(table[i][j] for i in range(k)) for j in range(k)]

    def weight(i: int, j: int) -> float:
        if weights is None:
            return 0.0 if i == j else 1.0
        if weights == "quadratic":
            return (i - j) ** 2 / (k - 1) ** 2
        if weights == "linear":
            return abs(i - j) / (k - 1)
        raise ValueError(f"weights: {weights!r}")

    observed = sum(weight(i, j) * table[i][j] for i in range(k) for j in range(k)) / n
    expected = sum(weight(i, j) * rows[i] * cols[j] for i in range(k) for j in range(k)) / n**2
    if expected == 0:
        return None
    return 1.0 - observed / expected


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None when undefined."""
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


@dataclass
class QuestionAgreement:
    n: int
    agreement: float | None
    kappa: float | None


@dataclass
class Agreement:
    """How the judge's ratings compare with people's on the same examples."""

    n: int
    exact: float | None
    within_one: float | None
    kappa: float | None
    kappa_quadratic: float | None
    confusion: list[list[int]]  # rows: person A..D, columns: judge A..D
    questions: dict[str, QuestionAgreement]
    human_mean: float | None = None
    judge_mean: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "exact": self.exact,
            "within_one": self.within_one,
            "kappa": self.kappa,
            "kappa_quadratic": self.kappa_quadratic,
            "confusion": self.confusion,
            "questions": {q: vars(a) for q, a in self.questions.items()},
            "human_mean": self.human_mean,
            "judge_mean": self.judge_mean,
        }


def agreement(
    pairs: Iterable[tuple[dict[str, Any], dict[str, Any]]],
) -> Agreement:
    """Agreement between (person, judge) records: ratings and the three yes/no questions.

    Ratings are compared where both gave one (n); each question where both answered it.
    """
    rated: list[tuple[str, str]] = []
    answered: dict[str, list[tuple[bool, bool]]] = {q: [] for q in QUESTIONS}
    for human, judged in pairs:
        h, j = normalize_rating(human.get("rating")), normalize_rating(judged.get("rating"))
        if h is not None and j is not None:
            rated.append((h, j))
        for q in QUESTIONS:
            if isinstance(human.get(q), bool) and isinstance(judged.get(q), bool):
                answered[q].append((human[q], judged[q]))
    n = len(rated)
    rank = {r: i for i, r in enumerate(RATING_ORDER)}
    confusion = [[0] * 4 for _ in range(4)]
    for h, j in rated:
        confusion[rank[h]][rank[j]] += 1
    questions = {
        q: QuestionAgreement(
            n=len(p),
            agreement=sum(a == b for a, b in p) / len(p) if p else None,
            kappa=cohen_kappa(p, (True, False)),
        )
        for q, p in answered.items()
    }
    return Agreement(
        n=n,
        exact=sum(h == j for h, j in rated) / n if n else None,
        within_one=sum(abs(rank[h] - rank[j]) <= 1 for h, j in rated) / n if n else None,
        kappa=cohen_kappa(rated),
        kappa_quadratic=cohen_kappa(rated, weights="quadratic"),
        confusion=confusion,
        questions=questions,
        human_mean=sum(RATING_SCORE[h] for h, _ in rated) / n if n else None,
        judge_mean=sum(RATING_SCORE[j] for _, j in rated) / n if n else None,
    )
