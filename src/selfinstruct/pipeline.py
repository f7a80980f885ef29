"""The four steps of Self-Instruct over one run folder, as one object.

    import selfinstruct as si

    run = si.Pipeline(out="runs/x", model="openai:gpt-4o-mini", seeds=si.seeds.default())
    run.generate_instructions(100)
    run.identify_classification()
    run.generate_instances()
    run.prepare()
    # or: run.run(num_instructions=100)

A pipeline holds one model, one event loop (so HTTP connections live from step to step), one
budget shared by every step (`max_requests`, `max_tokens_total`), and the run folder's lock for
as long as a step runs. After each step it records the configuration, counts, drops, token usage
and cost in run.json. The CLI is a thin layer over this class: both make the same files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from selfinstruct import language as languages
from selfinstruct.batchapi import BatchSettings, round_requests
from selfinstruct.engine import EngineSettings
from selfinstruct.errors import BudgetExhausted, ConfigError, SelfInstructError
from selfinstruct.io import write_atomic
from selfinstruct.language import Language
from selfinstruct.models import Model, ReplicaSettings, load_model
from selfinstruct.progress import Reporter
from selfinstruct.records import Example, SeedTask
from selfinstruct.runfile import RunFile, cost
from selfinstruct.runfolder import RunFolder
from selfinstruct.steps import StepContext, StepReport, check_settings, make_settings
from selfinstruct.steps.classify import ClassifySettings, identify_classification
from selfinstruct.steps.instances import InstanceSettings, generate_instances
from selfinstruct.steps.instructions import InstructionSettings, generate_instructions
from selfinstruct.steps.prepare import PrepareSettings, prepare_finetuning

TITLES = {
    "instructions": "Step 1: instructions",
    "classify": "Step 2: classification",
    "instances": "Step 3: instances",
    "prepare": "Step 4: fine-tuning data",
    "judge": "Judge: ratings",
    "judge_calibration": "Judge: calibration",
}


class Pipeline:
    """Self-Instruct's four steps over the run folder `out`, with one model and one budget.

    `model` is a spec string ("local", "openai:gpt-4o-mini?api=completions", ...; see
    `load_model`) or a `Model`. `seeds` is a list of `SeedTask`, a seed file's path, or None for
    the built-in set. `engine` sets concurrency, retries, rate limits and the run's budgets.
    `price` is (prompt, completion) USD per million tokens, for the cost in run.json. With
    `batch_api` (True or a `BatchSettings`), every model step goes through OpenAI's Batch API
    (docs/batch.md), its cost at `batch_price`, by default half of `price`. With `progress`,
    bars and summaries go to stderr. `language` is the seeds' language: an ISO code
    ("zh", "ru", ...), "auto" (detected from the seed tasks), or None: the language this run
    folder recorded, else English; it chooses the similarity tokenizer, threshold and filters.
    `base_url` may list several servers, and `replicas` puts copies of a local or vLLM model
    on a Ray cluster: either way one request goes to one of them, and run.json counts each
    one's share.
    """

    def __init__(
        self,
        out: str | Path | RunFolder,
        model: str | Model = "local",
        *,
        seeds: list[SeedTask] | str | Path | None = None,
        engine: EngineSettings | None = None,
        base_url: str | list[str] | None = None,
        api_key: str | None = None,
        replicas: ReplicaSettings | None = None,
        timeout: float = 120.0,
        seed: int = 42,
        price: tuple[float, float] | None = None,
        batch_api: bool | BatchSettings = False,
        batch_price: tuple[float, float] | None = None,
        progress: bool = False,
        reporter: Reporter | None = None,
        command: str = "python",
        language: str | None = None,
    ):
        self.folder = RunFolder.of(out)
        self._language = language
        self.seed = seed
        self.price = price
        self.batch = (
            (batch_api if isinstance(batch_api, BatchSettings) else BatchSettings())
            if batch_api
            else None
        )
        self.batch_price = batch_price
        if self.batch is not None and isinstance(model, str) and not model.startswith("openai:"):
            raise ConfigError(
                f"batch_api: the Batch API needs an OpenAI-compatible model ('openai:MODEL'),"
                f" not {model!r}"
            )
        if batch_price is None and price is not None:
            self.batch_price = (price[0] / 2, price[1] / 2)  # OpenAI's batch discount
        self.engine = engine or EngineSettings()
        self.reporter = reporter or Reporter(quiet=not progress)
        self.command = command
        self._seeds = seeds
        self._seeds_file = None if seeds is None or isinstance(seeds, list) else str(seeds)
        self._model_spec = model
        self._model_options = {
            "base_url": base_url,
            "api_key": api_key,
            "timeout": timeout,
            "replicas": replicas,
        }
        self._model: Model | None = model if isinstance(model, Model) else None
        self._runner: asyncio.Runner | None = None

    # --- what the steps share -----------------------------------------------------------------

    @property
    def seeds(self) -> list[SeedTask]:
        """The seed tasks, loaded (and checked) on first use."""
        if not isinstance(self._seeds, list):
            from selfinstruct import seeds

            if self._seeds is None:
                # The built-in set of the language asked for (English unless told).
                self._seeds = seeds.default(self._stated_language().code)
            else:
                self._seeds = seeds.load_seed_tasks(self._seeds)
        return self._seeds

    def _stated_language(self) -> Language:
        """The language given or recorded, before any detection ("auto" counts as English)."""
        if isinstance(self._language, Language):
            return self._language
        wanted = self._language or languages.recorded(RunFile(self.folder).data)
        auto = wanted is None or wanted.strip().lower() == languages.AUTO
        return languages.get(None if auto else wanted)

    @property
    def model(self) -> Model:
        """The model, loaded and checked (server reachable, key accepted) on first use."""
        if self._model is None:
            spec = self._model_spec
            assert isinstance(spec, str)
            model = load_model(spec, seed=self.seed, **self._model_options)
            try:
                self._loop().run(model.check())
            except BaseException:
                try:
                    self._loop().run(model.aclose())
                finally:
                    model.close()  # a local Ray started for it, if any
                raise
            self._model = model
        return self._model

    @property
    def language(self) -> Language:
        """The run's language, resolved ("auto" from the seed tasks) on first use."""
        if not isinstance(self._language, Language):
            recorded = languages.recorded(RunFile(self.folder).data)
            wanted = self._language or recorded
            auto = (wanted or "").strip().lower() == languages.AUTO
            lang = languages.resolve(wanted, [t.instruction for t in self.seeds] if auto else [])
            if recorded is not None and lang.code != recorded:
                self.reporter.warn(
                    f"language: this run folder was started in {recorded!r}, now {lang.code!r};"
                    " the pool's earlier decisions used the other language's similarity"
                )
            self._language = lang
        return self._language

    def _loop(self) -> asyncio.Runner:
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner

    def close(self) -> None:
        """Release the model's connections, the event loop and whatever the model started (a
        local Ray). The pipeline can be reused: a model it loaded is loaded again."""
        try:
            if self._runner is not None and self._model is not None:
                self._runner.run(self._model.aclose())
        finally:
            if self._runner is not None:
                self._runner.close()
                self._runner = None
            if self._model is not None and isinstance(self._model_spec, str):
                model, self._model = self._model, None
                model.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the four steps -------------------------------------------------------------------

    def generate_instructions(self, num_instructions: int = 100, **options: Any) -> StepReport:
        """Step 1: grow the pool to `num_instructions` machine instructions. `options` are
        `InstructionSettings` fields (similarity_threshold, lowercase_rest, ...). In Batch API
        mode the lag, unless given, is the round: `batchapi.round_requests` of the target."""
        seeds = self.seeds  # a bad seed file stops here, before any model call
        if "language" in options:
            self._language = options.pop("language")
        lang = self.language
        if options.get("similarity_threshold") is None:
            options["similarity_threshold"] = lang.threshold  # calibrated per script
        lag_given = options.get("lag") is not None
        if not lag_given:
            options.pop("lag", None)
        settings = make_settings(
            InstructionSettings,
            num_instructions=num_instructions,
            seed=self.seed,
            language=lang.code,
            **options,
        )
        if self.batch is not None and not lag_given:
            per_request = max(1, min(settings.request_batch_size, self.model.max_batch))
            lag = round_requests(num_instructions, per_request)
            settings = dataclasses.replace(settings, lag=lag)
        return self._model_step(
            settings,
            lambda ctx: generate_instructions(ctx, seeds, self.folder, settings),
            extra={"seed_tasks": self._seeds_file},
        )

    def identify_classification(self, **options: Any) -> StepReport:
        """Step 2: label each instruction classification or not (`ClassifySettings` fields)."""
        settings = make_settings(ClassifySettings, **options)
        return self._model_step(
            settings, lambda ctx: identify_classification(ctx, self.folder, settings)
        )

    def generate_instances(self, **options: Any) -> StepReport:
        """Step 3: instances for each labelled instruction (`InstanceSettings` fields)."""
        settings = make_settings(InstanceSettings, **options)
        return self._model_step(
            settings, lambda ctx: generate_instances(ctx, self.folder, settings)
        )

    def prepare(
        self,
        *,
        include_seed_tasks: bool = False,
        min_rating: str | None = None,
        decontaminate: list[str | Path] | None = None,
        **options: Any,
    ) -> StepReport:
        """Step 4: filter and write the fine-tuning files (`PrepareSettings` fields). No model.

        `min_rating` ("A".."D") keeps only examples the judge rated at least that well.
        `decontaminate` lists evaluation sets whose items no training example may overlap
        (13-gram or ROUGE-L); None looks for the paper's user-oriented tasks on this machine,
        [] turns the check off.
        """
        settings = make_settings(PrepareSettings, include_seed_tasks=include_seed_tasks, **options)
        seeds = self.seeds if settings.include_seed_tasks else None
        filters, ratings, config = self._example_filters(min_rating, decontaminate)
        with self.folder.lock():
            report = prepare_finetuning(
                self.folder,
                settings,
                seeds=seeds,
                reporter=self.reporter,
                filters=filters,
                ratings=ratings,
            )
            self._record(report, settings, with_model=False, extra=config)
        self.reporter.summary(TITLES[report.step], report.rows())
        return report

    def _example_filters(
        self, min_rating: str | None, decontaminate: list[str | Path] | None
    ) -> tuple[list, dict[str, str], dict[str, Any]]:
        """Step 4's filters beyond the paper's: the judge's rating and decontamination."""
        from selfinstruct.decontaminate import Decontaminator, default_eval_sets
        from selfinstruct.judge import calibration_line, load_ratings

        filters: list = []
        config: dict[str, Any] = {"min_rating": min_rating}
        ratings = load_ratings(self.folder) if self.folder.judgments_file.exists() else {}
        if min_rating is not None:
            # How far the judge can be trusted, said before it is used to filter.
            self.reporter.info(calibration_line(self.folder))
            filters.append(rating_filter(ratings, min_rating))
        eval_sets = default_eval_sets() if decontaminate is None else list(decontaminate)
        config["decontaminate"] = [str(p) for p in eval_sets]
        if eval_sets:
            lang = self.language
            checker = Decontaminator.from_files(
                eval_sets, tokenizer=lang.tokenizer, rouge_threshold=lang.threshold
            )
            filters.append(decontamination_filter(checker))
        elif decontaminate is None:
            self.reporter.info(
                "decontamination: no evaluation set found (the paper's user-oriented tasks are"
                " not shipped); pass --decontaminate FILE or set SELFINSTRUCT_EVAL_DIR"
            )
        return filters, ratings, config

    def judge(self, **options: Any) -> StepReport:
        """Rate step 4's examples A-D with the paper's rubric (`JudgeSettings` fields), into
        judgments.jsonl; then `prepare(min_rating="B")` keeps the good ones."""
        from selfinstruct.judge import JudgeSettings, judge_run

        settings = make_settings(JudgeSettings, **options)
        return self._model_step(settings, lambda ctx: judge_run(ctx, self.folder, settings))

    def calibrate_judge(self, settings: Any) -> Any:
        """Measure the judge against people (`judge.CalibrationSettings`) and write the result
        to the run folder; returns the `CalibrationReport`. Nothing to compare with stops here,
        before the model is loaded."""
        from selfinstruct.judge import calibrate, plan_calibration

        plan = plan_calibration(self.folder, settings)
        self.folder.path.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {}

        def step(ctx: StepContext) -> StepReport:
            result["report"] = calibrate(ctx, self.folder, settings, plan)
            # Written before a budget stop is raised: what was measured is kept.
            write_atomic(
                self.folder.calibration_report,
                json.dumps(result["report"].to_dict(), indent=2, ensure_ascii=False) + "\n",
            )
            return result["report"].step

        self._model_step(settings, step)
        return result["report"]

    def run(
        self,
        num_instructions: int = 100,
        *,
        max_instances: int = 5,
        request_batch_size: int = 5,
        classification_only: bool = False,
        include_seed_tasks: bool = True,
        instructions: dict[str, Any] | None = None,
        classification: dict[str, Any] | None = None,
        instances: dict[str, Any] | None = None,
        prepare: dict[str, Any] | None = None,
    ) -> dict[str, StepReport]:
        """All four steps; rerun on the same folder to resume. The dicts pass further settings
        to one step each. Raises when a step cannot complete (the folder stays consistent)."""
        reports: dict[str, StepReport] = {}
        # A misspelled setting of any step stops here, before any model call.
        for cls, given in (
            (InstructionSettings, instructions),
            (ClassifySettings, classification),
            (InstanceSettings, instances),
            (PrepareSettings, prepare),
        ):
            given = {k: v for k, v in (given or {}).items() if k not in _PREPARE_FILTERS}
            check_settings(cls, given)
        # Bad seeds or an unusable model stop here, before the folder is made.
        self.seeds, self.model  # noqa: B018
        with self.folder.lock():
            for step in (
                lambda: self.generate_instructions(
                    num_instructions,
                    request_batch_size=request_batch_size,
                    classification_only=classification_only,
                    **(instructions or {}),
                ),
                lambda: self.identify_classification(
                    request_batch_size=request_batch_size, **(classification or {})
                ),
                lambda: self.generate_instances(
                    max_instances_to_generate=max_instances,
                    request_batch_size=request_batch_size,
                    **(instances or {}),
                ),
            ):
                report = step()
                reports[report.step] = report
                if not report.complete:
                    raise SelfInstructError(
                        f"{report.step} did not complete (see the summary); rerun to continue"
                    )
            reports["prepare"] = self.prepare(
                include_seed_tasks=include_seed_tasks, **(prepare or {})
            )
        return reports

    # --- the forecast ---------------------------------------------------------------------

    def estimate(
        self,
        num_instructions: int = 100,
        *,
        steps: tuple[str, ...] | None = None,
        pilot: int = 0,
        request_batch_size: int = 5,
        seconds_per_request: float | None = None,
    ) -> Any:
        """Forecast the run (or `steps` of it): requests, tokens, cost online and in Batch API
        mode, wall time; written to forecast.json. No model call, unless `pilot` > 0: then that
        many real step-1 requests (and steps 2-4 on what they keep) go into `pilot/` first, and
        the forecast uses their yields instead of the paper's."""
        from selfinstruct import forecast

        yields = None
        if pilot:
            yields = forecast.pilot(self, pilot, request_batch_size=request_batch_size)
        spec = self._model_spec if isinstance(self._model_spec, str) else "openai:model"
        already = len(self.folder.read_instructions()) if self.folder.instructions.exists() else 0
        concurrency = self.engine.concurrency or (1 if spec.startswith("local") else 8)
        result = forecast.estimate(
            self.seeds,
            num_instructions=num_instructions,
            model_spec=spec,
            steps=steps or forecast.RUN_STEPS,
            request_batch_size=request_batch_size,
            already=already,
            yields=yields,
            price=self.price,
            batch_price=self.batch_price,
            concurrency=concurrency,
            seconds_per_request=seconds_per_request,
            seed=self.seed,
        )
        write_atomic(self.folder.forecast, json.dumps(result.to_dict(), indent=2) + "\n")
        return result

    # --- one model step -------------------------------------------------------------------

    def _model_step(
        self, settings: Any, step: Any, extra: dict[str, Any] | None = None
    ) -> StepReport:
        model = self.model  # an unreachable server or a refused key stops before the folder
        with self.folder.lock():
            ctx = StepContext(
                model=model,
                engine=self.engine,
                reporter=self.reporter,
                runner=self._loop(),
                engines=self._batch_engines(model),
            )
            # A fleet's counts since the last step (its start-up check included) go to this one.
            try:
                report: StepReport = step(ctx)
            finally:
                members = model.take_member_stats()
            self._spend(report)
            self._record(report, settings, with_model=True, extra=extra, members=members)
        rows = report.rows() + self._cost_rows(report) + member_rows(members)
        self.reporter.summary(TITLES[report.step], rows)
        if report.engine is not None and report.engine.budget_stop:
            raise BudgetExhausted(
                f"stopped at the `{report.engine.budget_stop}` budget; the folder is consistent:"
                " rerun with a larger budget to continue"
            )
        if not report.complete:
            self.reporter.warn(
                f"{report.step}: not complete (see the counts above); rerun the same command to"
                " continue where it stopped"
            )
        return report

    def _cost_rows(self, report: StepReport) -> list[tuple[str, Any]]:
        """This invocation's cost, at the price it ran at."""
        price = self.batch_price if self.batch is not None else self.price
        spent = cost(report.usage, price)
        if spent is None:
            return []
        which = "batch price" if self.batch is not None else "price"
        return [(f"cost (USD, at the {which})", f"{spent:.4f}")]

    def _batch_engines(self, model: Model) -> Any:
        """In Batch API mode, what makes each step's engine (None: the online engine)."""
        batch = self.batch
        if batch is None:
            return None
        from selfinstruct.batchapi.engine import BatchEngine
        from selfinstruct.models.openai import OpenAIModel

        if not isinstance(model, OpenAIModel):
            raise ConfigError(
                f"batch_api: the Batch API needs an OpenAI-compatible model ('openai:MODEL'),"
                f" not {model.info.backend}"
            )

        def make(step: str, usage: Any, _jitter_seed: int | None) -> Any:
            return BatchEngine(
                model,
                self.engine,
                self.folder,
                step=step,
                batch=batch,
                usage=usage,
                reporter=self.reporter,
            )

        return make

    def _spend(self, report: StepReport) -> None:
        """The budgets are for the whole pipeline: what a step spent is gone for the next."""
        e = self.engine
        spent = report.engine.requests if report.engine is not None else 0
        self.engine = dataclasses.replace(
            e,
            max_requests=None if e.max_requests is None else max(0, e.max_requests - spent),
            max_tokens_total=None
            if e.max_tokens_total is None
            else max(0, e.max_tokens_total - report.usage.total_tokens),
        )

    def _record(
        self,
        report: StepReport,
        settings: Any,
        *,
        with_model: bool,
        extra: dict[str, Any] | None = None,
        members: dict[str, dict] | None = None,
    ) -> None:
        config = {**settings_dict(settings), **(extra or {})}
        model = self.model.info if with_model else None
        if with_model:
            config["model"] = (
                self._model_spec
                if isinstance(self._model_spec, str)
                else (f"{model.backend}:{model.name}")
            )
        RunFile(self.folder).record_step(
            report,
            command=self.command,
            config=config,
            model=model,
            seed=self.seed if with_model else None,
            price=self.price,
            members=members,
            batch_price=self.batch_price if with_model and self.batch is not None else None,
        )


