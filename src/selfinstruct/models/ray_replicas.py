"""Copies of a model on a Ray cluster, one Ray actor each, driven as one `Model`.

Each replica is a Ray actor holding its own model in its own worker process: llama.cpp for the
`local` backend (as many threads as the CPUs Ray reserves for it) or vLLM's offline engine for
`vllm:` models (on the GPU Ray gives it). Ray places the actors, spread over the nodes, and
restarts one that dies where it can (`max_restarts`). The `FleetModel` router drives them
exactly as it drives HTTP endpoints: fewest requests outstanding first; a replica or a whole node
that dies fails its requests as transient errors (reason `replica_died`, or `timeout` while Ray
has not noticed yet), which the engine counts and retries on the others; the dead replica is out
of rotation and probed until Ray has it back. Ray never retries a call itself
(`max_task_retries=0`): the engine does, so every attempt is counted once.

Without an address a local Ray is started for the model (in a temp folder of its own, not
reporting usage) and stopped by `close()`. An address given as a loopback `127.x.y.z:PORT`
means this process is on that node and talks to it on that address (see docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from selfinstruct.errors import (
    ConfigError,
    MissingExtraError,
    ModelError,
    ModelUnreachable,
    SelfInstructError,
    TransientModelError,
)
from selfinstruct.models.base import Completion, Model, ModelInfo, Sampling
from selfinstruct.models.fleet import FleetModel
from selfinstruct.models.spec import ModelSpec, ReplicaSettings, parse_spec

#: seconds a replica may take to be placed and load its model before it counts as unreachable
START_TIMEOUT = 120.0
#: requests in flight per replica by default: one running, one waiting at the actor, so that
#: a replica never idles between two requests
LLAMA_IN_FLIGHT = 2
#: a vLLM replica batches whatever is waiting; this many requests keep its batches full
VLLM_IN_FLIGHT = 64


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingExtraError(
            "`replicas` and vllm: models run on Ray, which is not installed:"
            " pip install 'selfinstruct[ray]'"
        ) from None
    return ray


class RayReplicaModel(FleetModel):
    """`settings.replicas` actors of the model `spec` names, routed by the fleet."""

    _session: _RaySession | None = None

    @classmethod
    def start(
        cls, spec: ModelSpec, settings: ReplicaSettings, *, seed: int = 0, timeout: float = 120.0
    ) -> RayReplicaModel:
        if spec.backend == "vllm" and settings.address is None:
            require_vllm(spec)  # here, before a local Ray is started for nothing
        ray = _import_ray()
        session = _RaySession.open(ray, settings)
        try:
            _check_resources(ray, spec, settings)
            members: list[Model] = [
                _Replica(ray, spec, settings, index=i, seed=seed, timeout=timeout)
                for i in range(settings.replicas)
            ]
        except BaseException:
            session.close()
            raise
        details = {
            "replicas": str(settings.replicas),
            "ray_address": settings.address or "local",
            "num_cpus": f"{settings.num_cpus:g}",
            "num_gpus": f"{settings.gpus(spec.backend):g}",
        }
        info = ModelInfo(spec.backend, spec.name or "default", spec.api, details)
        model = cls(members, [f"replica {i}" for i in range(len(members))], info=info)
        model._session = session
        return model

    def close(self) -> None:
        super().close()
        session = getattr(self, "_session", None)
        if session is not None:
            self._session = None
            session.close()


@dataclasses.dataclass
class _RaySession:
    """The Ray connection a replica model made, if it made one: closed with the model."""

    ray: Any
    temp_dir: str | None

    @classmethod
    def open(cls, ray: Any, settings: ReplicaSettings) -> _RaySession | None:
        if ray.is_initialized():
            return None  # the caller's own Ray session: theirs to end
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Ray's own start-up chatter stays out of our output; its warnings do not.
        common: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if settings.address is None:
            temp_dir = tempfile.mkdtemp(prefix="si-ray-")
            need = math.ceil(settings.replicas * settings.num_cpus)
            ray.init(
                address="local",
                num_cpus=max(os.cpu_count() or 1, need),
                _temp_dir=temp_dir,
                **common,
            )
            return cls(ray, temp_dir)
        host = settings.address.rpartition(":")[0]
        if host.startswith("127."):
            common["_node_ip_address"] = host
        try:
            ray.init(address=settings.address, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"`ray_address` {settings.address}: cannot connect ({e})") from None
        return cls(ray, None)

    def close(self) -> None:
        self.ray.shutdown()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _check_resources(ray: Any, spec: ModelSpec, settings: ReplicaSettings) -> None:
    """GPUs are checked before any actor is made: a vLLM replica without one never starts.
    CPUs are not: an autoscaling cluster adds nodes for actors that wait."""
    need = settings.replicas * settings.gpus(spec.backend)
    have = ray.cluster_resources().get("GPU", 0)
    if need > have:
        raise ConfigError(
            f"`model` {spec}: {settings.replicas} replica(s) need {need:g} GPU(s), and the Ray"
            f" cluster has {have:g} (`replica_gpus` sets the share per replica)"
        )


def require_vllm(spec: ModelSpec) -> None:
    """A clear stop where vLLM or a GPU is missing, before anything is started."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            f"`model` {spec}: vLLM is not installed (pip install vllm, on a machine with an"
            " NVIDIA GPU); on a CPU use the `model` local with `replicas`"
        )


