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
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import platform
import random
import resource
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError, MissingExtraError, ModelError
from selfinstruct.finetune.data import Example, read_examples, split_examples
from selfinstruct.finetune.export import (
    FULL_TYPES,
    check_exportable,
    read_gguf_header,
    write_full_gguf,
    write_lora_gguf,
)
from selfinstruct.io import write_atomic, write_jsonl_atomic
from selfinstruct.progress import Reporter

ADAPTER_FILE = "adapter.gguf"
FULL_MODEL_FILE = "model.gguf"
PEFT_DIR = "peft"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"
REPORT_FILE = "finetune.json"
HELDOUT_FILE = "heldout.jsonl"
TRAIN_FILE = "train.jsonl"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INSTALL_HINT = "pip install 'selfinstruct[finetune]'"


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
            raise ConfigError("--epochs must be at least 1")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if self.max_length < 16:
            raise ConfigError("--max-length must be at least 16 tokens")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError("--eval-fraction must be in [0, 1)")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError("--precision must be auto, bf16 or fp32")
        if self.gguf_type not in FULL_TYPES:
            raise ConfigError(f"--gguf-type must be one of {', '.join(FULL_TYPES)}")
        if self.learning_rate <= 0:
            raise ConfigError("--lr must be positive")
        if not self.full and (self.lora_r < 1 or self.lora_alpha <= 0):
            raise ConfigError("--lora-r must be at least 1 and --lora-alpha positive")

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
        raise ConfigError(f"--base {spec!r}: the local backend trains a GGUF file (local[:PATH])")
    if parsed.options:
        raise ConfigError(f"--base {spec!r}: options do not apply to a base model")
    if parsed.name:
        path = Path(parsed.name).expanduser()
        if not path.is_file():
            raise ConfigError(f"--base: GGUF file {str(path)!r} not found")
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


# --- loading ---------------------------------------------------------------------------------


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


# --- tokenising ------------------------------------------------------------------------------


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


# --- the run ---------------------------------------------------------------------------------


def _data_digest(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.system, e.user, e.output], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    remaining = max(1, total - warmup)
    return max(0.0, 1.0 - (step - warmup) / remaining)


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _collate(torch: Any, items: list[Encoded], pad_id: int) -> dict[str, Any]:
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


def _supervised_loss(torch: Any, causal_lm: Any, batch: dict[str, Any]) -> tuple[Any, int]:
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


