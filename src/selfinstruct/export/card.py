"""The dataset card: YAML metadata the Hub and `datasets` read, and a body that says how the data
was made, from the run's own record (run.json), so that nothing in it is guessed."""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from selfinstruct.export.tables import CONFIGS, ColumnType, Table
from selfinstruct.steps.instances import paper_sampling

PAPER_CITATION = """\
@inproceedings{wang2023selfinstruct,
  title     = {Self-Instruct: Aligning Language Models with Self-Generated Instructions},
  author    = {Wang, Yizhong and Kordi, Yeganeh and Mishra, Swaroop and Liu, Alisa and
               Smith, Noah A. and Khashabi, Daniel and Hajishirzi, Hannaneh},
  booktitle = {Proceedings of the 61st Annual Meeting of the Association for Computational
               Linguistics (ACL)},
  year      = {2023},
  url       = {https://arxiv.org/abs/2212.10560}
}"""

_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
# The license ids the Hub knew when this was written; it adds some now and then, so an id not
# listed here is warned about, not refused (the Hub checks the card again on upload).
HUB_LICENSES = frozenset(
    """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
    bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause
    bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0
    cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
    cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1
    eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl
    mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
    llama2 llama3 llama3.1 llama3.2 llama3.3 gemma unknown other
    """.split()
)
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
FIGURE_TITLES = {
    "fig2_verbs": "Root verbs of the instructions and their direct objects (the paper's Figure 2)",
    "fig3_rouge": "Highest ROUGE-L of each instruction to the seeds and to the pool (Figure 3)",
    "fig4_lengths": "Lengths of instructions, inputs and outputs (Figure 4)",
    "fig5_ratings": "Ratings of the examples by the LLM judge and by people",
}
STEP_NAMES = {
    "instructions": "1. instructions",
    "classify": "2. classification",
    "instances": "3. instances",
    "prepare": "4. fine-tuning data",
}


@dataclass
class SeedInfo:
    """Where the run's seed tasks came from, and what may be said about their license."""

    source: str
    license: str
    count: int | None = None
    classification: int | None = None
    examples: list[str] = field(default_factory=list)


@dataclass
class CardInput:
    pretty_name: str
    license: str
    languages: list[str]
    tables: list[Table]
    sizes: dict[str, dict[str, dict[str, int]]]  # config -> split -> num_examples, bytes
    run: dict[str, Any]  # run.json
    seeds: SeedInfo
    figures: list[str] = field(default_factory=list)  # file names under figures/
    calibration: dict[str, Any] | None = None
    config_files: list[str] = field(default_factory=list)
    repo_id: str | None = None
    folder: str | None = None  # where the dataset was written, for the loading example


# --- metadata -------------------------------------------------------------------------------


def size_category(n: int) -> str:
    for limit, name in _SIZES:
        if n < limit:
            return name
    return "1M<n<10M"


def check_language(code: str) -> str:
    if not _LANGUAGE.match(code):
        raise ValueError(code)
    return code


