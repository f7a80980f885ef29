"""Backends behind the one `Model` interface, and `load_model` to build one from a spec."""

from __future__ import annotations

from selfinstruct.models.base import Completion, Model, ModelInfo, Sampling, Usage
from selfinstruct.models.spec import ModelSpec, parse_spec

__all__ = [
    "Completion",
    "Model",
    "ModelInfo",
    "ModelSpec",
    "Sampling",
    "Usage",
    "load_model",
    "parse_spec",
]


def load_model(
    spec: str | ModelSpec,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 120.0,
    seed: int = 0,
) -> Model:
    """Build the model a spec names. Imports a backend only when it is used."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.backend == "local":
        from selfinstruct.models.llamacpp import LlamaCppModel

        return LlamaCppModel.from_spec(parsed, seed=seed)
    from selfinstruct.models.openai import OpenAIModel

    return OpenAIModel.from_spec(parsed, base_url=base_url, api_key=api_key, timeout=timeout)