class _Stop(Exception):
    def __init__(self, reason: str):
        self.reason = reason


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
    out = Path(out_dir)
    stack = import_training_stack()
    torch = stack["torch"]
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
    ckpt_path = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    report_path = out / REPORT_FILE
    if cfg.restart:
        _clear_outputs(out)
    state = _load_checkpoint(torch, ckpt_path, fingerprint, out)
    if state is None and report_path.exists():
        previous = json.loads(report_path.read_text())
        if previous.get("fingerprint") == fingerprint and previous.get("status") == "complete":
            reporter.info(f"{out}: this fine-tuning is already complete; nothing to do")
            return TrainResult(out, "complete", None, previous)
        if previous.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{out} holds another fine-tuning run (different data or settings): choose"
                " another --out, or add --restart to replace it"
            )

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / HELDOUT_FILE, (e.to_dict() for e in held_ex))
    write_jsonl_atomic(out / TRAIN_FILE, (e.to_dict() for e in train_ex))

    torch.manual_seed(cfg.seed)
    threads = cfg.threads or os.cpu_count() or 1
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported())

    t_load = time.perf_counter()
    reporter.info(f"loading {base_path.name} with transformers (dequantising to fp32)...")
    tokenizer, model = load_base(base_path, stack)
    load_seconds = time.perf_counter() - t_load

    encoder = ChatEncoder(tokenizer, cfg.max_length)
    train_enc = [encoder.encode(e) for e in train_ex]
    held_enc = [encoder.encode(e) for e in held_ex]
    too_long = sum(1 for e in train_enc + held_enc if e is None)
    train_set = [e for e in train_enc if e is not None]
    held_set = [e for e in held_enc if e is not None]
    if not train_set:
        raise ConfigError(f"no training example fits --max-length {cfg.max_length}")
    if too_long:
        reporter.warn(f"{too_long} example(s) dropped: the prompt alone exceeds --max-length")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = encoder.end_ids[-1]

    if cfg.full:
        trainable_model = model
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        peft = stack["peft"]
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
            trainable_model = peft.get_peft_model(model, lora)
    causal_lm = trainable_model if cfg.full else trainable_model.get_base_model()
    params = [p for p in trainable_model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in trainable_model.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, round(total_steps * cfg.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, warmup)
    )

    progress: dict[str, Any] = {
        "step": 0,
        "tokens": 0,
        "response_tokens": 0,
        "train_seconds": 0.0,
        "losses": [],  # (step, mean loss of the steps since the last entry)
        "eval": [],  # (epoch, held-out loss)
        "invocations": 0,
    }
    if state is not None:
        _restore(torch, state, trainable_model, optimizer, scheduler, progress, cfg.full)
        reporter.info(
            f"resuming from {ckpt_path} at step {progress['step']}/{total_steps}"
            f" ({progress['tokens']} tokens trained)"
        )
    progress["invocations"] += 1

    def autocast() -> Any:
        if use_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def held_out_loss() -> float | None:
        if not held_set:
            return None
        trainable_model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), autocast():
            for i in range(0, len(held_set), cfg.batch_size):
                batch = _collate(torch, held_set[i : i + cfg.batch_size], pad_id)
                loss, n = _supervised_loss(torch, causal_lm, batch)
                total += float(loss) * n
                count += n
        trainable_model.train()
        return total / max(1, count)

    def save_checkpoint() -> None:
        _save_checkpoint(
            torch, ckpt_path, fingerprint, trainable_model, optimizer, scheduler, progress, cfg
        )

    tuner = ThreadTuner(torch, threads, fixed=cfg.threads is not None)
    if progress["step"] == 0 and not progress["eval"]:
        before = held_out_loss()
        if before is not None:
            progress["eval"].append((0, before))

    stop_reason: str | None = None
    started = time.monotonic()
    last_ckpt = time.monotonic()
    run_tokens = 0
    run_seconds = 0.0
    window: list[float] = []
    ema: float | None = None
    trainable_model.train()
    try:
        with reporter.bar("fine-tuning", total=total_steps, completed=progress["step"]) as bar:
            while progress["step"] < total_steps:
                if cfg.max_train_tokens is not None and progress["tokens"] >= cfg.max_train_tokens:
                    raise _Stop("max_train_tokens")
                if (
                    cfg.max_minutes is not None
                    and time.monotonic() - started >= cfg.max_minutes * 60
                ):
                    raise _Stop("max_minutes")
                epoch, index = divmod(progress["step"], steps_per_epoch)
                batch_ids = _batches(len(train_set), cfg.batch_size, cfg.seed, epoch)[index]
                items = [train_set[i] for i in batch_ids]
                batch = _collate(torch, items, pad_id)
                n_tokens = int(batch["attention_mask"].sum())
                tuner.before_step()
                t0 = time.perf_counter()
                with autocast():
                    loss, _ = _supervised_loss(torch, causal_lm, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                dt = time.perf_counter() - t0
                tuner.after_step(n_tokens, dt)
                value = loss.item()
                if not math.isfinite(value):
                    raise ModelError(
                        f"the loss became {value} at step {progress['step']}: lower --lr"
                    )
                progress["step"] += 1
                progress["tokens"] += n_tokens
                progress["response_tokens"] += sum(e.n_response for e in items)
                progress["train_seconds"] += dt
                run_tokens += n_tokens
                run_seconds += dt
                window.append(value)
                ema = value if ema is None else 0.9 * ema + 0.1 * value
                if len(window) >= max(1, steps_per_epoch // 4) or progress["step"] == total_steps:
                    progress["losses"].append((progress["step"], sum(window) / len(window)))
                    window = []
                bar.advance()
                bar.note({"loss": f"{ema:.3f}", "tok/s": f"{run_tokens / run_seconds:,.0f}"})
                if progress["step"] % steps_per_epoch == 0:
                    held = held_out_loss()
                    if held is not None:
                        progress["eval"].append((progress["step"] // steps_per_epoch, held))
                    save_checkpoint()
                    last_ckpt = time.monotonic()
                if time.monotonic() - last_ckpt >= cfg.checkpoint_minutes * 60:
                    save_checkpoint()
                    last_ckpt = time.monotonic()
    except _Stop as stop:
        stop_reason = stop.reason
        if window:
            progress["losses"].append((progress["step"], sum(window) / len(window)))
        save_checkpoint()
    except KeyboardInterrupt:
        save_checkpoint()
        raise

    status = "complete" if progress["step"] >= total_steps else "stopped"
    trainable_model.eval()
    outputs = _export(out, trainable_model, cfg, base_header, stack)
    spec = f"local:{(out / FULL_MODEL_FILE)}" if cfg.full else f"local?lora={out}"
    tokens_per_second = progress["tokens"] / progress["train_seconds"] if progress["step"] else 0
    report: dict[str, Any] = {
        "status": status,
        "stop_reason": stop_reason,
        "method": "full" if cfg.full else "lora",
        "model_spec": spec,
        "base_model": str(base_path),
        "outputs": outputs,
        "config": {**asdict(cfg), "learning_rate": cfg.learning_rate},
        "precision": "bf16" if use_bf16 else "fp32",
        "threads": {
            "max": threads,
            "tokens_per_second_by_threads": {str(k): round(v, 1) for k, v in tuner.speed.items()},
        },
        "data": {
            "file": str(data),
            "examples": len(examples),
            "train": len(train_set),
            "held_out": len(held_set),
            "dropped_too_long": too_long,
            "train_tokens_per_epoch": sum(len(e.input_ids) for e in train_set),
            "response_tokens_per_epoch": sum(e.n_response for e in train_set),
        },
        "training": {
            "steps": progress["step"],
            "total_steps": total_steps,
            "epochs_done": round(progress["step"] / steps_per_epoch, 3),
            "tokens": progress["tokens"],
            "response_tokens": progress["response_tokens"],
            "train_seconds": round(progress["train_seconds"], 2),
            "tokens_per_second": round(tokens_per_second, 1),
            "load_seconds": round(load_seconds, 2),
            "trainable_parameters": n_trainable,
            "parameters": n_total,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "invocations": progress["invocations"],
        },
        "loss": _loss_summary(progress),
        "fingerprint": fingerprint,
        "versions": versions(),
    }
    write_atomic(report_path, json.dumps(report, indent=2) + "\n")
    if status == "complete":
        _remove_checkpoint(ckpt_path)
    return TrainResult(out, status, stop_reason, report)


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


def _load_checkpoint(
    torch: Any, path: Path, fingerprint: dict[str, Any], out: Path
) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise ConfigError(
            f"{path}: unreadable checkpoint ({e}); add --restart to start over"
        ) from None
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{out} holds a checkpoint of another run (different data or settings): choose"
            " another --out, or add --restart to replace it"
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


def _remove_checkpoint(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def _clear_outputs(out: Path) -> None:
    import shutil

    for name in (REPORT_FILE, ADAPTER_FILE, FULL_MODEL_FILE, HELDOUT_FILE, TRAIN_FILE):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    for name in (CHECKPOINT_DIR, PEFT_DIR):
        shutil.rmtree(out / name, ignore_errors=True)


def _export(
    out: Path, model: Any, cfg: LocalConfig, base_header: Any, stack: dict[str, Any]
) -> dict[str, str]:
    if cfg.full:
        path = out / FULL_MODEL_FILE
        write_full_gguf(path, model.state_dict(), base_header, out_type=cfg.gguf_type)
        return {"gguf_model": str(path)}
    peft_dir = out / PEFT_DIR
    model.save_pretrained(str(peft_dir), save_embedding_layers=False)
    state = {n: p for n, p in model.named_parameters() if "lora_" in n}
    path = out / ADAPTER_FILE
    write_lora_gguf(path, state, base_header, alpha=cfg.lora_alpha)
    return {"gguf_adapter": str(path), "peft_adapter": str(peft_dir)}
