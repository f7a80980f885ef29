"""The run report: HTML, figures and numbers from a small run folder in the release's format;
the verb/object heuristic on real instruction shapes; bad input through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from selfinstruct.errors import DataFileError
from selfinstruct.records import example_key
from selfinstruct.report import build_report
from selfinstruct.runfolder import RunFolder
from selfinstruct.verbs import heuristic_verb_noun, installed_spacy_models, singular

EVIL = "Explain the <script>alert('x')</script> tag & its risks."

INSTRUCTIONS = [
    "Write a short story about a dragon who learns to fly.",
    "Generate a list of healthy snacks for children.",
    "Given a list of numbers, find the median value.",
    "Classify the sentiment of the following tweet as positive or negative.",
    "Write a Python function that reverses a string.",
    "Give me three examples of renewable energy sources.",
    "What is the capital of France?",
    "Translate the sentence into French.",
    "Write a haiku about autumn leaves falling.",
    "Sort the given numbers in ascending order.",
    EVIL,
]
CLF = {INSTRUCTIONS[3], INSTRUCTIONS[7]}


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def make_run(path: Path, *, run_json: bool = True) -> RunFolder:
    """A run folder written in the release's format, every step present."""
    rf = RunFolder(path)
    records = []
    for i, text in enumerate(INSTRUCTIONS):
        most = {"Tell me a joke about cats.": round(0.1 + 0.05 * i, 4)} if i % 4 else {}
        records.append(
            {
                "instruction": text,
                "most_similar": most,
                "avg_similarity_score": 0.05,
                "metadata": {"prompt": "...", "response": {"choices": [{"text": "..."}]}},
                "request_idx": i,
            }
        )
    _jsonl(rf.instructions, records)
    _jsonl(
        rf.classification_file_for("scripted"),
        [
            {"instruction": t, "is_classification": " Yes" if t in CLF else " No"}
            for t in INSTRUCTIONS
        ],
    )
    _jsonl(
        rf.instances,
        [
            {
                "instruction": t,
                "raw_instances": "Input: x\nOutput: y",
                "instance_metadata": {},
                "instruction_metadata": {},
                "most_similar": {},
                "avg_similarity_score": 0.0,
            }
            for t in INSTRUCTIONS
        ],
    )
    examples = []
    for i, t in enumerate(INSTRUCTIONS):
        examples.append({"instruction": t, "input": "" if i % 3 == 0 else f"input number {i}",
                         "output": "an output of several words " * (1 + i % 4)})  # fmt: skip
    examples.append({"instruction": INSTRUCTIONS[0], "input": "", "output": "Once upon a time."})
    _jsonl(rf.all_instances, examples)
    _jsonl(
        rf.rejected,
        [
            {"instruction": "Draw a map of France.", "reason": "image_words"},
            {"instruction": "Write a program to sort.", "reason": "write_a_program"},
            {"instruction": "Draw a graph.", "reason": "image_words"},
        ],
    )
    keys = [example_key(e["instruction"], e["input"], e["output"]) for e in examples]
    _jsonl(
        rf.judgments_file,
        [{"key": k, "rating": r} for k, r in zip(keys[:4], "AABD", strict=True)],
    )
    _jsonl(
        rf.reviews_file,
        [
            {"key": keys[0], "rating": "C", "valid_instruction": False, "input_fits": None,
             "output_correct": None},
            {"key": keys[0], "rating": "A", "valid_instruction": True, "input_fits": True,
             "output_correct": True},  # the last line of a key wins
            {"key": keys[1], "rating": "B", "valid_instruction": True, "input_fits": True,
             "output_correct": False},
            {"key": keys[2], "rating": None, "valid_instruction": True, "input_fits": None,
             "output_correct": None},
        ],
    )  # fmt: skip
    if run_json:
        rf.run_file.write_text(
            json.dumps(
                {
                    "model": {"backend": "scripted", "name": "scripted", "api": "completions"},
                    "config": {"instructions": {"similarity_threshold": 0.7}},
                    "steps": {
                        "instructions": {
                            "counts": {"instructions_in_file": 11, "accepted_now": 7},
                            "dropped": {"too_similar": 4321, "image_words": 2},
                            "usage": {"requests": 9, "prompt_tokens": 1000},
                            "complete": True,
                        },
                        "prepare": {"counts": {"finetuning_examples": 12}, "dropped": {}},
                    },
                    "usage": {"requests": 9, "prompt_tokens": 1000, "completion_tokens": 50},
                }
            ),
            encoding="utf-8",
        )
    return rf


# ---- the report ----------------------------------------------------------------------------


