"""An LLM judge for step 4's examples, with the paper's rubric, and its calibration against people.

The Self-Instruct paper judged data in two ways: a quality review of generated examples (does
the instruction describe a valid task, is the input appropriate, is the output a correct and
acceptable response: Table 2) and a four-level rating of responses in its human evaluation
(A: valid and satisfying, B: acceptable with minor errors or imperfections, C: relevant but with
significant errors, D: irrelevant or completely invalid: Section 4.4). `judge_run` asks a model
the three questions and the rating for every (instruction, input, output) of step 4's
`all_generated_instances.jsonl`, through the engine (concurrency, retries, budgets), and appends
one line per example to the run folder's `judgments.jsonl` as answers arrive. A rerun skips the
examples this model has already rated; an answer that cannot be read is counted by reason and
left unrated, so the next run asks again, up to a set number of times an example.

`calibrate` measures the judge before anyone filters with it: against ratings people gave on the
review page (`reviews.jsonl`), a file of rated examples, and the paper's own human evaluation of
eight models on its 252 user-oriented instructions (Figure 6), whose predictions the release
ships. `load_ratings` and `meets` are what a filter needs; `rubric.py` holds the levels and
questions that the judge, the review page and the report share. The ratings are read by
`RunFolder.judgments()` and `RunFolder.reviews()`.
"""

from __future__ import annotations

from selfinstruct.judge.agreement import Agreement, agreement, cohen_kappa, spearman
from selfinstruct.judge.calibration import (
    PAPER_FIGURE6,
    PAPER_SOURCE,
    CalibrationPlan,
    CalibrationReport,
    CalibrationSettings,
    calibrate,
    calibration_line,
    default_predictions_dir,
    plan_calibration,
)
from selfinstruct.judge.rate import (
    JudgeSettings,
    find_judge,
    judge_run,
    judges_of,
    load_ratings,
    model_id,
)
from selfinstruct.judge.rubric import (
    QUESTION_TEXT,
    QUESTIONS,
    RATING_GUIDE,
    RATING_MEANING,
    RATING_ORDER,
    RATING_SCORE,
    meets,
    normalize_rating,
)
from selfinstruct.judge.verdict import Verdict, judge_prompt, parse_verdict

__all__ = [
    "PAPER_FIGURE6",
    "PAPER_SOURCE",
    "QUESTIONS",
    "QUESTION_TEXT",
    "RATING_GUIDE",
    "RATING_MEANING",
    "RATING_ORDER",
    "RATING_SCORE",
    "Agreement",
    "CalibrationPlan",
    "CalibrationReport",
    "CalibrationSettings",
    "JudgeSettings",
    "Verdict",
    "agreement",
    "calibrate",
    "calibration_line",
    "cohen_kappa",
    "default_predictions_dir",
    "judge_prompt",
    "find_judge",
    "judge_run",
    "judges_of",
    "load_ratings",
    "meets",
    "model_id",
    "normalize_rating",
    "parse_verdict",
    "plan_calibration",
    "spearman",
]
