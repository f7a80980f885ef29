"""Fine-tune a GGUF model on this machine: transformers + peft, offline, resumable.

The base is a GGUF file (by default the embedded SmolLM2-135M-Instruct): transformers
dequantises it and reads its tokenizer and chat template from the same file, so nothing is
fetched from a hub. Each example becomes the model's chat template around one user turn and
one assistant turn; the loss counts only the assistant's tokens and the end-of-turn token.

The result is usable at once by every command: ``OUT/adapter.gguf`` is a llama.cpp LoRA
adapter applied on top of the untouched base file (model spec ``local?lora=OUT``), ``OUT/peft/``
the same adapter for transformers, ``OUT/finetune.json`` what was done and measured. With
``full=True`` every weight is trained and ``OUT/model.gguf`` is a complete model
(``local:OUT/model.gguf``).

A run checkpoints to ``OUT/checkpoint/`` (trainable weights, optimiser, schedule, position,
random state) every few minutes, at each epoch's end, when a limit stops it and on Ctrl-C; the
same command run again continues from there.

This module runs a fine-tune from start to end; the work is in one module per concern:
`base.py` loads the training stack and the base model, `encoding.py` turns examples into
tokens and batches, `loop.py` trains and checkpoints, `export.py` writes the GGUF files, and
`runfolder.FinetuneFolder` names the files of the output folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError
from selfinstruct.finetune.base import (
    import_training_stack,
    load_base,
    peak_rss_mib,
    resolve_base,
    versions,
)
from selfinstruct.finetune.data import Example, read_examples, split_examples
from selfinstruct.finetune.encoding import Tokenized, tokenize
from selfinstruct.finetune.export import (
    FULL_TYPES,
    check_exportable,
    export_trained,
    read_gguf_header,
)
from selfinstruct.finetune.loop import (
    ThreadTuner,
    Training,
    load_checkpoint,
    remove_checkpoint,
    resume,
    start_training,
    train,
)
from selfinstruct.io import write_atomic, write_jsonl_atomic
from selfinstruct.progress import Reporter
from selfinstruct.runfolder import FinetuneFolder


@dataclass
class LocalConfig:
    """Settings of a local fine-tuning run; defaults suit a 135M model on a laptop CPU."""

    base: str = "local"  # a model spec: local, or local:/path/model.gguf
    full: bool = False
    epochs: int = 3
    lr: float | None = None  # None: 1e-3 for LoRA, 5e-5 for full fine-tuning
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    batch_size: int = 8
    max_length: int = 512
    eval_fraction: float = 0.05
    seed: int = 0
    precision: str = "auto"  # auto | bf16 | fp32
    max_minutes: float | None = None  # this invocation's training time
    max_train_tokens: int | None = None  # across the whole run, resumes included
    warmup_fraction: float = 0.05
    weight_decay: float = 0.0
    checkpoint_minutes: float = 5.0
    gguf_type: str = "f16"  # full fine-tuning's output: f16, q8_0 or f32
    threads: int | None = None
    restart: bool = False

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 5e-5 if self.full else 1e-3

    def check(self) -> None:
        if self.epochs < 1:
            raise ConfigError("`epochs` must be at least 1")
        if self.batch_size < 1:
            raise ConfigError("`batch_size` must be at least 1")
        if self.max_length < 16:
            raise ConfigError("`max_length` must be at least 16 tokens")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError("`eval_fraction` must be in [0, 1)")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError("`precision` must be auto, bf16 or fp32")
        if self.gguf_type not in FULL_TYPES:
            raise ConfigError(f"`gguf_type` must be one of {', '.join(FULL_TYPES)}")
        if self.learning_rate <= 0:
            raise ConfigError("`lr` must be positive")
        if not self.full and (self.lora_r < 1 or self.lora_alpha <= 0):
            raise ConfigError("`lora_r` must be at least 1 and `lora_alpha` positive")

    def fingerprint_fields(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be continued (limits may change freely)."""
        keep = (
            "full lr lora_r lora_alpha lora_dropout batch_size max_length eval_fraction seed"
            " epochs warmup_fraction weight_decay"
        ).split()
        out = {k: getattr(self, k) for k in keep}
        out["lr"] = self.learning_rate
        return out


