"""Close the loop: fine-tune a model on the generated data, locally or through OpenAI.

    from selfinstruct.finetune import read_examples, train_local, run_openai_finetune

`read_examples` reads every format the pipeline writes (and the original release's GPT-3
file). `train_local` (needs ``pip install 'selfinstruct[finetune]'``) trains a LoRA or the whole
model with transformers and writes a GGUF adapter llama.cpp applies on the untouched base
(spec ``local?lora=OUT``). `run_openai_finetune` drives the OpenAI fine-tuning API and resumes
the job it started. Importing this package loads neither torch nor openai.
"""

from __future__ import annotations

from typing import Any

from selfinstruct.finetune.data import Example, read_examples, split_examples

__all__ = [
    "Example",
    "LocalConfig",
    "OpenAIConfig",
    "read_examples",
    "run_openai_finetune",
    "split_examples",
    "train_local",
]

_LAZY = {
    "LocalConfig": "selfinstruct.finetune.local",
    "train_local": "selfinstruct.finetune.local",
    "OpenAIConfig": "selfinstruct.finetune.openai_jobs",
    "run_openai_finetune": "selfinstruct.finetune.openai_jobs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
