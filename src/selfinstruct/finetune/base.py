"""Loading the base model for training: the training stack (torch, transformers, peft), the
GGUF base file, dequantised by transformers with its own tokenizer and chat template."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import platform
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError, MissingExtraError, ModelError

INSTALL_HINT = "pip install 'selfinstruct[finetune]'"


def import_training_stack() -> dict[str, Any]:
    """torch, transformers, peft and gguf, or MissingExtraError saying how to get them."""
    # Everything is read from local files; a hub must never be asked for anything.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    missing = []
    modules: dict[str, Any] = {}
    for name in ("torch", "transformers", "peft", "gguf"):
        try:
            modules[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(f"local fine-tuning needs {', '.join(missing)}: {INSTALL_HINT}")
    return modules


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("selfinstruct", "torch", "transformers", "peft", "gguf", "llama-cpp-python"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def resolve_base(spec: str) -> Path:
    """The GGUF file a `local[:PATH]` spec names."""
    from selfinstruct.models.spec import parse_spec

    parsed = parse_spec(spec)
    if parsed.backend != "local":
        raise ConfigError(f"`base` {spec!r}: the local backend trains a GGUF file (local[:PATH])")
    if parsed.options:
        raise ConfigError(f"`base` {spec!r}: options do not apply to a base model")
    if parsed.name:
        path = Path(parsed.name).expanduser()
        if not path.is_file():
            raise ConfigError(f"`base`: GGUF file {str(path)!r} not found")
        return path
    from selfinstruct.models.llamacpp import default_model_path

    return default_model_path()


def bf16_supported() -> bool:
    """True where the CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16
    autocast is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if platform.system() != "Darwin" else kb / 1024 / 1024


@contextlib.contextmanager
def _cached_tensor_name_map(gguf: Any) -> Iterator[None]:
    """transformers rebuilds gguf's tensor-name table once per module while it loads a GGUF
    (about 400 times, 15 s on 2 cores); the table is a pure function of its arguments."""
    original = getattr(gguf, "get_tensor_name_map", None)
    if original is None:
        yield
        return
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _dtype_argument(transformers: Any, dtype: Any) -> dict[str, Any]:
    """transformers 4.56 renamed `torch_dtype` to `dtype` (the old name now warns)."""
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_base(path: Path, stack: dict[str, Any]) -> tuple[Any, Any]:
    """(tokenizer, model) from one GGUF file, weights dequantised to fp32."""
    torch, transformers = stack["torch"], stack["transformers"]
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    folder, name = str(path.parent), path.name
    try:
        # transformers draws its own tqdm bar while it dequantises; ours is the one to show
        with _cached_tensor_name_map(stack["gguf"]), contextlib.redirect_stderr(io.StringIO()):
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, **_dtype_argument(transformers, torch.float32)
            )
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise ModelError(f"transformers cannot load {path}: {e}") from None
    # A GGUF-loaded model carries a "gguf quantizer" tag although its weights are plain fp32
    # now; transformers 5 then refuses to save it. Nothing quantised is left, so drop the tag.
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            with contextlib.suppress(AttributeError):
                setattr(model, attr, None)
    if hasattr(model.config, "quantization_config"):
        with contextlib.suppress(AttributeError):
            del model.config.quantization_config
    model.config.use_cache = False
    return tokenizer, model