@dataclass
class TrainResult:
    out_dir: Path
    status: str  # complete | stopped
    stop_reason: str | None
    report: dict[str, Any] = field(default_factory=dict)


def _data_digest(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.system, e.user, e.output], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def train_local(
    data: str | Path,
    out_dir: str | Path,
    config: LocalConfig | None = None,
    *,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Fine-tune on `data` (any supported format) into `out_dir`; see the module docstring."""
    cfg = config or LocalConfig()
    cfg.check()
    reporter = reporter or Reporter(quiet=True)
    run = _open_run(data, Path(out_dir), cfg, reporter)
    if cfg.restart:
        _clear_outputs(run.out)
    state = load_checkpoint(run.torch, run.checkpoint_path, run.fingerprint, run.out)
    if state is None:
        previous = _completed_report(run)
        if previous is not None:
            reporter.info(f"{run.out}: this fine-tuning is already complete; nothing to do")
            return TrainResult(run.out, "complete", None, previous)
    _write_split(run)
    run.torch.manual_seed(cfg.seed)
    tokenizer, model, load_seconds = _load_base_timed(run, reporter)
    tokenized = tokenize(run, tokenizer, reporter)
    training = start_training(run, model, tokenized)
    resume(training, state, reporter)
    tuner = ThreadTuner(run.torch, _max_threads(cfg), fixed=cfg.threads is not None)
    stop_reason = train(training, tuner, reporter)
    return _finish(training, tuner, stop_reason, load_seconds)


@dataclass
class _Run:
    """What one run is about: its settings, examples, base model and output folder."""

    cfg: LocalConfig
    data: str | Path
    out: Path
    stack: dict[str, Any]
    base_path: Path
    base_header: Any
    examples: list[Example]
    train_ex: list[Example]
    held_ex: list[Example]
    fingerprint: dict[str, Any]

    @property
    def torch(self) -> Any:
        return self.stack["torch"]

    @property
    def checkpoint_path(self) -> Path:
        return FinetuneFolder(self.out).checkpoint

    @property
    def report_path(self) -> Path:
        return FinetuneFolder(self.out).report_file


def _open_run(data: str | Path, out: Path, cfg: LocalConfig, reporter: Reporter) -> _Run:
    stack = import_training_stack()
    base_path = resolve_base(cfg.base)
    base_header = read_gguf_header(base_path)
    check_exportable(base_header)
    examples = read_examples(data, warn=reporter.warn)
    train_ex, held_ex = split_examples(examples, cfg.eval_fraction, cfg.seed)
    fingerprint = {
        "config": cfg.fingerprint_fields(),
        "data": _data_digest(examples),
        "base": {"path": str(base_path.resolve()), "bytes": base_path.stat().st_size},
    }
    return _Run(
        cfg, data, out, stack, base_path, base_header, examples, train_ex, held_ex, fingerprint
    )


def _completed_report(run: _Run) -> dict[str, Any] | None:
    """The report of this same run when it already completed; ConfigError when the output
    folder holds another run's report."""
    previous = FinetuneFolder(run.out).training_report()
    if previous is None:
        return None
    if previous.fingerprint == run.fingerprint and previous.complete:
        return previous.data
    if previous.fingerprint != run.fingerprint:
        raise ConfigError(
            f"{run.out} holds another fine-tuning run (different data or settings): choose"
            " another `out`, or add `restart` to replace it"
        )
    return None


def _write_split(run: _Run) -> None:
    run.out.mkdir(parents=True, exist_ok=True)
    folder = FinetuneFolder(run.out)
    write_jsonl_atomic(folder.heldout, (e.to_dict() for e in run.held_ex))
    write_jsonl_atomic(folder.train, (e.to_dict() for e in run.train_ex))


def _max_threads(cfg: LocalConfig) -> int:
    return cfg.threads or os.cpu_count() or 1


def _load_base_timed(run: _Run, reporter: Reporter) -> tuple[Any, Any, float]:
    """(tokenizer, model, seconds taken)."""
    started = time.perf_counter()
    reporter.info(f"loading {run.base_path.name} with transformers (dequantising to fp32)...")
    tokenizer, model = load_base(run.base_path, run.stack)
    return tokenizer, model, time.perf_counter() - started


def _finish(
    training: Training, tuner: ThreadTuner, stop_reason: str | None, load_seconds: float
) -> TrainResult:
    """Export the weights, write the report; drop the checkpoint once complete."""
    run = training.run
    status = "complete" if training.progress["step"] >= training.total_steps else "stopped"
    training.model.eval()
    outputs = export_trained(run.out, training.model, run.cfg, run.base_header, run.stack)
    report = _report(training, tuner, status, stop_reason, outputs, load_seconds)
    write_atomic(run.report_path, json.dumps(report, indent=2) + "\n")
    if status == "complete":
        remove_checkpoint(run.checkpoint_path)
    return TrainResult(run.out, status, stop_reason, report)


def _report(
    training: Training,
    tuner: ThreadTuner,
    status: str,
    stop_reason: str | None,
    outputs: dict[str, str],
    load_seconds: float,
) -> dict[str, Any]:
    """The contents of finetune.json."""
    run, cfg = training.run, training.cfg
    spec = f"local:{FinetuneFolder(run.out).full_model}" if cfg.full else f"local?lora={run.out}"
    speeds = {str(k): round(v, 1) for k, v in tuner.speed.items()}
    return {
        "status": status,
        "stop_reason": stop_reason,
        "method": "full" if cfg.full else "lora",
        "model_spec": spec,
        "base_model": str(run.base_path),
        "outputs": outputs,
        "config": {**asdict(cfg), "learning_rate": cfg.learning_rate},
        "precision": "bf16" if training.use_bf16 else "fp32",
        "threads": {"max": tuner.max_threads, "tokens_per_second_by_threads": speeds},
        "data": _data_report(run, training.data),
        "training": _training_report(training, load_seconds),
        "loss": _loss_summary(training.progress),
        "fingerprint": run.fingerprint,
        "versions": versions(),
    }


def _data_report(run: _Run, data: Tokenized) -> dict[str, Any]:
    return {
        "file": str(run.data),
        "examples": len(run.examples),
        "train": len(data.train),
        "held_out": len(data.held),
        "dropped_too_long": data.too_long,
        "train_tokens_per_epoch": sum(len(e.input_ids) for e in data.train),
        "response_tokens_per_epoch": sum(e.n_response for e in data.train),
    }


def _training_report(training: Training, load_seconds: float) -> dict[str, Any]:
    progress = training.progress
    tokens_per_second = progress["tokens"] / progress["train_seconds"] if progress["step"] else 0
    return {
        "steps": progress["step"],
        "total_steps": training.total_steps,
        "epochs_done": round(progress["step"] / training.steps_per_epoch, 3),
        "tokens": progress["tokens"],
        "response_tokens": progress["response_tokens"],
        "train_seconds": round(progress["train_seconds"], 2),
        "tokens_per_second": round(tokens_per_second, 1),
        "load_seconds": round(load_seconds, 2),
        "trainable_parameters": sum(p.numel() for p in training.params),
        "parameters": sum(p.numel() for p in training.model.parameters()),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "invocations": progress["invocations"],
    }


def _loss_summary(progress: dict[str, Any]) -> dict[str, Any]:
    losses = progress["losses"]
    evals = progress["eval"]
    return {
        "train_first": round(losses[0][1], 4) if losses else None,
        "train_last": round(losses[-1][1], 4) if losses else None,
        "train_curve": [[s, round(v, 4)] for s, v in losses],
        "held_out_before": round(evals[0][1], 4) if evals and evals[0][0] == 0 else None,
        "held_out_after": round(evals[-1][1], 4) if evals else None,
        "held_out_by_epoch": [[e, round(v, 4)] for e, v in evals],
    }


def _clear_outputs(out: Path) -> None:
    import shutil

    for path in FinetuneFolder(out).outputs():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
