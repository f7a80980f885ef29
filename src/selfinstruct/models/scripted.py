"""A model whose answers you script: a test double for your own tests of the pipeline.

Like httpx's MockTransport, it stands where the real thing would, so everything above it (the
engine's retries and budgets, the steps' parsing and filters, the run folder) runs for real:

    model = ScriptedModel(lambda prompt: "Yes" if "classification" in prompt else "No")
    model = ScriptedModel(["first answer", ("cut answer", "length"), TransientModelError("503")])
    si.Pipeline(out=tmp_path, model=model).run(num_instructions=5)

An answer is the text, a (text, finish_reason) pair, or an exception to raise for the request
carrying that prompt (a `TransientModelError` is retried by the engine like a server's 503). A
function is called with each prompt; a sequence is answered in order, one entry a prompt.
Every prompt and its sampling are kept (`prompts`, `samplings`) for the test to look at. Token
counts are the words of the prompt and of the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Union

from selfinstruct.errors import ModelError
from selfinstruct.models.base import Completion, Model, ModelInfo, Sampling

Answer = Union[str, tuple[str, str], BaseException]  # noqa: UP007 (a runtime alias)


class ScriptedModel(Model):
    """A `Model` answering from a function of the prompt or from a list of answers."""

    def __init__(
        self,
        answers: Callable[[str], Answer] | Iterable[Answer],
        *,
        max_batch: int = 1,
        name: str = "scripted",
        api: str = "completions",
    ):
        if callable(answers):
            self._answer = answers
        else:
            queue = list(answers)
            lock = threading.Lock()

            def next_answer(_prompt: str) -> Answer:
                with lock:
                    if not queue:
                        raise ModelError("ScriptedModel: no answer left for this prompt")
                    return queue.pop(0)

            self._answer = next_answer
        self.max_batch = max_batch
        self._info = ModelInfo(backend="scripted", name=name, api=api)
        self.prompts: list[str] = []
        self.samplings: list[Sampling] = []

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def complete(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        out = []
        for prompt in prompts:
            self.prompts.append(prompt)
            self.samplings.append(sampling)
            answer = self._answer(prompt)
            if isinstance(answer, BaseException):
                raise answer
            text, finish = (answer, "stop") if isinstance(answer, str) else answer
            out.append(Completion(text, finish, len(prompt.split()), len(text.split())))
        return out
