"""The training loop and its checkpoints: one optimiser step at a time, the held-out loss at
each epoch's end, limits, and a checkpoint every few minutes that a rerun continues from."""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfinstruct.errors import ConfigError, ModelError
from selfinstruct.finetune.base import bf16_supported
from selfinstruct.finetune.encoding import Encoded, Tokenized, batches, collate
from selfinstruct.progress import Reporter

if TYPE_CHECKING:
    from selfinstruct.finetune.local import LocalConfig, _Run


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    remaining = max(1, total - warmup)
    return max(0.0, 1.0 - (step - warmup) / remaining)


def supervised_loss(torch: Any, causal_lm: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """Mean cross-entropy over the response tokens, and their count.

    Same value as transformers' `labels=` loss, but the output layer (49K x 576 for SmolLM2,
    a fifth of the model's work) runs only on the positions that predict a response token.
    """
    hidden = causal_lm.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep])
    n = int(keep.sum())
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep]), n


class ThreadTuner:
    """Trains with whichever is faster, one thread or all cores, and checks again now and then.

    On a machine that other work keeps busy, all-cores training can be several times slower
    than one thread (OpenMP's threads spin waiting for a core); on an idle machine all cores
    win. Step 1 warms up on one thread, steps 2 and 3 measure each choice; afterwards one step
    in `probe_every` re-measures the other choice. Speeds are tokens per second, smoothed.
    """

    def __init__(self, torch: Any, max_threads: int, *, fixed: bool, probe_every: int = 50):
        self.torch = torch
        self.max_threads = max_threads
        self.choices = [max_threads] if fixed or max_threads <= 1 else [1, max_threads]
        self.speed: dict[int, float] = {}
        self.probe_every = probe_every
        self.current = self.choices[0]
        self.steps = 0
        torch.set_num_threads(self.current)

    def _best(self) -> int:
        return max(self.speed, key=lambda c: self.speed[c])

    def before_step(self) -> None:
        if len(self.choices) == 1:
            return
        n = self.steps
        if n == 0:
            wanted = self.choices[0]
        elif n == 1:
            wanted = self.choices[1]
        elif n == 2:
            wanted = self.choices[0]
        elif n % self.probe_every == 0:
            best = self._best()
            wanted = next(c for c in self.choices if c != best)
        else:
            wanted = self._best()
        if wanted != self.current:
            self.torch.set_num_threads(wanted)
            self.current = wanted

    def after_step(self, tokens: int, seconds: float) -> None:
        if self.steps > 0 and seconds > 0:
            rate = tokens / seconds
            old = self.speed.get(self.current)
            self.speed[self.current] = rate if old is None else 0.5 * old + 0.5 * rate
        self.steps += 1


class Stop(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _use_bf16(cfg: LocalConfig) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported())


