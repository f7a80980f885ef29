"""The one model abstraction: give it prompts, get back completions and token counts.

A backend implements `complete` (plain-text prompts, the paper's way) and may be driven with
`chat` semantics by wrapping each prompt as one user message; which of the two it uses is the
backend's business, decided by its model spec. Steps never know which backend they talk to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters of one request; defaults are neutral, steps set the paper's values."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop", "length", ... as the server reports it
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Usage:
    """Token and request counts, summed over calls."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, completions: list[Completion]) -> None:
        self.requests += 1
        for c in completions:
            self.prompt_tokens += c.prompt_tokens
            self.completion_tokens += c.completion_tokens

    def merge(self, other: Usage) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class ModelInfo:
    """What run.json records about a model: never a key."""

    backend: str
    name: str
    api: str  # "completions" or "chat"
    details: dict[str, str] = field(default_factory=dict)


class Model(ABC):
    """A language model behind one small async interface.

    `complete` takes a batch of prompts (at most `max_batch`) and returns one completion each, in
    order. It raises `ModelError` for what retrying cannot fix and `TransientModelError` for what
    it may; it never retries by itself (the engine does that, with backoff and accounting).
    """

    #: how many prompts one request may carry (the completions API takes a list)
    max_batch: int = 1
    #: how many requests may be in flight at once when the user does not say
    default_concurrency: int = 1

    @property
    @abstractmethod
    def info(self) -> ModelInfo: ...

    @abstractmethod
    async def complete(self, prompts: list[str], sampling: Sampling) -> list[Completion]: ...

    async def check(self) -> None:  # noqa: B027 - optional hook
        """Fail fast (ModelError) when the model cannot be used at all: no server, bad key."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what is bound to the running event loop (HTTP connections); the model stays
        usable from another loop. The default has nothing to release."""

    async def probe(self) -> None:
        """A cheap sign of life, for a router that took this model out of rotation: returns
        when the model answers again, raises otherwise. The default is `check`."""
        await self.check()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what outlives event loops (a Ray cluster started for this model). The model
        cannot be used afterwards. The default has nothing to release."""

    def take_member_stats(self) -> dict[str, dict] | None:
        """Per-member counts since the last call, for a model that routes to others (run.json
        records them per step); None for a single model."""
        return None


def safe_url(url: str) -> str:
    """A URL without user:password, so that a base URL with credentials is never stored or
    printed."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)
