"""The OpenAI Batch API as documented: upload a JSONL file, create a batch, poll it, download.

Only the calls this package needs, through the model's own SDK client (so base URL, key,
timeouts and the never-logged key are the model's). A passing failure (connection, timeout,
429, 5xx) is retried here with backoff, because a batch already paid for must not be abandoned
for a network blip; what retrying cannot fix (refused key, unknown file) is a `ModelError`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai

from selfinstruct.errors import ModelError
from selfinstruct.models.openai import OpenAIModel

#: every status a batch goes through, as OpenAI documents them
STATUSES = (
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
)
#: the statuses after which a batch changes no more ("lost": ours, the server forgot it)
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled", "lost"})

T = TypeVar("T")


@dataclass
class BatchState:
    """What one poll of a batch says."""

    id: str
    status: str
    input_file_id: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # why a batch failed validation

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def of(cls, batch: Any) -> BatchState:
        counts = batch.request_counts
        errors = getattr(batch, "errors", None)
        messages = [
            f"{e.code or 'error'}: {e.message or ''}"
            + (f" (line {e.line})" if getattr(e, "line", None) else "")
            for e in (getattr(errors, "data", None) or [])
        ]
        return cls(
            id=batch.id,
            status=batch.status,
            input_file_id=batch.input_file_id,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            total=counts.total if counts else 0,
            completed=counts.completed if counts else 0,
            failed=counts.failed if counts else 0,
            errors=messages,
        )


class _Missing(Exception):
    """The server does not know the batch (404)."""


class BatchClient:
    """Files and batches on the model's server."""

    def __init__(self, model: OpenAIModel, *, attempts: int = 8, backoff: float = 1.0):
        self.model = model
        self.attempts = attempts
        self.backoff = backoff
        self._jitter = random.Random(0)

    @property
    def endpoint(self) -> str:
        """The URL every line of this model's files names."""
        return "/v1/chat/completions" if self.model.api == "chat" else "/v1/completions"

    async def upload(self, name: str, data: bytes) -> str:
        client = self.model.api_client()
        created = await self._call(
            f"upload {name}", lambda: client.files.create(file=(name, data), purpose="batch")
        )
        return created.id

    async def create(self, file_id: str, metadata: dict[str, str]) -> BatchState:
        client = self.model.api_client()
        batch = await self._call(
            f"create a batch of {file_id}",
            lambda: client.batches.create(
                input_file_id=file_id,
                endpoint=self.endpoint,  # type: ignore[arg-type]
                completion_window="24h",
                metadata=metadata,
            ),
        )
        return BatchState.of(batch)

    async def retrieve(self, batch_id: str, input_file_id: str) -> BatchState:
        """The batch now; one the server no longer knows (404) reads as `lost`, so that its
        lines are sent again rather than the run stopping on every rerun."""
        client = self.model.api_client()
        try:
            batch = await self._call(
                f"poll {batch_id}", lambda: client.batches.retrieve(batch_id), missing_ok=True
            )
        except _Missing:
            return BatchState(batch_id, "lost", input_file_id)
        return BatchState.of(batch)

    async def find(self, file_id: str) -> BatchState | None:
        """The batch made of an uploaded file, if one was created (the process may have died
        between creating it and writing its id down)."""
        client = self.model.api_client()

        async def scan() -> Any:
            async for batch in client.batches.list(limit=100):
                if batch.input_file_id == file_id:
                    return batch
            return None

        batch = await self._call(f"look for the batch of {file_id}", scan)
        return None if batch is None else BatchState.of(batch)

    async def download(self, file_id: str) -> bytes:
        client = self.model.api_client()

        async def read() -> bytes:
            response = await client.files.content(file_id)
            return response.content

        return await self._call(f"download {file_id}", read)

    async def _call(
        self, what: str, call: Callable[[], Awaitable[T]], missing_ok: bool = False
    ) -> T:
        base = self.model.base_url
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except openai.APIStatusError as e:
                status = e.status_code
                if status == 404 and missing_ok:
                    raise _Missing from None
                if status not in (408, 409, 429) and status < 500:
                    raise ModelError(
                        f"{base}: {what}: HTTP {status}: {self.model._scrub(str(e))[:300]}"
                    ) from None
                if attempt == self.attempts:
                    raise ModelError(
                        f"{base}: {what}: HTTP {status} after {attempt} tries; the batch ids"
                        " are in the run folder: rerun to go on"
                    ) from None
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                if attempt == self.attempts:
                    raise ModelError(
                        f"{base}: {what}: {type(e).__name__} after {attempt} tries; the batch"
                        " ids are in the run folder: rerun to go on"
                    ) from None
            await asyncio.sleep(self._jitter.uniform(0, self.backoff * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")
