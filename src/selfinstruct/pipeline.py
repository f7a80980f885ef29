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
import contextlib
import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selfinstruct import language as languages
from selfinstruct.batchapi import BatchSettings, round_requests
from selfinstruct.engine import EngineSettings
from selfinstruct.errors import BudgetExhausted, ConfigError, SelfInstructError
from selfinstruct.identity import (
    REFUSE,
    RunIdentity,
    RunIdentityError,
    check_choice,
    model_identity,
    seeds_identity,
    seeds_source,
    step_identity,
    templates_identity,
)
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
    the run's own seed tasks (the built-in set for a new run). `seed` is None for the run's
    (42 for a new run). `engine` sets concurrency, retries, rate limits and the run's budgets.
    `price` is (prompt, completion) USD per million tokens, for the cost in run.json. With
    `batch_api` (True or a `BatchSettings`), every model step goes through OpenAI's Batch API
    (docs/batch.md), its cost at `batch_price`, by default half of `price`. With `progress`,
    bars and summaries go to stderr. `language` is the seeds' language: an ISO code
    ("zh", "ru", ...), "auto" (detected from the seed tasks), or None: the language this run
    folder recorded, else English; it chooses the similarity tokenizer, threshold and filters.
    `base_url` may list several servers, and `replicas` puts copies of a local or vLLM model
    on a Ray cluster: either way one request goes to one of them, and run.json counts each
    one's share.

    The folder's first write records the run's identity (seed tasks, model, seed, each step's
    data-changing settings: see `selfinstruct.identity`); a step asked for other values raises
    `RunIdentityError` before any model call, unless `changed_settings="continue"`, which
    carries on and records the change in run.json's history. Step options left out take the
    run's recorded values.
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
        seed: int | None = None,
        price: tuple[float, float] | None = None,
        batch_api: bool | BatchSettings = False,
        batch_price: tuple[float, float] | None = None,
        progress: bool = False,
        reporter: Reporter | None = None,
        command: str = "python",
        language: str | None = None,
        changed_settings: str = REFUSE,
    ):
        self.folder = RunFolder.of(out)
        self._language = language
        self._seed = seed
        self.changed_settings = check_choice(changed_settings)
        self._invocation = uuid.uuid4().hex[:12]  # this pipeline's entry in run.json's history
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
        self._seeds_source = "python" if isinstance(seeds, list) else None
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
    def seed(self) -> int:
        """The sampling seed: the one given, else the run's, else 42."""
        if self._seed is None:
            recorded = self._identity().recorded.get("seed")
            self._seed = recorded if isinstance(recorded, int) else 42
        return self._seed

    @property
    def seeds(self) -> list[SeedTask]:
        """The seed tasks, loaded (and checked) on first use: the given ones, else the run's
        copy of its own, else the built-in set."""
        if not isinstance(self._seeds, list):
            from selfinstruct import seeds

            recorded = self._identity().recorded.get("seed_tasks")
            if self._seeds is not None:
                self._seeds_source = seeds_source(self._seeds, self.folder.path)
                self._seeds = seeds.load_seed_tasks(self._seeds)
            elif recorded and self.folder.seed_tasks.exists():
                self._seeds_source = recorded.get("source")
                self._seeds = seeds.load_seed_tasks(self.folder.seed_tasks)
            else:
                # The built-in set of the language asked for (English unless told).
                self._seeds_source = "built-in"
                self._seeds = seeds.default(self._stated_language().code)
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
        `InstructionSettings` fields (similarity_threshold, lowercase_rest, ...): given, else the
        run's recorded values, else the defaults; the threshold's default is the language's
        calibrated value. In Batch API mode the lag, unless given or recorded, is the round:
        `batchapi.round_requests` of the target."""
        settings = self._instruction_settings(num_instructions=num_instructions, **options)
        with self._started({"instructions": settings}):
            return self._instructions(settings)

    def _instruction_settings(self, **options: Any) -> InstructionSettings:
        """Step 1's settings: given, else the run's, else the defaults; the threshold's default
        is the language's calibrated value, and in Batch API mode the lag's is the round."""
        if "language" in options:
            self._language = options.pop("language")
        options = {k: v for k, v in options.items() if v is not None or k not in _BY_DEFAULT}
        lang = self.language
        lag_chosen = "lag" in options or "lag" in self._identity().defaults("instructions")
        settings = self._settings("instructions", language=lang.code, **options)
        if settings.similarity_threshold is None:  # calibrated per script
            settings = dataclasses.replace(settings, similarity_threshold=lang.threshold)
        if self.batch is not None and not lag_chosen:
            per_request = max(1, min(settings.request_batch_size, self.model.max_batch))
            lag = round_requests(settings.num_instructions, per_request)
            settings = dataclasses.replace(settings, lag=lag)
        return settings

    def identify_classification(self, **options: Any) -> StepReport:
        """Step 2: label each instruction classification or not (`ClassifySettings` fields)."""
        settings = self._settings("classify", **options)
        with self._started({"classify": settings}):
            return self._classify(settings)

    def generate_instances(self, **options: Any) -> StepReport:
        """Step 3: instances for each labelled instruction (`InstanceSettings` fields)."""
        settings = self._settings("instances", **options)
        with self._started({"instances": settings}):
            return self._instances(settings)

    def _instructions(self, settings: InstructionSettings) -> StepReport:
        seeds = self.seeds
        return self._model_step(
            settings,
            lambda ctx: generate_instructions(ctx, seeds, self.folder, settings),
            # The copy, relative to the run folder, and where the tasks came from.
            extra={
                "seed_tasks": self.folder.seed_tasks.name,
                "seed_tasks_source": self._seeds_source,
            },
        )

    def _classify(self, settings: ClassifySettings) -> StepReport:
        return self._model_step(
            settings, lambda ctx: identify_classification(ctx, self.folder, settings)
        )

    def _instances(self, settings: InstanceSettings) -> StepReport:
        return self._model_step(
            settings, lambda ctx: generate_instances(ctx, self.folder, settings)
        )

    def prepare(
        self,
        *,
        include_seed_tasks: bool | None = None,
        min_rating: str | None = None,
        judge_model: str | None = None,
        decontaminate: list[str | Path] | None = None,
        **options: Any,
    ) -> StepReport:
        """Step 4: filter and write the fine-tuning files (`PrepareSettings` fields). No model.

        `include_seed_tasks` None takes the run's choice (on for a new run, as `run` and the
        released script). `min_rating` ("A".."D", any case) keeps only generated examples the
        judge rated at least that well, in their own file (the seed tasks' examples, written by
        people, are always kept); `judge_model` names the judge when several rated the run.
        `decontaminate` lists evaluation sets whose items no training example may overlap
        (13-gram or ROUGE-L); None looks for the paper's user-oriented tasks on this machine,
        [] turns the check off.
        """
        if include_seed_tasks is not None:
            options["include_seed_tasks"] = include_seed_tasks
        settings = self._settings("prepare", **options)
        seeds = self.seeds if settings.include_seed_tasks else None
        ratings, by_rating, config = self._rating_filter(min_rating, judge_model, seeds)
        filters = self._decontamination(decontaminate, config)
        with self._started({"prepare": settings}, with_model=False):
            report = prepare_finetuning(
                self.folder,
                settings,
                seeds=seeds,
                reporter=self.reporter,
                filters=filters,
                ratings=ratings,
                rating_filter=by_rating,
            )
            self._record(report, settings, with_model=False, extra=config)
        self.reporter.summary(TITLES[report.step], report.rows())
        return report

    def _rating_filter(
        self, min_rating: str | None, judge_model: str | None, seeds: list[SeedTask] | None
    ) -> tuple[dict[str, str], Any, dict[str, Any]]:
        """The judge's ratings (of one judge), and the filter `min_rating` makes of them."""
        from selfinstruct.judge import calibration_line, find_judge, judges_of, load_ratings

        config: dict[str, Any] = {"min_rating": min_rating, "judge_model": judge_model}
        judges = judges_of(self.folder) if self.folder.judgments_file.exists() else []
        one = None  # every line's rating: there is one judge, or no filter to choose for
        if judge_model is not None:
            one = find_judge(judges, judge_model)
            if one is None:
                raise ConfigError(
                    f"`judge_model` {judge_model!r}: not one judge of {self.folder.judgments_file}"
                    f" (its judges: {', '.join(judges) or 'none'})"
                )
        elif len(judges) > 1 and min_rating is not None:
            raise ConfigError(
                f"`min_rating`: {self.folder.judgments_file} holds the ratings of {len(judges)}"
                f" judges ({', '.join(judges)}); name the one to filter with (`judge_model`)"
            )
        ratings = load_ratings(self.folder, model=one) if judges else {}
        if min_rating is None:
            return ratings, None, config
        by_rating = rating_filter(ratings, min_rating)  # a bad minimum fails here
        # How far the judge can be trusted, said before it is used to filter.
        self.reporter.info(calibration_line(self.folder))
        if seeds:
            self.reporter.info(
                f"min rating {min_rating.upper()}: the {sum(len(t.instances) for t in seeds)}"
                " seed-task examples are kept unrated (written by people)"
            )
        return ratings, by_rating, config

    def _decontamination(
        self, decontaminate: list[str | Path] | None, config: dict[str, Any]
    ) -> list:
        """Step 4's decontamination filter, if there is an evaluation set to check against."""
        from selfinstruct.decontaminate import Decontaminator, default_eval_sets

        eval_sets = default_eval_sets() if decontaminate is None else list(decontaminate)
        config["decontaminate"] = [str(p) for p in eval_sets]
        if eval_sets:
            lang = self.language
            checker = Decontaminator.from_files(
                eval_sets, tokenizer=lang.tokenizer, rouge_threshold=lang.threshold
            )
            return [decontamination_filter(checker)]
        if decontaminate is None:
            self.reporter.info(
                "decontamination: no evaluation set found (the paper's user-oriented tasks are"
                " not shipped); pass --decontaminate FILE or set SELFINSTRUCT_EVAL_DIR"
            )
        return []

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
        max_instances: int | None = None,
        request_batch_size: int | None = None,
        classification_only: bool | None = None,
        include_seed_tasks: bool | None = None,
        instructions: dict[str, Any] | None = None,
        classification: dict[str, Any] | None = None,
        instances: dict[str, Any] | None = None,
        prepare: dict[str, Any] | None = None,
    ) -> dict[str, StepReport]:
        """All four steps; rerun on the same folder to resume. The dicts pass further settings
        to one step each; None (or an option left out) takes the run's value, else the
        paper's. Raises when a step cannot complete (the folder stays consistent)."""
        shared = _given(request_batch_size=request_batch_size)
        first = {
            "num_instructions": num_instructions,
            **_given(classification_only=classification_only),
        }
        third = _given(max_instances_to_generate=max_instances)
        prepare = {**(prepare or {}), **_given(include_seed_tasks=include_seed_tasks)}
        plan = {
            "instructions": self._instruction_settings(
                **{**shared, **first, **(instructions or {})}
            ),
            "classify": self._settings("classify", **{**shared, **(classification or {})}),
            "instances": self._settings("instances", **{**shared, **third, **(instances or {})}),
            "prepare": self._settings(
                "prepare", **{k: v for k, v in prepare.items() if k not in _PREPARE_EXTRAS}
            ),
        }
        reports: dict[str, StepReport] = {}
        # Bad seeds, changed settings or an unusable model stop here, before any model call.
        with self._started(plan):
            for name, step in (
                ("instructions", self._instructions),
                ("classify", self._classify),
                ("instances", self._instances),
            ):
                reports[name] = report = step(plan[name])
                if not report.complete:
                    raise SelfInstructError(
                        f"{report.step} did not complete (see the summary); rerun to continue"
                    )
            extras = {k: v for k, v in prepare.items() if k in _PREPARE_EXTRAS}
            reports["prepare"] = self.prepare(**dataclasses.asdict(plan["prepare"]), **extras)
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

    # --- the run's identity ---------------------------------------------------------------

    def _identity(self) -> RunIdentity:
        return RunIdentity(RunFile(self.folder).data)

    def _settings(self, step: str, **given: Any) -> Any:
        """A step's settings: the options given, else the run's recorded values, else the
        paper's defaults."""
        cls = SETTINGS[step]
        if step == "instructions":
            given.setdefault("seed", self.seed)
        recorded = self._identity().defaults(step)
        names = {f.name for f in dataclasses.fields(cls)}
        check_settings(cls, given)  # a misspelled setting stops here, before any model call
        return make_settings(cls, **{**{k: v for k, v in recorded.items() if k in names}, **given})

    def _proposed(self, plan: dict[str, Any]) -> dict[str, Any]:
        """The identity these steps would run under."""
        spec = self._model_spec if isinstance(self._model_spec, str) else None
        info = None if spec else self._model_spec.info  # type: ignore[union-attr]
        seeds = self.seeds
        return {
            "model": model_identity(spec, info),
            "seed": self.seed,
            "seed_tasks": seeds_identity(seeds, self._seeds_source or "built-in"),
            "templates": templates_identity(),
            "steps": {step: step_identity(step, s) for step, s in plan.items()},
        }

    def _steps_checked(self, plan: dict[str, Any]) -> list[str]:
        """The steps of `plan` whose identity counts: step 4 only when it adds the seeds."""
        return [s for s in plan if s != "prepare" or plan[s].include_seed_tasks]

    def _check(self, plan: dict[str, Any]) -> list[Any]:
        """The differences from the run's identity; raises unless told to continue."""
        differences = self._identity().differences(self._proposed(plan), self._steps_checked(plan))
        if differences and self.changed_settings == REFUSE:
            raise RunIdentityError(self.folder.path, differences)
        return differences

    @contextlib.contextmanager
    def _started(self, plan: dict[str, Any], *, with_model: bool = True) -> Iterator[None]:
        """Run `plan`'s steps inside: the seeds and the identity are checked, then the model
        (before the folder is made), then the folder is locked and its identity recorded."""
        self.seeds  # noqa: B018  (a bad seed file stops here)
        self._check(plan)
        with contextlib.ExitStack() as held:
            if self.folder.path.is_dir():  # a folder in use stops at once, not after the model
                held.enter_context(self.folder.lock())
            if with_model:
                self.model  # noqa: B018
            held.enter_context(self.folder.lock())
            self._begin(plan)
            yield

    def _begin(self, plan: dict[str, Any]) -> None:
        """Record the identity, the seed tasks' copy and this invocation in run.json: the
        folder's first write, before any model call."""
        differences = self._check(plan)
        runfile = RunFile(self.folder)
        identity = RunIdentity(runfile.data)
        identity.merge(self._proposed(plan), self._steps_checked(plan))
        if "seed_tasks" in identity.recorded and (
            differences or not self.folder.seed_tasks.exists()
        ):
            from selfinstruct.seeds import seeds_text

            write_atomic(self.folder.seed_tasks, seeds_text(self.seeds))
        entry = runfile.invocation(self._invocation, self.command)
        entry["steps"] += [step for step in plan if step not in entry["steps"]]
        if differences:
            entry.setdefault("changed", []).extend(d.to_dict() for d in differences)
            entry["changed_settings"] = self.changed_settings
        runfile.save()

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
            try:
                report: StepReport = step(ctx)
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM) or failed halfway: what it spent is recorded.
                members = model.take_member_stats()
                for partial in ctx.started:
                    self._record(
                        partial, settings, with_model=True, extra=extra, stopped=True,
                        members=members,
                    )  # fmt: skip
                raise
            # A fleet's counts since the last step (its start-up check included) go to this one.
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
        stopped: bool = False,
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
            stopped=stopped,
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


SETTINGS = {
    "instructions": InstructionSettings,
    "classify": ClassifySettings,
    "instances": InstanceSettings,
    "prepare": PrepareSettings,
}
_PREPARE_EXTRAS = (
    "min_rating",
    "judge_model",
    "decontaminate",
)  # Pipeline.prepare's own, not settings


# Step-1 options whose None means "the default": the language's threshold, the lag's default.
_BY_DEFAULT = {"similarity_threshold", "lag"}


def _given(**options: Any) -> dict[str, Any]:
    """The options that were given (not None)."""
    return {k: v for k, v in options.items() if v is not None}


def rating_filter(ratings: dict[str, str], minimum: str) -> Any:
    """A step-4 filter that keeps the examples the judge rated `minimum` or better."""
    from selfinstruct.judge import meets

    minimum = minimum.upper()
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
