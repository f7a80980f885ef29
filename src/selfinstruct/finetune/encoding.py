"""Encoding examples for training: the chat template around one user and one assistant turn,
the loss mask over the assistant's tokens, and the batches of an epoch."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from selfinstruct.errors import ConfigError, ModelError
from selfinstruct.finetune.data import Example
from selfinstruct.progress import Reporter

if TYPE_CHECKING:
    from selfinstruct.finetune.local import _Run


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 where the loss does not count

    @property
    def n_response(self) -> int:
        return sum(1 for x in self.labels if x != -100)


class ChatEncoder:
    """Turns examples into token ids with the tokenizer's chat template.

    The prompt is the template up to the assistant's turn (what llama.cpp's chat API sends);
    the target is the response followed by the template's end-of-turn token, found from the
    template itself ("<|im_end|>" for SmolLM2): some tokenizers report a wrong EOS.
    """

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError("the base model has no chat template in its GGUF metadata")
        self.end_text = self._find_end_text()
        self.end_ids = tokenizer(self.end_text, add_special_tokens=False)["input_ids"]

    def _find_end_text(self) -> str:
        marker = "\x00RESPONSE\x00"
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False)
        tail = rendered.split(marker, 1)[1] if marker in rendered else ""
        specials = sorted(
            (s for s in self.tokenizer.all_special_tokens if s and s in tail),
            key=tail.index,
        )
        if specials:
            return specials[0]
        eos = self.tokenizer.eos_token
        if not eos:
            raise ModelError("cannot tell the base model's end-of-turn token")
        return eos

    def prompt_text(self, example: Example) -> str:
        messages = [] if example.system is None else [{"role": "system", "content": example.system}]
        messages.append({"role": "user", "content": example.user})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def encode(self, example: Example) -> Encoded | None:
        """Token ids and labels; None when the prompt alone fills max_length."""
        tok = self.tokenizer
        prompt = tok(self.prompt_text(example), add_special_tokens=False)["input_ids"]
        response = tok(example.output, add_special_tokens=False)["input_ids"] + self.end_ids
        room = self.max_length - len(prompt)
        if room < 1:
            return None
        response = response[:room]
        return Encoded(prompt + response, [-100] * len(prompt) + response)


@dataclass
class Tokenized:
    train: list[Encoded]
    held: list[Encoded]
    too_long: int  # examples dropped: the prompt alone exceeds max_length
    pad_id: int


def tokenize(run: _Run, tokenizer: Any, reporter: Reporter) -> Tokenized:
    max_length = run.cfg.max_length
    encoder = ChatEncoder(tokenizer, max_length)
    train_enc = [encoder.encode(e) for e in run.train_ex]
    held_enc = [encoder.encode(e) for e in run.held_ex]
    too_long = sum(1 for e in train_enc + held_enc if e is None)
    train_set = [e for e in train_enc if e is not None]
    held_set = [e for e in held_enc if e is not None]
    if not train_set:
        raise ConfigError(f"no training example fits `max_length` {max_length}")
    if too_long:
        reporter.warn(f"{too_long} example(s) dropped: the prompt alone exceeds --max-length")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = encoder.end_ids[-1]
    return Tokenized(train_set, held_set, too_long, pad_id)


def batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def collate(torch: Any, items: list[Encoded], pad_id: int) -> dict[str, Any]:
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