def member_rows(members: dict[str, dict[str, Any]] | None) -> list[tuple[str, Any]]:
    """One summary row per member of a fleet: its share of the requests and its troubles."""
    rows: list[tuple[str, Any]] = []
    for label, m in (members or {}).items():
        text = f"{m['succeeded']} answered of {m['requests']} sent"
        failed = sum(m["failures"].values())
        if failed:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(m["failures"].items()))
            text += f"; {failed} failed ({kinds})"
        if m["taken_out_of_rotation"]:
            text += f"; out of rotation {m['seconds_out_of_rotation']:.1f} s"
        rows.append((label, text))
    return rows


# `prepare`'s own arguments beside its PrepareSettings fields.
_PREPARE_FILTERS = ("min_rating", "decontaminate")


def rating_filter(ratings: dict[str, str], minimum: str) -> Any:
    """A step-4 filter that keeps the examples the judge rated `minimum` or better."""
    from selfinstruct.judge import meets

    meets(None, minimum)  # a bad minimum fails here, before any work

    def check(examples: list[Example]) -> list[dict | None]:
        verdicts: list[dict | None] = []
        for example in examples:
            rating = ratings.get(example.key)
            if rating is None:
                verdicts.append({"reason": "unrated"})
            elif meets(rating, minimum):
                verdicts.append(None)
            else:
                verdicts.append({"reason": f"rating_below_{minimum}", "rating": rating})
        return verdicts

    return check


def decontamination_filter(checker: Any) -> Any:
    """A step-4 filter that drops the examples overlapping an evaluation item."""

    def check(examples: list[Example]) -> list[dict | None]:
        hits = checker.check_many((e.instruction or "", e.input) for e in examples)
        return [
            None if hit is None else {**hit.to_dict(), "reason": f"decontaminated_{hit.reason}"}
            for hit in hits
        ]

    return check


def settings_dict(settings: Any) -> dict[str, Any]:
    """A step's settings as run.json stores them (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(settings), default=str))