# stats.json of `make_run`'s folder as report.py wrote it before it became the report/ package
# (commit bf068ed, heuristic parse, seed 0), its path and time left out.
STATS_BEFORE_SPLIT = Path(__file__).parent / "data" / "report_stats_before_split.json"


def test_stats_are_those_the_report_wrote_before_the_split(tmp_path: Path) -> None:
    result = build_report(make_run(tmp_path / "run"), parser="heuristic", seed=0)
    stats = json.loads(result.stats_file.read_text(encoding="utf-8"))
    assert stats["run"].pop("path") == str(tmp_path / "run")
    stats["run"]["path"] = "RUN"
    stats["generated_at"] = "WHEN"
    assert stats == json.loads(STATS_BEFORE_SPLIT.read_text(encoding="utf-8"))


def test_the_first_screen_is_the_funnel_then_the_figures(tmp_path: Path) -> None:
    result = build_report(make_run(tmp_path / "run"), parser="heuristic", seed=0)
    page = result.html.read_text(encoding="utf-8")
    order = [page.index(f'<h2 id="{k}">') for k in ("funnel", "figures", "counts", "table1")]
    assert order == sorted(order)
    funnel = page[order[0] : order[1]]
    assert 'seed tasks</td><td class="n">175' in funnel  # the built-in seeds
    assert "too similar 4,321" in funnel  # step 1's drops from run.json, by reason
    assert funnel.index("instructions kept (step 1)") < funnel.index("training examples (step 4)")
    figures = page[order[1] : order[2]]
    assert figures.count("<img ") == len(result.figures) == 4
    assert "<img " not in page[order[2] :]  # each figure once, above the tables


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    rf = make_run(tmp_path_factory.mktemp("run") / "run1")
    messages: list[str] = []
    result = build_report(rf, sample_rows=50, seed=3, progress=messages.append)
    return rf, result, result.html.read_text("utf-8"), messages


def test_report_files_exist(built) -> None:
    rf, result, page, messages = built
    assert result.out_dir == rf.report_dir
    assert result.html == rf.report_dir / "report.html"
    assert set(result.figures) == {"fig2_verbs", "fig3_rouge", "fig4_lengths", "fig5_ratings"}
    for png, svg in result.figures.values():
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert b"<svg" in svg.read_bytes()[:2000]
    assert json.loads(result.stats_file.read_text("utf-8"))["table1"]["instructions"] == 11
    assert any(m.startswith("wrote ") for m in messages)


def test_report_is_self_contained(built) -> None:
    _, result, page, _ = built
    # No script, no stylesheet link, and every src/href is embedded data or a local file.
    assert "<script" not in page.replace("&lt;script", "")
    assert "<link" not in page
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert refs, "the page should embed images"
    for ref in refs:
        assert not re.match(r"(?i)(https?:)?//", ref), ref
    assert not re.search(r"(?i)url\(\s*['\"]?(https?:)?//", page)
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == len(result.figures)
    assert all(src.startswith("data:image/png;base64,") for src in images)


def test_report_escapes_user_text(built) -> None:
    _, _, page, _ = built
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "tag &amp; its risks" in page


def test_report_counts(built) -> None:
    _, result, page, _ = built
    s = result.stats
    # From run.json: counts and drops per step.
    assert s["steps_run_json"]["instructions"]["dropped"]["too_similar"] == 4321
    assert "4,321" in page and "too similar" in page
    # From the files.
    t = s["table1"]
    assert t["instructions"] == 11
    assert t["classification_instructions"] == 2
    assert t["classification_share"] == pytest.approx(2 / 11)
    assert t["instances"] == 12
    assert t["instances_with_empty_input"] == 5  # i = 0, 3, 6, 9 and the extra one
    assert "18.2%" in page  # the share of classification tasks
    files = s["file_counts"]
    assert files["rejected_instructions.jsonl"] == {"rejected_candidates": 3}
    assert s["rejected"]["reasons"] == {"image_words": 2, "write_a_program": 1}


def test_report_verbs_and_similarity(built) -> None:
    _, result, page, _ = built
    v = result.stats["verbs"]
    assert v["method"].startswith(("heuristic", "spacy"))
    top = {x["verb"]: x for x in v["top"]}
    if v["method"].startswith("heuristic"):
        assert top["write"]["count"] == 3  # story, function, haiku
        assert v["with_verb_noun"] == 9  # not "What is ...?" nor "Explain the <script> ..."
        assert "heuristic" in page and "rule-based" in page
    r = result.stats["rouge"]
    assert r["seed_tasks"] == 175
    # The pool figure comes from most_similar where stored, computed for the 3 without it.
    assert r["pool_computed"] == 3
    assert sum(r["hist_to_pool"]["counts"]) == 11
    assert r["to_pool"]["max"] >= 0.6  # 0.1 + 0.05 * 10


