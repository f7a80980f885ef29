"""Model specs: one string names a backend, a model and its options.

    local                                  the embedded default (SmolLM2-135M-Instruct GGUF)
    local:/path/to/model.gguf              another GGUF file, run in-process by llama.cpp
    local?api=chat                         apply the model's chat template (default: completions)
    local?lora=runs/ft                     add a LoRA adapter (a .gguf file, or a folder written
                                           by `selfinstruct finetune` holding adapter.gguf)
    openai:gpt-4o-mini                     any OpenAI-compatible server, chat API (the default)
    openai:davinci-002?api=completions     the completions API: the paper's plain-text prompts
    openai:llama3?api=completions&batch=1  one prompt per request (servers that take no list)
    vllm:Qwen/Qwen2.5-7B-Instruct          vLLM's offline engine in Ray replicas on GPUs
                                           (`ReplicaSettings`; needs vLLM and a GPU per replica)

Base URL and key never go in a spec: they come from --base-url / --api-key or OPENAI_BASE_URL /
OPENAI_API_KEY, so a spec can be logged and stored in run.json safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from selfinstruct.errors import ConfigError

BACKENDS = ("local", "openai", "vllm")
APIS = ("completions", "chat")
_OPTIONS = {
    "local": {"api", "lora", "lora_scale", "n_ctx", "threads"},
    "openai": {"api", "batch"},
    "vllm": {"api", "dtype", "gpu_memory_utilization", "max_model_len", "tensor_parallel_size"},
}


@dataclass(frozen=True)
class ModelSpec:
    backend: str
    name: str  # a path for local (empty: the embedded default), a model id for openai
    options: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return self.options.get("api", "chat" if self.backend == "openai" else "completions")

    def __str__(self) -> str:
        text = self.backend + (f":{self.name}" if self.name else "")
        if self.options:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.options.items())
        return text


def parse_spec(text: str) -> ModelSpec:
    """Parse a model spec; raise ConfigError naming what is wrong with it."""
    raw = text.strip()
    if not raw:
        raise ConfigError("`model`: empty model spec (try 'local' or 'openai:MODEL')")
    head, _, query = raw.partition("?")
    backend, _, name = head.partition(":")
    backend = backend.strip().lower()
    if backend not in BACKENDS:
        raise ConfigError(
            f"`model` {text!r}: unknown backend {backend!r}; use 'local[:PATH.gguf]',"
            " 'openai:MODEL' or 'vllm:MODEL'"
        )
    if backend in ("openai", "vllm") and not name:
        raise ConfigError(
            f"`model` {text!r}: name the model, e.g. 'openai:gpt-4o-mini' or"
            " 'vllm:Qwen/Qwen2.5-7B-Instruct'"
        )
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigError(
            f"`model` {text!r}: options must look like ?key=value&key=value"
        ) from None
    options = dict(pairs)
    unknown = sorted(set(options) - _OPTIONS[backend])
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[backend]))
        raise ConfigError(
            f"`model` {text!r}: unknown option {unknown[0]!r} for {backend} (known: {allowed})"
        )
    if options.get("api", APIS[0]) not in APIS:
        raise ConfigError(f"`model` {text!r}: api must be 'completions' or 'chat'")
    return ModelSpec(backend=backend, name=name.strip(), options=options)


@dataclass(frozen=True)
class ReplicaSettings:
    """Copies of a local (llama.cpp) or vLLM model on a Ray cluster, one Ray actor each."""

    replicas: int = 1
    #: a Ray cluster ("auto", "HOST:PORT", "ray://HOST:10001"); None starts a local Ray for the
    #: run and stops it after
    address: str | None = None
    #: CPUs Ray reserves for each replica; also a llama.cpp replica's threads
    num_cpus: float = 1.0
    #: GPUs each replica needs; None: 1 for vLLM, 0 for llama.cpp
    num_gpus: float | None = None
    #: how often Ray may restart a replica that died (-1: as often as it can)
    max_restarts: int = -1

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"`replicas` {self.replicas}: at least 1")
        if self.num_cpus <= 0:
            raise ConfigError(f"`replica_cpus` {self.num_cpus}: must be above 0")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ConfigError(f"`replica_gpus` {self.num_gpus}: must be 0 or more")

    def gpus(self, backend: str) -> float:
        if self.num_gpus is not None:
            return self.num_gpus
        return 1.0 if backend == "vllm" else 0.0
