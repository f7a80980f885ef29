"""Any OpenAI-compatible server: OpenAI, vLLM, llama.cpp's server, Ollama, ...

Completion models get the paper's plain-text prompts; chat models get the same text as one user
message. The client never retries by itself (`max_retries=0`): the engine owns retries, so that
every retry is counted and Retry-After is honoured once, not twice.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import openai
from openai.types import Completion as APICompletion
from openai.types.chat import ChatCompletion

from selfinstruct.errors import ConfigError, ModelError, ModelUnreachable, TransientModelError
from selfinstruct.models.base import Completion, Model, ModelInfo, Sampling, safe_url
from selfinstruct.models.spec import ModelSpec

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# OpenAI's completions endpoint takes a list of prompts; some servers (Ollama) take only one,
# which `?batch=1` in the spec selects.
DEFAULT_COMPLETIONS_BATCH = 20
_NO_LIST_STATUS = (400, 422, 500)
_FATAL_STATUS = {
    400: "bad request",
    401: "refused the API key",
    403: "permission denied",
    404: "not found",
    413: "request too large",
    422: "unprocessable request",
}


def _http_client_base() -> type:
    """The SDK's aiohttp transport where installed (about 1.4 ms less CPU a request than its
    default at 64 requests in flight, measured here), else its default httpx client."""
    try:
        import aiohttp  # noqa: F401

        return openai.DefaultAioHttpClient
    except (ImportError, AttributeError):
        return openai.DefaultAsyncHttpxClient


class _LoopHttpClient(_http_client_base()):  # type: ignore[misc]
    """The SDK's HTTP client, closed only on the event loop it was made on.

    The SDK closes an HTTP client left open from `__del__`, on whatever loop is running then. A
    client dropped because its step's loop has finished would be closed on the next step's loop,
    which fails ("Event loop is closed") and prints a traceback; its connections died with their
    loop, and their sockets are released when the transports are collected.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._loop = asyncio.get_running_loop()

    def __del__(self) -> None:
        if self.is_closed:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is getattr(self, "_loop", None):
            running.create_task(self.aclose())