def _make_trainable(model: Any, cfg: LocalConfig, peft: Any) -> Any:
    """The model itself with every weight trainable (full), else a LoRA wrapper around it."""
    if cfg.full:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    lora = peft.LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(LORA_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return peft.get_peft_model(model, lora)


def _new_progress() -> dict[str, Any]:
    """The run's position and measurements; saved in each checkpoint."""
    return {
        "step": 0,
        "tokens": 0,
        "response_tokens": 0,
        "train_seconds": 0.0,
        "losses": [],  # (step, mean loss of the steps since the last entry)
        "eval": [],  # (epoch, held-out loss)
        "invocations": 0,
    }


@dataclass
class Training:
    """The state a training loop updates, and the one step it repeats."""

    run: _Run
    data: Tokenized
    model: Any  # what is trained: the base model (full) or its LoRA wrapper
    causal_lm: Any  # the causal LM inside `model`
    params: list[Any]
    optimizer: Any
    scheduler: Any
    steps_per_epoch: int
    total_steps: int
    use_bf16: bool
    progress: dict[str, Any] = field(default_factory=_new_progress)

    @property
    def torch(self) -> Any:
        return self.run.torch

    @property
    def cfg(self) -> LocalConfig:
        return self.run.cfg

    def autocast(self) -> Any:
        if self.use_bf16:
            return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
        return contextlib.nullcontext()

    def held_out_loss(self) -> float | None:
        held, size = self.data.held, self.cfg.batch_size
        if not held:
            return None
        self.model.eval()
        total, count = 0.0, 0
        with self.torch.no_grad(), self.autocast():
            for i in range(0, len(held), size):
                batch = collate(self.torch, held[i : i + size], self.data.pad_id)
                loss, n = supervised_loss(self.torch, self.causal_lm, batch)
                total += float(loss) * n
                count += n
        self.model.train()
        return total / max(1, count)

    def save_checkpoint(self) -> None:
        _save_checkpoint(
            self.torch,
            self.run.checkpoint_path,
            self.run.fingerprint,
            self.model,
            self.optimizer,
            self.scheduler,
            self.progress,
            self.cfg,
        )

    def next_batch(self) -> list[Encoded]:
        epoch, index = divmod(self.progress["step"], self.steps_per_epoch)
        train = self.data.train
        batch_ids = batches(len(train), self.cfg.batch_size, self.cfg.seed, epoch)[index]
        return [train[i] for i in batch_ids]

    def optimise(self, items: list[Encoded], tuner: ThreadTuner) -> tuple[float, int, float]:
        """One optimiser step on `items`: (loss, tokens, seconds)."""
        torch = self.torch
        batch = collate(torch, items, self.data.pad_id)
        n_tokens = int(batch["attention_mask"].sum())
        tuner.before_step()
        t0 = time.perf_counter()
        with self.autocast():
            loss, _ = supervised_loss(torch, self.causal_lm, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        tuner.after_step(n_tokens, dt)
        value = loss.item()
        if not math.isfinite(value):
            raise ModelError(f"the loss became {value} at step {self.progress['step']}: lower `lr`")
        return value, n_tokens, dt


def start_training(run: _Run, model: Any, data: Tokenized) -> Training:
    cfg, torch = run.cfg, run.torch
    trainable = _make_trainable(model, cfg, run.stack["peft"])
    causal_lm = trainable if cfg.full else trainable.get_base_model()
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, round(total_steps * cfg.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, warmup)
    )
    return Training(
        run=run,
        data=data,
        model=trainable,
        causal_lm=causal_lm,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        use_bf16=_use_bf16(cfg),
    )


def resume(training: Training, state: dict[str, Any] | None, reporter: Reporter) -> None:
    """Continue from a checkpoint's state, if any; count this invocation."""
    progress = training.progress
    if state is not None:
        _restore(
            training.torch,
            state,
            training.model,
            training.optimizer,
            training.scheduler,
            progress,
            training.cfg.full,
        )
        reporter.info(
            f"resuming from {training.run.checkpoint_path} at step"
            f" {progress['step']}/{training.total_steps} ({progress['tokens']} tokens trained)"
        )
    progress["invocations"] += 1


@dataclass
class _Invocation:
    """This invocation's own counters (a checkpoint does not keep them)."""

    started: float = field(default_factory=time.monotonic)
    last_checkpoint: float = field(default_factory=time.monotonic)
    tokens: int = 0
    seconds: float = 0.0
    window: list[float] = field(default_factory=list)  # losses not yet in progress["losses"]
    ema: float | None = None

    def flush_window(self, progress: dict[str, Any]) -> None:
        progress["losses"].append((progress["step"], sum(self.window) / len(self.window)))
        self.window = []


def train(training: Training, tuner: ThreadTuner, reporter: Reporter) -> str | None:
    """Train until the last step or a limit; the limit that stopped it (None: complete)."""
    progress, total_steps = training.progress, training.total_steps
    if progress["step"] == 0 and not progress["eval"]:
        before = training.held_out_loss()
        if before is not None:
            progress["eval"].append((0, before))
    now = _Invocation()
    training.model.train()
    try:
        with reporter.bar("fine-tuning", total=total_steps, completed=progress["step"]) as bar:
            while progress["step"] < total_steps:
                _check_limits(training.cfg, progress, now)
                items = training.next_batch()
                loss, n_tokens, seconds = training.optimise(items, tuner)
                _record_step(training, now, items, loss, n_tokens, seconds)
                bar.advance()
                bar.note({"loss": f"{now.ema:.3f}", "tok/s": f"{now.tokens / now.seconds:,.0f}"})
                _checkpoint_when_due(training, now)
    except Stop as stop:
        if now.window:
            now.flush_window(progress)
        training.save_checkpoint()
        return stop.reason
    except KeyboardInterrupt:
        training.save_checkpoint()
        raise
    return None


def _check_limits(cfg: LocalConfig, progress: dict[str, Any], now: _Invocation) -> None:
    if cfg.max_train_tokens is not None and progress["tokens"] >= cfg.max_train_tokens:
        raise Stop("max_train_tokens")
    if cfg.max_minutes is not None and time.monotonic() - now.started >= cfg.max_minutes * 60:
        raise Stop("max_minutes")


def _record_step(
    training: Training,
    now: _Invocation,
    items: list[Encoded],
    loss: float,
    n_tokens: int,
    seconds: float,
) -> None:
    progress = training.progress
    progress["step"] += 1
    progress["tokens"] += n_tokens
    progress["response_tokens"] += sum(e.n_response for e in items)
    progress["train_seconds"] += seconds
    now.tokens += n_tokens
    now.seconds += seconds
    now.window.append(loss)
    now.ema = loss if now.ema is None else 0.9 * now.ema + 0.1 * loss
    steps_per_epoch = training.steps_per_epoch
    if len(now.window) >= max(1, steps_per_epoch // 4) or progress["step"] == training.total_steps:
        now.flush_window(progress)


def _checkpoint_when_due(training: Training, now: _Invocation) -> None:
    """At each epoch's end (after measuring the held-out loss) and every few minutes."""
    progress, steps_per_epoch = training.progress, training.steps_per_epoch
    if progress["step"] % steps_per_epoch == 0:
        held = training.held_out_loss()
        if held is not None:
            progress["eval"].append((progress["step"] // steps_per_epoch, held))
        training.save_checkpoint()
        now.last_checkpoint = time.monotonic()
    if time.monotonic() - now.last_checkpoint >= training.cfg.checkpoint_minutes * 60:
        training.save_checkpoint()
        now.last_checkpoint = time.monotonic()


def _trainable_state(model: Any, full: bool) -> dict[str, Any]:
    if full:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(
    torch: Any,
    path: Path,
    fingerprint: dict[str, Any],
    model: Any,
    optimizer: Any,
    scheduler: Any,
    progress: dict[str, Any],
    cfg: LocalConfig,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "fingerprint": fingerprint,
        "weights": _trainable_state(model, cfg.full),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    torch: Any, path: Path, fingerprint: dict[str, Any], out: Path
) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise ConfigError(
            f"{path}: unreadable checkpoint ({e}); add `restart` to start over"
        ) from None
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{out} holds a checkpoint of another run (different data or settings): choose"
            " another `out`, or add `restart` to replace it"
        )
    return state


def _restore(
    torch: Any,
    state: dict[str, Any],
    model: Any,
    optimizer: Any,
    scheduler: Any,
    progress: dict[str, Any],
    full: bool,
) -> None:
    weights = state["weights"]
    if full:
        model.load_state_dict(weights)
    else:
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                named[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    progress.update(state["progress"])
    torch.set_rng_state(state["torch_rng"])


def remove_checkpoint(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()