class _Replica(Model):
    """One replica as a member of the fleet: calls go to its actor, errors come back typed."""

    def __init__(
        self,
        ray: Any,
        spec: ModelSpec,
        settings: ReplicaSettings,
        *,
        index: int,
        seed: int,
        timeout: float,
    ):
        self.ray = ray
        self.label = f"replica {index}"
        self.timeout = timeout
        self.spec = spec
        vllm = spec.backend == "vllm"
        self.default_concurrency = VLLM_IN_FLIGHT if vllm else LLAMA_IN_FLIGHT
        self.max_batch = 16 if vllm else 1
        threads = max(1, round(settings.num_cpus))
        actor_class = ray.remote(ReplicaActor)
        self.actor = actor_class.options(
            num_cpus=settings.num_cpus,
            num_gpus=settings.gpus(spec.backend),
            max_restarts=settings.max_restarts,
            max_task_retries=0,
            # llama.cpp: one call at a time (its lock), and a ping that never waits behind it
            max_concurrency=VLLM_IN_FLIGHT * 4 if vllm else 2,
            scheduling_strategy="SPREAD",
        ).remote(str(spec), seed + index, threads)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.spec.backend, self.spec.name or "default", self.spec.api)

    async def check(self) -> None:
        await self._call(self.actor.ready.remote(), START_TIMEOUT, starting=True)

    async def probe(self) -> None:
        await self._call(self.actor.ready.remote(), 10.0)

    async def complete(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        return await self._call(self.actor.complete.remote(prompts, sampling), self.timeout)

    async def _call(self, ref: Any, timeout: float, *, starting: bool = False) -> Any:
        ex = self.ray.exceptions
        try:
            return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
        except TimeoutError:
            if starting:
                raise ModelUnreachable(
                    f"{self.label}: not started after {timeout:g} s (no room on the cluster for"
                    " it yet, or its node is gone); it joins when Ray has it up"
                ) from None
            raise TransientModelError(
                f"{self.label}: no answer in {timeout:g} s", reason="timeout"
            ) from None
        except ex.RayTaskError as e:
            raise self._cause(e) from None
        except ex.RayActorError as e:
            if _init_failed(e):
                raise ModelError(
                    f"{self.label}: could not load its model: {_first_line(e)}"
                ) from None
            raise TransientModelError(
                f"{self.label}: its actor died ({_first_line(e)})", reason="replica_died"
            ) from None
        except ex.RayError as e:  # a lost object, a crashed worker, a dead node
            raise TransientModelError(
                f"{self.label}: {type(e).__name__} ({_first_line(e)})", reason="replica_died"
            ) from None

    def _cause(self, e: Any) -> SelfInstructError:
        """The error raised inside the actor, as this package's own type, naming the replica."""
        cause = getattr(e, "cause", None)
        if isinstance(cause, TransientModelError):
            return TransientModelError(
                f"{self.label}: {cause}", reason=cause.reason, retry_after=cause.retry_after
            )
        if isinstance(cause, SelfInstructError):
            return type(cause)(f"{self.label}: {cause}")
        return ModelError(f"{self.label}: {type(cause).__name__}: {cause}")


def _init_failed(e: Any) -> bool:
    """Whether an actor died in its constructor (its model could not load): no restart helps."""
    for name in ("actor_init_failed", "_actor_init_failed"):
        value = getattr(e, name, None)
        if isinstance(value, bool):
            return value
    return "__init__" in str(e)


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(e).__name__


class ReplicaActor:
    """Runs inside a Ray worker: one model, loaded once, answering the router's calls."""

    def __init__(self, spec: str, seed: int, threads: int):
        parsed = parse_spec(spec)
        if parsed.backend == "vllm":
            self.engine: Any = VllmEngine(parsed, seed=seed)
        else:
            from selfinstruct.models.llamacpp import LlamaCppModel

            if "threads" not in parsed.options:
                parsed = ModelSpec(
                    parsed.backend, parsed.name, {**parsed.options, "threads": str(threads)}
                )
            self.engine = LlamaCppModel.from_spec(parsed, seed=seed)

    def ready(self) -> bool:
        return True

    def complete(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        return self.engine.complete_sync(prompts, sampling)


class VllmEngine:
    """vLLM's offline `LLM` in one replica. Calls arrive on many actor threads at once; a
    micro-batcher hands whatever is waiting to one `LLM.generate`, which batches on the GPU."""

    def __init__(self, spec: ModelSpec, *, seed: int):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ConfigError(
                f"`model` {spec}: vLLM is not importable on this node ({e})"
            ) from None
        opts = spec.options
        kwargs: dict[str, Any] = {"model": spec.name, "seed": seed}
        try:
            for name, kind in (
                ("dtype", str),
                ("gpu_memory_utilization", float),
                ("max_model_len", int),
                ("tensor_parallel_size", int),
            ):
                if name in opts:
                    kwargs[name] = kind(opts[name])
        except ValueError:
            raise ConfigError(f"`model` {spec}: a vLLM option is not a number") from None
        self.chat = spec.api == "chat"
        self.llm = LLM(**kwargs)
        self.batcher = MicroBatcher(self._generate)

    def complete_sync(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        return self.batcher.submit([(p, sampling) for p in prompts])

    def _generate(self, items: list[tuple[str, Sampling]]) -> list[Completion]:
        from vllm import SamplingParams

        texts = [self._render(p) for p, _ in items]
        params = [
            SamplingParams(
                max_tokens=s.max_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                frequency_penalty=s.frequency_penalty,
                presence_penalty=s.presence_penalty,
                stop=list(s.stop) or None,
                seed=s.seed,
            )
            for _, s in items
        ]
        outputs = self.llm.generate(texts, params, use_tqdm=False)
        return [
            Completion(
                text=o.outputs[0].text,
                finish_reason=o.outputs[0].finish_reason or "stop",
                prompt_tokens=len(o.prompt_token_ids or ()),
                completion_tokens=len(o.outputs[0].token_ids or ()),
            )
            for o in outputs
        ]

    def _render(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        tokenizer = self.llm.get_tokenizer()
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )


class MicroBatcher:
    """Calls from many threads answered by one worker thread in batches: everything waiting
    when the worker is free goes into one call of `run` (up to `max_items` items)."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], *, max_items: int = 256):
        self._run = run
        self._max = max_items
        self._waiting: list[_Job] = []
        self._cond = threading.Condition()
        self.batches: list[int] = []  # items per call of `run`, for tests and logs
        threading.Thread(target=self._loop, name="micro-batcher", daemon=True).start()

    def submit(self, items: list[Any]) -> list[Any]:
        job = _Job(items)
        with self._cond:
            self._waiting.append(job)
            self._cond.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[_Job]:
        with self._cond:
            while not self._waiting:
                self._cond.wait()
            jobs, size = [], 0
            while self._waiting and (not jobs or size + len(self._waiting[0].items) <= self._max):
                job = self._waiting.pop(0)
                jobs.append(job)
                size += len(job.items)
            return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            flat = [item for job in jobs for item in job.items]
            self.batches.append(len(flat))
            try:
                results = self._run(flat)
            except BaseException as e:  # every waiting caller gets the error
                for job in jobs:
                    job.error = e
            else:
                start = 0
                for job in jobs:
                    job.result = results[start : start + len(job.items)]
                    start += len(job.items)
            for job in jobs:
                job.done.set()


class _Job:
    def __init__(self, items: list[Any]):
        self.items = items
        self.result: list[Any] = []
        self.error: BaseException | None = None
        self.done = threading.Event()