def _features(columns: list[tuple[str, ColumnType]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, kind in columns:
        if isinstance(kind, list):
            out.append({"name": name, "list": _features(kind)})
        else:
            out.append({"name": name, "dtype": kind})
    return out


def _dataset_info(table: Table, sizes: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {
        "config_name": table.config,
        "features": _features(table.columns),
        "splits": [
            {"name": split, "num_bytes": s["num_bytes"], "num_examples": s["num_examples"]}
            for split, s in sizes.items()
        ],
        "download_size": sum(s["file_bytes"] for s in sizes.values()),
        "dataset_size": sum(s["num_bytes"] for s in sizes.values()),
    }


def _config(table: Table) -> dict[str, Any]:
    config: dict[str, Any] = {
        "config_name": table.config,
        "data_files": [
            {"split": split, "path": f"data/{table.config}/{split}-*.parquet"}
            for split in table.splits
        ],
    }
    if table.config == "default":
        config["default"] = True
    return config


def metadata(c: CardInput) -> dict[str, Any]:
    """The card's YAML header, in the Hub's dataset-card vocabulary."""
    examples = next(t for t in c.tables if t.config == "default").rows()
    return {
        "pretty_name": c.pretty_name,
        "license": c.license,
        "language": list(c.languages),
        "multilinguality": "monolingual" if len(c.languages) == 1 else "multilingual",
        "annotations_creators": ["machine-generated"],
        "language_creators": ["machine-generated"],
        "source_datasets": ["original"],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(examples)],
        "tags": ["synthetic", "self-instruct", "instruction-tuning"],
        "configs": [_config(t) for t in c.tables],
        "dataset_info": [_dataset_info(t, c.sizes[t.config]) for t in c.tables],
    }


# --- body -----------------------------------------------------------------------------------


def body(c: CardInput) -> str:
    sections = [
        _summary(c),
        _loading(c),
        _making(c),
        _seed_section(c),
        _funnel(c),
        _usage(c),
        _quality(c),
        _figures(c),
        _limitations(c),
        _repeat(c),
        f"## Citation\n\n```bibtex\n{PAPER_CITATION}\n```\n",
    ]
    return "\n".join(s for s in sections if s)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _md(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _model_name(run: dict[str, Any]) -> str:
    model = run.get("model") or {}
    name = model.get("name")
    if not name:
        return "an unrecorded model"
    return f"`{name}` ({model.get('backend', '?')}, {model.get('api', '?')} API)"


def _summary(c: CardInput) -> str:
    default = next(t for t in c.tables if t.config == "default")
    version = (c.run.get("packages") or {}).get("selfinstruct", "?")
    return (
        f"# {c.pretty_name}\n\n"
        f"{default.rows():,} instruction-following examples (instruction, input, output) made"
        f" with Self-Instruct ([Wang et al., 2022](https://arxiv.org/abs/2212.10560)) by"
        f" {_model_name(c.run)} from {c.seeds.source}, with"
        f" [selfinstruct](https://pypi.org/project/selfinstruct/) {version}. Every text in it"
        " was written by a model; no person checked it (see Limitations).\n"
    )


def _loading(c: CardInput) -> str:
    where = c.repo_id or c.folder or "path/to/this/folder"
    rows = []
    for t in c.tables:
        splits = ", ".join(f"{s}: {c.sizes[t.config][s]['num_examples']:,}" for s in t.splits)
        columns = ", ".join(f"`{name}`" for name, _ in t.columns)
        rows.append([f"`{t.config}`", t.description, splits, columns])
    notes = [
        f"- `{t.config}` leaves out {n:,} {reason.replace('_', ' ')}"
        for t in c.tables
        for reason, n in t.notes.items()
    ]
    present = {t.config for t in c.tables}
    notes += [
        f"- no `{name}` config: the run has no such rows" for name in CONFIGS if name not in present
    ]
    return (
        "## Loading\n\n"
        f'```python\nfrom datasets import load_dataset\n\ntrain = load_dataset("{where}")'
        f'["train"]                  # the training examples\n'
        f'pool = load_dataset("{where}", "instructions")["train"]  # step 1\'s pool\n```\n\n'
        + _table(["config", "what", "rows", "columns"], rows)
        + ("\n" + "\n".join(notes) + "\n" if notes else "")
        + "\nThe `test` split, where there is one, holds whole tasks: no instruction is in both"
        " splits.\n"
    )


def _sampling_rows(run: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for step, title in STEP_NAMES.items():
        config = (run.get("config") or {}).get(step) or {}
        s = config.get("sampling")
        if step == "instances" and config:
            # Step 3's sampling is the paper's, fixed: 300 tokens for a batch holding a
            # classification task, else 350.
            s = dataclasses.asdict(paper_sampling(350, config.get("max_instances_to_generate", 5)))
            s["max_tokens"] = "300 or 350"
        if not isinstance(s, dict):
            continue
        stop = ", ".join(repr(x) for x in s.get("stop") or []) or None
        rows.append(
            [title, s.get("temperature"), s.get("top_p"), s.get("max_tokens"),
             s.get("presence_penalty"), s.get("frequency_penalty"), stop]
        )  # fmt: skip
    return rows


def _making(c: CardInput) -> str:
    model = c.run.get("model") or {}
    details = ", ".join(
        f"{k}: `{v}`" for k, v in model.items() if k not in ("name", "backend", "api")
    )
    text = f"## How it was made\n\nModel: {_model_name(c.run)}"
    text += f" ({details}).\n" if details else ".\n"
    if "seed" in c.run:
        text += f"Random seed: {c.run['seed']}.\n"
    threshold = ((c.run.get("config") or {}).get("instructions") or {}).get("similarity_threshold")
    if threshold is not None:
        text += (
            f"A new instruction was kept only if its ROUGE-L F1 to every instruction already in"
            f" the pool was at most {threshold}.\n"
        )
    rows = _sampling_rows(c.run)
    if rows:
        headers = ["step", "temperature", "top_p", "max_tokens", "presence", "frequency", "stop"]
        text += "\nSampling:\n\n" + _table(headers, rows)
    return text


def _seed_section(c: CardInput) -> str:
    s = c.seeds
    text = f"## Seed tasks\n\nFrom {s.source}"
    if s.count is not None:
        text += f": {s.count:,} tasks, {s.classification or 0:,} of them classification tasks"
    text += f". License of the seed tasks: {s.license}\n"
    if s.examples:
        text += "\nA few of them:\n\n" + "".join(f"- {_md(e)}\n" for e in s.examples)
    return text


def _dropped(step: dict[str, Any]) -> str:
    dropped = {k: v for k, v in (step.get("dropped") or {}).items() if v}
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1]))


def _funnel(c: CardInput) -> str:
    steps = c.run.get("steps") or {}
    if not steps:
        return "## From seed tasks to examples\n\nThe run folder has no run.json: no counts.\n"
    counts = {name: (steps.get(name) or {}).get("counts") or {} for name in STEP_NAMES}
    dropped_1 = sum((steps.get("instructions") or {}).get("dropped", {}).values())
    kept_1 = counts["instructions"].get("instructions_in_file")
    rows = [
        ["seed tasks", None, c.seeds.count, None],
        [
            STEP_NAMES["instructions"],
            None if kept_1 is None else kept_1 + dropped_1,
            kept_1,
            _dropped(steps.get("instructions") or {}),
        ],
        [
            STEP_NAMES["classify"],
            counts["classify"].get("instructions"),
            counts["classify"].get("labelled_in_file"),
            _clf_answers(counts["classify"]) or _dropped(steps.get("classify") or {}),
        ],
        [
            STEP_NAMES["instances"],
            counts["instances"].get("tasks"),
            counts["instances"].get("in_file"),
            _dropped(steps.get("instances") or {}),
        ],
        [
            STEP_NAMES["prepare"],
            counts["prepare"].get("tasks_read"),
            counts["prepare"].get("generated_instances"),
            _dropped(steps.get("prepare") or {}),
        ],
    ]
    return (
        "## From seed tasks to examples\n\nCounts from the run's `run.json` (step 1: candidates"
        " in, instructions kept; step 2: instructions labelled; step 3: tasks answered; step 4:"
        " tasks read, examples kept).\n\n" + _table(["step", "in", "out", "dropped or notes"], rows)
    )


def _clf_answers(counts: dict[str, Any]) -> str:
    if "yes" not in counts:
        return ""
    return (
        f"classification: {counts['yes']:,}; not: {counts.get('no', 0):,};"
        f" unclear answer (read as not): {counts.get('neither', 0):,}"
    )


def _usage(c: CardInput) -> str:
    steps = c.run.get("steps") or {}
    rows = []
    for name, title in STEP_NAMES.items():
        usage = (steps.get(name) or {}).get("usage") or {}
        if usage.get("requests"):
            rows.append(
                [title, usage["requests"], usage.get("prompt_tokens"),
                 usage.get("completion_tokens")]
            )  # fmt: skip
    total = c.run.get("usage") or {}
    if not rows:
        return ""
    rows.append(
        ["all", total.get("requests"), total.get("prompt_tokens"), total.get("completion_tokens")]
    )
    text = "## Tokens and cost\n\n" + _table(
        ["step", "requests", "prompt tokens", "completion tokens"], rows
    )
    price = c.run.get("price_per_million_tokens")
    if "cost_usd" in c.run and price:
        text += (
            f"\nCost: ${c.run['cost_usd']:,.4f} at ${price['prompt']} (prompt) and"
            f" ${price['completion']} (completion) per million tokens.\n"
        )
    else:
        text += "\nNo price was given to the run, so no cost is recorded.\n"
    return text


def _quality(c: CardInput) -> str:
    prepare = (c.run.get("config") or {}).get("prepare") or {}
    dropped = ((c.run.get("steps") or {}).get("prepare") or {}).get("dropped") or {}
    text = "## Decontamination and ratings\n\n"
    sets = prepare.get("decontaminate")
    if sets:
        names = ", ".join(f"`{str(p).rsplit('/', 1)[-1]}`" for p in sets)
        hits = {k: v for k, v in dropped.items() if "decontaminated" in k}
        text += (
            f"Examples sharing a 13-gram with an item of {names}, or whose instruction has a"
            f" ROUGE-L above 0.7 to one, were dropped: "
            + (", ".join(f"{k}: {v:,}" for k, v in sorted(hits.items())) or "none matched")
            + ".\n"
        )
    else:
        text += "The examples were not checked against any evaluation set (no decontamination).\n"
    return text + _ratings(c, prepare, dropped)


def _ratings(c: CardInput, prepare: dict[str, Any], dropped: dict[str, Any]) -> str:
    default = next(t for t in c.tables if t.config == "default")
    if not any(name == "rating" for name, _ in default.columns):
        return "\nNo LLM judge rated the examples.\n"
    counts: dict[str, int] = {}
    for rows in default.splits.values():
        for r in rows:
            key = r.get("rating") or "unrated"
            counts[key] = counts.get(key, 0) + 1
    judge = ((c.run.get("config") or {}).get("judge") or {}).get("model")
    text = (
        f"\nAn LLM judge{f' ({judge})' if judge else ''} rated the examples with the paper's"
        " rubric (A valid and satisfying, B acceptable with minor imperfections, C relevant with"
        " significant errors, D invalid); the `rating` column holds its grade:\n\n"
        + _table(["rating", "examples"], [[k, counts[k]] for k in sorted(counts)])
    )
    if prepare.get("min_rating"):
        below = sum(v for k, v in dropped.items() if k.startswith(("rating_below", "unrated")))
        text += f"\nExamples rated below {prepare['min_rating']} were dropped ({below:,}).\n"
    if c.calibration:
        text += "\nThe judge's agreement with people (`judge --calibrate`):\n\n" + _table(
            ["measure", "value"],
            [[k, v] for k, v in _flat_numbers(c.calibration).items()][:12],
        )
    return text


def _flat_numbers(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_numbers(value, name + "."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


def _figures(c: CardInput) -> str:
    if not c.figures:
        return ""
    parts = ["## Figures\n"]
    for name in c.figures:
        stem = name.rsplit(".", 1)[0]
        title = FIGURE_TITLES.get(stem, stem)
        parts.append(f"**{title}**\n\n![{title}](figures/{name})\n")
    return "\n".join(parts)


def _limitations(c: CardInput) -> str:
    return (
        "## Limitations\n\n"
        f"- Every instruction, input and output was written by {_model_name(c.run)}; none was"
        " checked by a person. In the paper's own audit of 200 GPT-3 examples, 92% of the"
        " instructions described a valid task but only 54% of the examples were right in every"
        " field. Expect wrong outputs, especially for arithmetic, code and facts.\n"
        "- The data inherits the model's biases and the topics of the seed tasks; the ROUGE-L"
        " filter removes near-duplicate wording, not repeated ideas.\n"
        "- The model's provider may restrict what its outputs can be used for (for example,"
        " training competing models): check its terms before you train on or share this data.\n"
        f"- Language: {', '.join(c.languages)}.\n"
    )


def _repeat(c: CardInput) -> str:
    # Only a run made from the command line has a command to show (a Pipeline's argv is its
    # host program's).
    from_cli = any(
        (s or {}).get("last_command", "python") != "python"
        for s in (c.run.get("steps") or {}).values()
    )
    argv = c.run.get("argv") if from_cli else None
    text = "## Repeat the run\n\n"
    if c.config_files:
        text += (
            "The run's record is included: "
            + ", ".join(f"`{name}`" for name in c.config_files)
            + " (settings of every step, model, seed, package versions, counts; never a key).\n"
        )
    if argv:
        text += (
            "\nThe last command of the run (API keys are never recorded):\n\n```bash\n"
            f"selfinstruct {' '.join(shlex.quote(str(a)) for a in argv)}\n```\n"
        )
    return text