def test_report_ratings(built) -> None:
    _, result, page, _ = built
    judge = result.stats["ratings"]["LLM judge"]
    assert judge["counts"] == {"A": 2, "B": 1, "C": 0, "D": 1}
    assert judge["still_in_data"] == 4
    person = result.stats["ratings"]["person"]
    assert person["counts"] == {"A": 1, "B": 1, "C": 0, "D": 0}  # last line per key
    assert person["unrated"] == 1
    assert person["questions"]["valid_instruction"] == {"answered": 3, "yes": 3, "share_yes": 1.0}
    assert person["questions"]["output_correct"]["share_yes"] == 0.5
    assert person["all_fields_valid"]["yes"] == 1
    assert "Does the instruction describe a valid task?" in page


def test_report_samples_are_seeded(built, tmp_path: Path) -> None:
    rf, result, _, _ = built
    again = build_report(rf, out_dir=tmp_path / "r", sample_rows=4, seed=3)
    other = build_report(rf, out_dir=tmp_path / "s", sample_rows=4, seed=4)
    table = re.compile(r'<table class="samples">.*?</table>', re.S)
    first = table.search(again.html.read_text("utf-8")).group(0)
    assert first == table.search(
        build_report(rf, out_dir=tmp_path / "t", sample_rows=4, seed=3).html.read_text("utf-8")
    ).group(0)
    assert first != table.search(other.html.read_text("utf-8")).group(0)
    assert first.count("<tr>") == 5  # header and 4 rows


def test_report_reuses_the_parse_cache(tmp_path: Path) -> None:
    rf = make_run(tmp_path / "run")
    build_report(rf, sample_rows=0)
    cache = rf.report_dir / "verb_noun_cache.json"
    stored = json.loads(cache.read_text("utf-8"))
    assert stored["pairs"][INSTRUCTIONS[0]] in (["write", "story"], ["write", "story"])
    # A cached answer is used as it is: change it and the report follows.
    stored["pairs"][INSTRUCTIONS[0]] = ["compose", "saga"]
    cache.write_text(json.dumps(stored), encoding="utf-8")
    result = build_report(rf, sample_rows=0)
    assert "compose" in {x["verb"] for x in result.stats["verbs"]["top"]}


def test_report_without_run_json(tmp_path: Path) -> None:
    rf = make_run(tmp_path / "run", run_json=False)
    result = build_report(rf, sample_rows=2)
    page = result.html.read_text("utf-8")
    assert result.stats["steps_run_json"] is None
    assert "No <code>run.json</code>" in page
    counts = result.stats["file_counts"]
    assert counts["machine_generated_instructions.jsonl"] == {"instructions": 11}
    assert counts["finetuning_data/all_generated_instances.jsonl"]["examples"] == 12
    assert counts["machine_generated_instances.jsonl"] == {"tasks_with_instances": 11}


def test_report_of_step4_only(tmp_path: Path) -> None:
    """The release's fine-tuning data alone: instructions come from step 4's file."""
    rf = RunFolder(tmp_path / "run")
    _jsonl(
        rf.all_instances,
        [{"instruction": t, "input": "", "output": "ok"} for t in INSTRUCTIONS[:5]],
    )
    result = build_report(rf)
    assert result.stats["table1"]["instructions"] == 5
    assert result.stats["rouge"]["pool_computed"] == 5
    page = result.html.read_text("utf-8")
    assert "share of classification tasks is unknown" in page
    assert "their score to the pool was computed here for all of them" in page
    # Past pool_sample instructions without most_similar, a seeded sample is computed.
    sampled = build_report(rf, out_dir=tmp_path / "sampled", pool_sample=2)
    r = sampled.stats["rouge"]
    assert (r["pool_lacking_most_similar"], r["pool_computed"]) == (5, 2)
    assert sum(r["hist_to_pool"]["counts"]) == 2
    assert sum(r["hist_to_seeds"]["counts"]) == 5
    assert "random sample of 2 of them" in sampled.html.read_text("utf-8")


# ---- bad input through the CLI -------------------------------------------------------------


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from selfinstruct.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rf = make_run(tmp_path / "run")
    code, out, err = _main(["report", str(rf.path), "--quiet", "--sample-rows", "3"], capsys)
    assert code == 0, err
    assert out.strip() == str(rf.report_dir / "report.html")
    assert (rf.report_dir / "fig2_verbs.svg").exists()


