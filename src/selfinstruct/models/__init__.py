"""Backends behind the one `Model` interface, and `load_model` to build one from a spec."""

from __future__ import annotations

import os
from collections.abc import Sequence

from selfinstruct.errors import ConfigError
from selfinstruct.models.base import Completion, Model, ModelInfo, Sampling, Usage, safe_url
from selfinstruct.models.spec import ModelSpec, ReplicaSettings, parse_spec

__all__ = [
    "Completion",
    "Model",
    "ModelInfo",
    "ModelSpec",
    "ReplicaSettings",
    "Sampling",
    "Usage",
    "base_urls",
    "load_model",
    "parse_spec",
]


def load_model(
    spec: str | ModelSpec,
    *,
    base_url: str | Sequence[str] | None = None,
    api_key: str | None = None,
    timeout: float = 120.0,
    seed: int = 0,
    replicas: ReplicaSettings | None = None,
) -> Model:
    """Build the model a spec names. Imports a backend only when it is used.

    `base_url` may list several servers (or OPENAI_BASE_URL hold them, comma-separated): the
    model is then a fleet that routes each request to one of them. `replicas` puts copies of
    a local (or vLLM) model on a Ray cluster, routed the same way.
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.backend == "vllm" or (replicas is not None and parsed.backend == "local"):
        from selfinstruct.models.ray_replicas import RayReplicaModel

        return RayReplicaModel.start(
            parsed, replicas or ReplicaSettings(), seed=seed, timeout=timeout
        )
    if replicas is not None:
        raise ConfigError(
            f"`replicas`, `ray_address`: {parsed.backend} models are servers; give several"
            " `base_url` instead"
        )
    if parsed.backend == "local":
        from selfinstruct.models.llamacpp import LlamaCppModel

        return LlamaCppModel.from_spec(parsed, seed=seed)
    from selfinstruct.models.openai import OpenAIModel

    urls = base_urls(base_url)
    if len(urls) <= 1:
        return OpenAIModel.from_spec(
            parsed, base_url=urls[0] if urls else None, api_key=api_key, timeout=timeout
        )
    from selfinstruct.models.fleet import FleetModel

    members: list[Model] = [
        OpenAIModel.from_spec(parsed, base_url=url, api_key=api_key, timeout=timeout)
        for url in urls
    ]
    labels = [safe_url(url.rstrip("/")) for url in urls]
    info = ModelInfo("openai", parsed.name, parsed.api, {"base_urls": ", ".join(labels)})
    return FleetModel(members, labels, info=info)


def base_urls(given: str | Sequence[str] | None) -> list[str]:
    """The servers to use: those given (each may hold a comma-separated list), else those in
    OPENAI_BASE_URL, else none (the OpenAI API). A URL given twice is used once."""
    if given is None:
        given = os.environ.get("OPENAI_BASE_URL") or ()
    items = [given] if isinstance(given, str) else list(given)
    urls: list[str] = []
    for item in items:
        for url in item.split(","):
            url = url.strip()
            if url and url not in urls:
                urls.append(url)
    return urls