class OpenAIModel(Model):
    default_concurrency = 8

    def __init__(
        self,
        model: str,
        *,
        api: str = "chat",
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        batch: int | None = None,
    ):
        self.model = model
        self.api = api
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        # Messages name the server without any user:password in its URL.
        self._where = safe_url(self.base_url)
        if self._where != self.base_url:
            # The API key goes in the Authorization header, where URL credentials would go too.
            raise ConfigError(
                f"base_url {self._where}: a user:password in the URL cannot be sent beside the"
                " API key; give the key through `api_key` or OPENAI_API_KEY"
            )
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if self.base_url == DEFAULT_BASE_URL:
                raise ConfigError(
                    "openai: no API key; pass `api_key` or set OPENAI_API_KEY"
                    " (local servers accept any value)"
                )
            key = "unused"  # local servers ignore it, but the client requires one
        self._key = key
        self.max_batch = 1 if api == "chat" else (batch or DEFAULT_COMPLETIONS_BATCH)
        self._timeout = timeout
        self._clients: dict[int, openai.AsyncOpenAI] = {}

    @property
    def _client(self) -> openai.AsyncOpenAI:
        # An async HTTP client belongs to the event loop it was made on; each step of a run may
        # drive its own loop, so keep one client per loop.
        loop_id = id(asyncio.get_running_loop())
        client = self._clients.get(loop_id)
        if client is None:
            self._clients.clear()
            client = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=self._key,
                timeout=self._timeout,
                max_retries=0,
                http_client=_LoopHttpClient(timeout=self._timeout),
            )
            self._clients[loop_id] = client
        return client

    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
    ) -> OpenAIModel:
        try:
            batch = int(spec.options["batch"]) if "batch" in spec.options else None
        except ValueError:
            raise ConfigError(f"`model` {spec}: batch must be a whole number") from None
        if batch is not None and batch < 1:
            raise ConfigError(f"`model` {spec}: batch must be at least 1")
        return cls(
            spec.name,
            api=spec.api,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            batch=batch,
        )

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            backend="openai", name=self.model, api=self.api, details={"base_url": self._where}
        )

    def _scrub(self, text: str) -> str:
        """Servers sometimes echo the key back in error messages; never let it reach a log."""
        if self._key and self._key != "unused" and len(self._key) >= 4:
            text = text.replace(self._key, "***")
        return text

    async def check(self) -> None:
        """Fail fast on an unreachable server or a refused key, before any work starts."""
        try:
            await self._client.models.list()
        except openai.APIConnectionError as e:
            raise ModelUnreachable(
                f"cannot reach {self._where} ({self._scrub(str(e.__cause__ or e))});"
                " is the server running? (`base_url` / OPENAI_BASE_URL)"
            ) from None
        except openai.APIStatusError as e:
            if e.status_code in (401, 403):
                raise self._fatal(e) from None
            # Servers without a /models endpoint are fine; the first real call will tell.

    def request_body(self, prompts: list[str], sampling: Sampling) -> tuple[str, dict[str, Any]]:
        """The path (under /v1) and JSON body of one request: what `complete` sends, and what a
        Batch API line carries."""
        # The body goes out through the SDK's `post` as it is (plain JSON values): its typed
        # `create()` methods rebuild every parameter against their TypedDicts first, which cost
        # 2-3 ms of CPU a request, a quarter of step 1's whole cost per request at high
        # concurrency. Responses, errors and timeouts go through the SDK exactly as before.
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty,
        }
        if sampling.stop:
            params["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            params["seed"] = sampling.seed
        if self.api == "chat":
            if len(prompts) != 1:
                raise ValueError("a chat request carries one prompt")
            return "/chat/completions", {
                "messages": [{"role": "user", "content": prompts[0]}],
                **params,
            }
        return "/completions", {"prompt": prompts if len(prompts) > 1 else prompts[0], **params}

    def read_body(self, body: dict[str, Any], prompts: int) -> list[Completion]:
        """The completions in a response body (a Batch API output line's `response.body`);
        an unreadable one is a `TransientModelError`, as it is online."""
        try:
            if self.api == "chat":
                return [self._chat_completion(ChatCompletion.model_validate(body))]
            return self._completions_of(APICompletion.model_validate(body), prompts)
        except ValueError as e:
            raise TransientModelError(
                f"{self._where}: unreadable response ({type(e).__name__})", reason="malformed"
            ) from None

    def api_client(self) -> openai.AsyncOpenAI:
        """The SDK client of the running event loop (files and batches go through it too)."""
        return self._client

    async def complete(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        try:
            if self.api == "chat":
                return [await self._chat(self.request_body([p], sampling)[1]) for p in prompts]
            _, body = self.request_body(prompts, sampling)
            body.pop("prompt")
            return await self._completions(prompts, body)
        except openai.APIStatusError as e:
            raise self._classify(e) from None
        except openai.APITimeoutError as e:
            if _connection_failed(e):
                raise TransientModelError(
                    f"{self._where}: connection failed ({_connection_failed(e)})",
                    reason="connection",
                ) from None
            raise TransientModelError(
                f"{self._where}: request timed out", reason="timeout"
            ) from None
        except openai.APIConnectionError as e:
            raise TransientModelError(
                f"{self._where}: connection failed ({self._scrub(str(e.__cause__ or e))})",
                reason="connection",
            ) from None
        except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as e:
            raise TransientModelError(
                f"{self._where}: unreadable response ({type(e).__name__})", reason="malformed"
            ) from None

    async def _completions(self, prompts: list[str], params: dict[str, Any]) -> list[Completion]:
        if len(prompts) > 1 and self.max_batch > 1:
            try:
                return await self._completions_call(prompts, params)
            except openai.APIStatusError as e:
                if e.status_code not in _NO_LIST_STATUS:
                    raise
                # Some servers (llama.cpp's, Ollama) refuse a list of prompts. Tell that from a
                # passing server error: the list again, then the first prompt alone. Only when
                # the list fails twice and a single prompt goes through, send prompts one by one
                # from now on.
                try:
                    return await self._completions_call(prompts, params)
                except openai.APIStatusError as again:
                    if again.status_code not in _NO_LIST_STATUS:
                        raise
                first = await self._completions_call(prompts[:1], params)
                self.max_batch = 1
                rest = await asyncio.gather(
                    *(self._completions_call([p], params) for p in prompts[1:])
                )
                return first + [r[0] for r in rest]
        if len(prompts) == 1:
            return await self._completions_call(prompts, params)
        results = await asyncio.gather(*(self._completions_call([p], params) for p in prompts))
        return [r[0] for r in results]

    async def _completions_call(
        self, prompts: list[str], params: dict[str, Any]
    ) -> list[Completion]:
        response = await self._client.post(
            "/completions",
            body={"prompt": prompts if len(prompts) > 1 else prompts[0], **params},
            cast_to=APICompletion,
        )
        return self._completions_of(response, len(prompts))

    def _completions_of(self, response: APICompletion, prompts: int) -> list[Completion]:
        choices = list(response.choices or [])
        if len(choices) != prompts:
            raise TransientModelError(
                f"{self._where}: {len(choices)} choices for {prompts} prompts",
                reason="empty_choices" if not choices else "malformed",
            )
        choices.sort(key=lambda c: c.index)
        usage = response.usage
        out = []
        for k, choice in enumerate(choices):
            out.append(
                Completion(
                    text=choice.text or "",
                    finish_reason=choice.finish_reason or "stop",
                    # The server reports usage per request: book it on the first completion.
                    prompt_tokens=(usage.prompt_tokens if usage and k == 0 else 0),
                    completion_tokens=(usage.completion_tokens if usage and k == 0 else 0),
                )
            )
        return out

    async def _chat(self, body: dict[str, Any]) -> Completion:
        response = await self._client.post("/chat/completions", body=body, cast_to=ChatCompletion)
        return self._chat_completion(response)

    def _chat_completion(self, response: ChatCompletion) -> Completion:
        if not response.choices:
            raise TransientModelError(f"{self._where}: no choices", reason="empty_choices")
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            text=(choice.message.content if choice.message else None) or "",
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    def _classify(self, e: openai.APIStatusError) -> Exception:
        status = e.status_code
        if status == 429:
            if _error_code(e) == "insufficient_quota":
                return self._fatal(e)
            return TransientModelError(
                f"{self._where}: rate limited (429)",
                reason="429",
                retry_after=_retry_after(e.response),
            )
        if status in (408, 409) or status >= 500:
            return TransientModelError(
                f"{self._where}: server error {status}",
                reason=str(status),
                retry_after=_retry_after(e.response),
            )
        return self._fatal(e)

    def _fatal(self, e: openai.APIStatusError) -> ModelError:
        what = _FATAL_STATUS.get(e.status_code, f"HTTP {e.status_code}")
        detail = self._scrub(_error_message(e))
        hint = ""
        if e.status_code == 401:
            hint = " (check `api_key` / OPENAI_API_KEY)"
        elif e.status_code == 404:
            hint = f" (is model '{self.model}' served at {self._where}?)"
        return ModelError(f"{self._where}: {what}: {detail}{hint}")

    async def aclose(self) -> None:
        # Only this loop's client can be closed here; one made on an earlier, finished loop
        # has had its connections torn down with that loop.
        client = self._clients.pop(id(asyncio.get_running_loop()), None)
        self._clients.clear()
        if client is not None:
            await client.close()


def _connection_failed(e: BaseException) -> str | None:
    """What failed, where a "timeout" is really a connection refused or cut (the aiohttp
    transport reports a refused connection as a connect timeout): a router must tell a server
    that is gone from one that is slow."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ConnectionError) or type(seen).__name__ == "ServerDisconnectedError":
            return f"{type(seen).__name__}: {seen}"[:200]
        seen = seen.__cause__ or seen.__context__
    return None


def _retry_after(response: Any) -> float | None:
    if response is None:
        return None
    headers = response.headers
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        return seconds / 1000 if name.endswith("-ms") else seconds
    return None


def _error_code(e: openai.APIStatusError) -> str | None:
    body = e.body if isinstance(e.body, dict) else {}
    inner = body.get("error", body) if isinstance(body, dict) else {}
    return inner.get("code") if isinstance(inner, dict) else None


def _error_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"]).splitlines()[0][:300]
    return str(e).splitlines()[0][:300]