def test_cli_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main(["report", str(tmp_path / "nope")], capsys)
    assert code == 2
    assert err.strip() == f"error: {tmp_path / 'nope'}: no such run folder"


def test_cli_folder_without_step_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("hello")
    code, _, err = _main(["report", str(tmp_path / "run")], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "no step files" in err and "machine_generated_instructions.jsonl" in err


def test_cli_empty_step_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rf = RunFolder(tmp_path / "run")
    rf.path.mkdir()
    rf.instructions.write_text("")
    code, _, err = _main(["report", str(rf.path)], capsys)
    assert code == 2
    assert err.strip() == f"error: {rf.instructions}: empty file (no records); rerun the step" \
        " that writes it"  # fmt: skip


def test_cli_malformed_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rf = make_run(tmp_path / "run")
    with open(rf.all_instances, "a", encoding="utf-8") as f:
        f.write("{not json\n")
    code, _, err = _main(["report", str(rf.path)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"{rf.all_instances}:13: not valid JSON" in err


def test_cli_bad_parser_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rf = make_run(tmp_path / "run")
    code, _, err = _main(["report", str(rf.path), "--parser", "stanza"], capsys)
    assert code == 2
    assert "--parser 'stanza'" in err


# ---- the verb/object heuristic -------------------------------------------------------------

SHAPES = [
    ("Write a short story about a dragon.", ("write", "story")),
    ("Generate a list of 5 healthy snacks.", ("generate", "list")),
    ("Given a sentence, detect its language.", ("detect", "language")),
    ("Given a list of integers, return the sum of the even ones.", ("return", "sum")),
    ("Please write an email to my boss asking for a day off.", ("write", "email")),
    ("Can you recommend a good book for a beginner?", ("recommend", "book")),
    ("Could you please summarize the following article?", ("summarize", "article")),
    ("Give me three examples of renewable energy sources.", ("give", "example")),
    ("Tell me a joke about cats.", ("tell", "joke")),
    ("Classify the sentiment of the following tweet.", ("classify", "sentiment")),
    ("Sort the given numbers in ascending order.", ("sort", "number")),
    ("Translate the sentence into French.", ("translate", "sentence")),
    ("Write a Python function to reverse a string.", ("write", "function")),
    ("Create a 5-day itinerary for a trip to Japan.", ("create", "itinerary")),
    ("Name three animals that live in the desert.", ("name", "animal")),
    ("List 5 ways to reduce stress.", ("list", "way")),
    ("Rewrite the following sentence in passive voice.", ("rewrite", "sentence")),
    ("Briefly explain the theory of relativity.", ("explain", "theory")),
    ("Suggest some tips for a job interview.", ("suggest", "tip")),
    ("Find the words used in the paragraph.", ("find", "word")),
    ("Design an algorithm that sorts a list of integers.", ("design", "algorithm")),
    ("Compose a tweet announcing a new product.", ("compose", "tweet")),
    ("Brainstorm ideas for a birthday party.", ("brainstorm", "idea")),
    ("Generate stories for children.", ("generate", "story")),
    ("Create a 500-word essay about climate change.", ("create", "essay")),
    ("Now, write a poem about the ocean.", ("write", "poem")),
    ("In this task, output the opposite of the word.", ("output", "opposite")),
    ("Find the user's name in the text.", ("find", "name")),
    ("Provide the boxes with labels.", ("provide", "box")),
    ("Write a program that prints hello world.", ("write", "program")),
    ("Convert a binary string to decimal.", ("convert", "string")),
    ("Make a list of the countries in Europe.", ("make", "list")),
    ("Given a recipe. Estimate the cooking time.", ("estimate", "time")),
    ("Calculate the area of a circle with radius 3.", ("calculate", "area")),
    ("Edit the text for grammar and spelling errors.\nInput: I has a apple.", ("edit", "text")),
    ("Sort the names alphabetically.", ("sort", "name")),
    ("Summarize the report you were sent yesterday.", ("summarize", "report")),
    ("Identify the bias in the headline.", ("identify", "bias")),
    ("Help me plan a trip.", ("help", "trip")),
    # No verb with a direct noun object:
    ("React calmly to the complaint.", None),
    ("Solving the puzzle requires patience.", None),
    ("Day 1: visit the museum.", None),
    ("NASA launches a rocket every year.", None),
    ("Python is a programming language.", None),
    ("Hello, how are you?", None),
    ("Imagine you have a time machine.", None),
    ("What is the capital of France?", None),
    ("How do I bake bread?", None),
    ("Is this review positive or negative?", None),
    ("You are given a paragraph. Summarize it in one sentence.", None),
    ("In this task, you need to detect the language.", None),
    ("Explain why the sky is blue.", None),
    ("Describe how photosynthesis works.", None),
    ("Classify the following: apple, carrot, banana.", None),
    ("Identify whether the sentence is a question.", None),
    ("Come up with a catchy slogan.", None),
    ("The following is a conversation between two people.", None),
    ("Summarize it.", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), SHAPES, ids=[s[0][:40] for s in SHAPES])
def test_heuristic_verb_noun(text: str, expected: tuple[str, str] | None) -> None:
    assert heuristic_verb_noun(text) == expected


def test_heuristic_shapes_are_many() -> None:
    assert sum(1 for _, e in SHAPES if e is not None) >= 25


@pytest.mark.parametrize(
    ("plural", "singular_form"),
    [("stories", "story"), ("boxes", "box"), ("words", "word"), ("analysis", "analysis"),
     ("series", "series"), ("class", "class"), ("children", "child"), ("essay", "essay")],
)  # fmt: skip
def test_singular(plural: str, singular_form: str) -> None:
    assert singular(plural) == singular_form


def test_spacy_parser_when_installed() -> None:
    models = installed_spacy_models()
    if not models:
        pytest.skip("no spaCy en_core_web_* pipeline installed (not on PyPI; optional)")
    from selfinstruct.verbs import SpacyParser

    parser = SpacyParser(models[0])
    pairs = parser.pairs(["Write a short story about a dragon.", "What is the capital?"])
    assert pairs[0] == ("write", "story")
    assert pairs[1] is None


def test_heuristic_on_the_papers_seed_tasks() -> None:
    """On the release's 175 human-written seed tasks, about the share the paper reports for its
    generated instructions (50.6%), and "write" first, as in its Figure 2."""
    from collections import Counter

    from conftest import paper_data

    path = paper_data("seed_tasks.jsonl")
    texts = [json.loads(line)["instruction"] for line in path.read_text("utf-8").splitlines()]
    pairs = [heuristic_verb_noun(t) for t in texts]
    found = [p for p in pairs if p]
    assert 0.5 <= len(found) / len(texts) <= 0.75
    verbs = Counter(v for v, _ in found)
    assert verbs.most_common(1)[0][0] == "write"
    assert {"give", "make", "create", "generate"} <= set(dict(verbs.most_common(8)))


def test_spacy_pair_rule_on_a_parse() -> None:
    """The rule applied to a spaCy parse: root verb of the first sentence and its first direct
    object that is a noun, lemmatized (checked on hand-built parse objects)."""
    from types import SimpleNamespace as T

    from selfinstruct.verbs import _doc_pair

    def tok(lemma: str, pos: str, dep: str, children: tuple = ()) -> T:
        return T(lemma_=lemma, pos_=pos, dep_=dep, children=children)

    def doc(root: T) -> T:
        return T(sents=[T(root=root)])

    stories = tok("story", "NOUN", "dobj")
    assert _doc_pair(doc(tok("Write", "VERB", "ROOT", (tok("a", "DET", "det"), stories)))) == (
        "write",
        "story",
    )
    it = tok("it", "PRON", "dobj")
    assert _doc_pair(doc(tok("summarize", "VERB", "ROOT", (it,)))) is None
    assert _doc_pair(doc(tok("be", "AUX", "ROOT", (stories,)))) is None
    assert _doc_pair(T(sents=[])) is None


def test_report_tells_a_torn_last_line(tmp_path: Path) -> None:
    rf = make_run(tmp_path / "run")
    with open(rf.instructions, "a", encoding="utf-8") as f:
        f.write('{"instruction": "Write a po')  # a writer killed mid-line
    before = rf.instructions.read_bytes()
    result = build_report(rf, sample_rows=0)
    assert result.stats["table1"]["instructions"] == 11
    assert any("torn last line" in w for w in result.warnings)
    assert "torn last line" in result.html.read_text("utf-8")
    assert rf.instructions.read_bytes() == before  # a report never edits the run's files


def test_report_picks_the_run_models_labels(tmp_path: Path) -> None:
    rf = make_run(tmp_path / "run")
    other = rf.classification_file_for("another-model")
    _jsonl(other, [{"instruction": t, "is_classification": "Yes"} for t in INSTRUCTIONS])
    result = build_report(rf, sample_rows=0)  # run.json names the model "scripted"
    assert result.stats["table1"]["classification_instructions"] == 2
    rf.run_file.unlink()  # without run.json: no way to tell, so the report says so (one policy,
    # RunFolder.find_classification_file, for every reader of step 2's file)
    with pytest.raises(DataFileError, match="several classification files"):
        build_report(rf, sample_rows=0)
