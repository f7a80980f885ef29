"""The report's page: one self-contained HTML file made from stats.json's numbers and the
figures."""

from __future__ import annotations

import base64
import html
from typing import Any

from selfinstruct.judge.rubric import QUESTION_TEXT, RATING_MEANING
from selfinstruct.judge.rubric import RATING_ORDER as RATINGS
from selfinstruct.report.analysis import TOP_NOUNS, share
from selfinstruct.report.figures import Figures

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:1.2em 1.6em 4em;background:#fff}
h1{margin:.2em 0 .1em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
.samples td{white-space:pre-wrap;word-break:break-word;max-width:28em}
.note{color:#555;font-size:.92em}nav a{margin-right:1em}code{background:#f3f3f3;padding:0 .2em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer():
            return f"{int(value):,}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "\u2013" if value is None else f"{100 * value:.1f}%"


def _table(headers: list[str], rows: list[list[Any]], *, cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, int | float) and not isinstance(cell, bool)
            text = _fmt(cell)
            cells.append(f'<td class="n">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{_e(cls)}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(figs: Figures, name: str, alt: str) -> str:
    if name not in figs.png_data:
        return ""
    data = base64.b64encode(figs.png_data[name]).decode("ascii")
    png, svg = figs.saved[name]
    return (
        f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
        f'<p class="note">Files: <a href="{_e(png.name)}">{_e(png.name)}</a>, '
        f'<a href="{_e(svg.name)}">{_e(svg.name)}</a></p>'
    )


# The figures in the order the page shows them: (file name, caption).
FIGURES = (
    ("fig2_verbs", "Root verbs and their direct noun objects (the paper's Figure 2)"),
    ("fig3_rouge", "Highest ROUGE-L of each instruction to the seed tasks and to the pool"
     " (the paper's Figure 3)"),
    ("fig4_lengths", "Lengths of instructions, inputs and outputs (the paper's Figure 4)"),
    ("fig5_ratings", "Ratings and the share of yes to each question"),
)  # fmt: skip

# The steps of run.json in the method's order: (name, what its output counts, the file count
# that holds it).
_FUNNEL_STEPS = (
    ("instructions", "instructions kept (step 1)", "instructions"),
    ("classify", "instructions labelled (step 2)", "labelled"),
    ("instances", "tasks with instances (step 3)", "tasks_with_instances"),
    ("prepare", "training examples (step 4)", "examples"),
)


def _funnel_section(s: dict[str, Any]) -> list[str]:
    """Seed tasks, then what each step kept and what it dropped, by reason."""
    rows: list[list[Any]] = [["seed tasks", s["rouge"]["seed_tasks"], ""]]
    steps = s.get("steps_run_json") or {}
    found = {k: v for counts in s["file_counts"].values() for k, v in counts.items()}
    for step, what, key in _FUNNEL_STEPS:
        if key not in found and step not in steps:
            continue
        dropped = dict((steps.get(step) or {}).get("dropped") or {})
        if step == "instructions" and not dropped and s.get("rejected"):
            dropped = s["rejected"]["reasons"]  # no run.json: the rejected file says why
        drops = ", ".join(f"{_label(k)} {_fmt(v)}" for k, v in dropped.items() if v)
        rows.append([what, found.get(key, "\u2013"), drops or "none counted"])
    return [
        '<h2 id="funnel">From the seed tasks to the training examples</h2>',
        _table(["stage", "count", "dropped on the way (by reason)"], rows),
        '<p class="note">Counts from the files; drops from <code>run.json</code>, added up'
        " over every invocation of a step (the rejected candidates' file where there is no"
        " <code>run.json</code>).</p>",
    ]


def _figures_section(figs: Figures) -> list[str]:
    shown = [(name, caption) for name, caption in FIGURES if name in figs.png_data]
    if not shown:
        return []
    parts = ['<h2 id="figures">Figures</h2>']
    for name, caption in shown:
        parts += [f"<h3>{_e(caption)}</h3>", _img(figs, name, caption)]
    return parts


def _label(key: str) -> str:
    return key.replace("_", " ")


def render(stats: dict[str, Any], figs: Figures, samples: list[dict[str, Any]]) -> str:
    # The first screen: where the data came from and where it went, then every figure; the
    # tables that hold the figures' numbers follow.
    parts = [
        *_header(stats),
        *_funnel_section(stats),
        *_figures_section(figs),
        *_counts_section(stats),
        *_table1_section(stats["table1"]),
        *_verbs_section(stats),
        *_rouge_section(stats["rouge"]),
        *_lengths_section(stats["lengths"]),
        *_ratings_section(stats.get("ratings")),
        *_rejected_section(stats.get("rejected")),
        *_samples_section(samples, stats["seed"]),
    ]
    body = "\n".join(p for p in parts if p)
    title = _e(f"selfinstruct report: {stats['run']['name']}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{title}</title><style>{_CSS}</style></head>"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def _nav_sections(s: dict[str, Any]) -> list[tuple[str, str]]:
    sections = [
        ("funnel", "Seeds to examples"),
        ("figures", "Figures"),
        ("counts", "Counts per step"),
        ("table1", "Statistics"),
        ("verbs", "Verbs and objects"),
        ("rouge", "Similarity"),
        ("lengths", "Lengths"),
    ]
    if s.get("ratings"):
        sections.append(("ratings", "Ratings"))
    if s.get("rejected") is not None:
        sections.append(("rejected", "Rejected"))
    sections.append(("samples", "Samples"))
    return sections


def _header(s: dict[str, Any]) -> list[str]:
    """The title, the run's folder, model and date, the links to the sections, the warnings."""
    meta = [f"run folder <code>{_e(s['run']['path'])}</code>"]
    model = s["run"].get("model")
    if model:
        meta.append(f"model <code>{_e(model)}</code>")
    meta.append(f"report written {_e(s['generated_at'])}")
    links = "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in _nav_sections(s))
    return [
        f"<h1>Self-Instruct run report: {_e(s['run']['name'])}</h1>",
        '<p class="meta">' + " \u00b7 ".join(meta) + "</p>",
        f"<nav>{links}</nav>",
        *[f'<p class="note">Warning: {_e(w)}</p>' for w in s["warnings"]],
    ]


def _counts_section(s: dict[str, Any]) -> list[str]:
    parts = ['<h2 id="counts">Counts per step</h2>']
    steps = s.get("steps_run_json")
    if steps:
        parts += _run_json_counts(steps, s["run"])
    else:
        parts.append(
            '<p class="note">No <code>run.json</code>: the counts below come from the files.</p>'
        )
    if s.get("forecast_beside_actual"):
        parts.append("<h3>Forecast beside actual</h3>")
        head = ["what", "forecast (selfinstruct estimate)", "actual (run.json)"]
        parts.append(_table(head, s["forecast_beside_actual"]))
    parts.append("<h3>In the files</h3>")
    rows = [[f, _label(k), v] for f, c in s["file_counts"].items() for k, v in c.items()]
    parts.append(_table(["file", "what", "count"], rows))
    return parts


def _run_json_counts(steps: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """One table per step of run.json, then one of the whole run's usage."""
    parts = ["<p>From <code>run.json</code> (counts of the last invocation of each step; drops"
             " and token usage added up over all invocations).</p>"]  # fmt: skip
    for name, step in steps.items():
        rows: list[list[Any]] = [[_label(k), v] for k, v in step["counts"].items()]
        rows += [[f"dropped: {_label(k)}", v] for k, v in step["dropped"].items()]
        rows += [[f"usage: {_label(k)}", v] for k, v in step["usage"].items()]
        if step.get("complete") is not None:
            rows.append(["complete", step["complete"]])
        parts.append(f"<h3>{_e(name)}</h3>" + _table(["what", "count"], rows))
    usage = run.get("usage")
    if usage:
        rows = [[_label(k), v] for k, v in usage.items()]
        if run.get("cost_usd") is not None:
            rows.append(["cost (USD)", run["cost_usd"]])
        parts.append("<h3>whole run</h3>" + _table(["what", "count"], rows))
    return parts


def _table1_section(t: dict[str, Any]) -> list[str]:
    rows = [["instructions", t["instructions"]]]
    if "labelled_instructions" in t:
        rows += [
            ["\u2003classification instructions", t["classification_instructions"]],
            ["\u2003non-classification instructions", t["non_classification_instructions"]],
            ["\u2003share of classification tasks", _pct(t["classification_share"])],
        ]
        if t["labelled_instructions"] != t["instructions"]:
            rows.append(["\u2003instructions with a step-2 label", t["labelled_instructions"]])
    if "instances" in t:
        rows += [
            ["instances", t["instances"]],
            ["\u2003instances with empty input", t["instances_with_empty_input"]],
        ]
    for key, what in (
        ("avg_instruction_words", "average instruction length (words)"),
        ("avg_nonempty_input_words", "average non-empty input length (words)"),
        ("avg_output_words", "average output length (words)"),
    ):
        if key in t:
            rows.append([what, round(t[key], 1)])
    parts = ['<h2 id="table1">Statistics (the paper\'s Table 1)</h2>']
    parts.append(_table(["statistic", "value"], rows))
    if "labelled_instructions" not in t:
        parts.append(
            '<p class="note">No step-2 file: the share of classification tasks is unknown.</p>'
        )
    return parts


def _verbs_section(s: dict[str, Any]) -> list[str]:
    v, note = s["verbs"], s["verbs_method_note"]
    parts = [
        '<h2 id="verbs">Root verbs and their direct noun objects (the paper\'s Figure 2)</h2>',
        f"<p>{_fmt(v['with_verb_noun'])} of {_fmt(v['instructions'])} instructions"
        f" (<b>{_pct(v['share'])}</b>) have a root verb with a direct noun object;"
        f" {_fmt(v['distinct_verbs'])} distinct verbs, {_fmt(v['distinct_pairs'])} distinct"
        f" verb\u2013object pairs.</p>",
        f'<p class="note">Method: <code>{_e(v["method"])}</code>. {_e(note)}</p>',
    ]
    if v["top"]:
        rows = [
            [
                x["verb"],
                x["count"],
                ", ".join(f"{o['noun']} ({o['count']:,})" for o in x["objects"]),
            ]
            for x in v["top"]
        ]
        parts.append(_table(["verb", "instructions", f"top {TOP_NOUNS} objects"], rows))
    return parts


def _rouge_section(r: dict[str, Any]) -> list[str]:
    parts = [
        '<h2 id="rouge">ROUGE-L to the seed tasks and to the pool (the paper\'s Figure 3)</h2>',
        f"<p>Highest ROUGE-L F1 of each instruction to the {_fmt(r['seed_tasks'])} seed tasks"
        f" ({_e(r['seed_source'])}), and to the seed tasks plus the instructions accepted"
        " before it (the best score in step 1's <code>most_similar</code>)."
        f" Dashed line: the step-1 threshold {_fmt(r['threshold'])}.</p>",
    ]
    if r["pool_lacking_most_similar"]:
        parts.append(_pool_note(r["pool_lacking_most_similar"], r["pool_computed"]))
    rows = [
        [what, *[r[key][k] for k in ("mean", "median", "p90", "max")]]
        for what, key in (
            ("to the seed tasks", "to_seeds"),
            ("to seeds and earlier pool", "to_pool"),
        )
        if r[key]
    ]
    if rows:
        parts.append(_table(["highest ROUGE-L", "mean", "median", "90th pct", "max"], rows))
    return parts


def _pool_note(lacking: int, computed: int) -> str:
    """How the score to the pool was found for the instructions without ``most_similar``."""
    how = (
        "computed here for all of them"
        if computed == lacking
        else f"computed here for a random sample of {_fmt(computed)} of them only, and the"
        " right-hand histogram counts that sample in their place"
    )
    return (
        f'<p class="note">{_fmt(lacking)} instructions have no <code>most_similar</code>:'
        f" their score to the pool was {how}.</p>"
    )


def _lengths_section(ln: dict[str, Any]) -> list[str]:
    rows = [
        [_label(k), x["n"], x["mean"], x["median"], x["p90"], x["max"]]
        for k, x in ln.items()
        if x is not None
    ]
    return [
        '<h2 id="lengths">Lengths of instructions, inputs and outputs (the paper\'s Figure 4)</h2>',
        _table(["words in", "n", "mean", "median", "90th pct", "max"], rows),
    ]


def _ratings_section(sources: dict[str, Any] | None) -> list[str]:
    if not sources:
        return []
    return ['<h2 id="ratings">Ratings</h2>', _ratings_table(sources), _questions_table(sources)]


def _ratings_table(sources: dict[str, Any]) -> str:
    """Count and share of each rating per source (judge, person), then the unrated ones."""
    names = list(sources)
    rows = []
    for g in RATINGS:
        row: list[Any] = [f"{g}: {RATING_MEANING[g]}"]
        for n in names:
            row.append(f"{sources[n]['counts'][g]:,} ({_pct(sources[n]['shares'][g])})")
        rows.append(row)
    rows.append(["rated", *[sources[n]["rated"] for n in names]])
    rows.append(["not rated (null)", *[sources[n]["unrated"] for n in names]])
    if any(sources[n]["invalid_rating"] for n in names):
        rows.append(["rating not A\u2013D", *[sources[n]["invalid_rating"] for n in names]])
    if any("still_in_data" in sources[n] for n in names):
        rows.append(["examples still in step 4", *[sources[n].get("still_in_data") for n in names]])
    return _table(["rating", *names], rows)


def _questions_table(sources: dict[str, Any]) -> str:
    """The share of yes to each question per source."""
    names = list(sources)
    rows = []
    for q, text in [*QUESTION_TEXT.items(), ("all_fields_valid", "All three fields valid")]:
        row = [text]
        for n in names:
            a = sources[n]["questions"].get(q) or sources[n].get(q)
            row.append(f"{_pct(a['share_yes'])} of {a['answered']:,}" if a else "\u2013")
        rows.append(row)
    return _table(["question (share of yes)", *names], rows)


def _rejected_section(rej: dict[str, Any] | None) -> list[str]:
    if rej is None:
        return []
    rows = [[_label(k), n, _pct(share(n, rej["total"]))] for k, n in rej["reasons"].items()]
    return [
        '<h2 id="rejected">Rejected step-1 candidates</h2>',
        f"<p>{_fmt(rej['total'])} candidates rejected.</p>",
        _table(["reason", "candidates", "share"], rows),
    ]


def _samples_section(samples: list[dict[str, Any]], seed: int) -> list[str]:
    parts = ['<h2 id="samples">Sample of examples</h2>']
    if not samples:
        return [*parts, '<p class="note">No examples to show.</p>']
    rows = [[x.get("instruction", ""), x.get("input", ""), x.get("output", "")] for x in samples]
    return [
        *parts,
        f'<p class="note">{len(samples)} examples drawn at random (seed {seed}).</p>',
        _table(["instruction", "input", "output"], rows, cls="samples"),
    ]
