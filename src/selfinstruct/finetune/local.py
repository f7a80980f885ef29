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
from selfinstruct.runfolder import FinetuneFolder

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
    run = _open_run(data, Path(out_dir), cfg, reporter)
    if cfg.restart:
        _clear_outputs(run.out)
    state = _load_checkpoint(run.torch, run.checkpoint_path, run.fingerprint, run.out)
    if state is None:
        previous = _completed_report(run)
        if previous is not None:
            reporter.info(f"{run.out}: this fine-tuning is already complete; nothing to do")
            return TrainResult(run.out, "complete", None, previous)
    _write_split(run)
    run.torch.manual_seed(cfg.seed)
    tokenizer, model, load_seconds = _load_base_timed(run, reporter)
    tokenized = _tokenize(run, tokenizer, reporter)
    training = _start_training(run, model, tokenized)
    _resume(training, state, reporter)
    tuner = ThreadTuner(run.torch, _max_threads(cfg), fixed=cfg.threads is not None)
    stop_reason = _train(training, tuner, reporter)
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
            " another --out, or add --restart to replace it"
        )
    return None


def _write_split(run: _Run) -> None:
    run.out.mkdir(parents=True, exist_ok=True)
    folder = FinetuneFolder(run.out)
    write_jsonl_atomic(folder.heldout, (e.to_dict() for e in run.held_ex))
    write_jsonl_atomic(folder.train, (e.to_dict() for e in run.train_ex))


def _max_threads(cfg: LocalConfig) -> int:
    return cfg.threads or os.cpu_count() or 1


def _use_bf16(cfg: LocalConfig) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported())


def _load_base_timed(run: _Run, reporter: Reporter) -> tuple[Any, Any, float]:
    """(tokenizer, model, seconds taken)."""
    started = time.perf_counter()
    reporter.info(f"loading {run.base_path.name} with transformers (dequantising to fp32)...")
    tokenizer, model = load_base(run.base_path, run.stack)
    return tokenizer, model, time.perf_counter() - started


@dataclass
class _Tokenized:
    train: list[Encoded]
    held: list[Encoded]
    too_long: int  # examples dropped: the prompt alone exceeds max_length
    pad_id: int


def _tokenize(run: _Run, tokenizer: Any, reporter: Reporter) -> _Tokenized:
    max_length = run.cfg.max_length
    encoder = ChatEncoder(tokenizer, max_length)
    train_enc = [encoder.encode(e) for e in run.train_ex]
    held_enc = [encoder.encode(e) for e in run.held_ex]
    too_long = sum(1 for e in train_enc + held_enc if e is None)
    train_set = [e for e in train_enc if e is not None]
    held_set = [e for e in held_enc if e is not None]
    if not train_set:
        raise ConfigError(f"no training example fits --max-length {max_length}")
    if too_long:
        reporter.warn(f"{too_long} example(s) dropped: the prompt alone exceeds --max-length")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = encoder.end_ids[-1]
    return _Tokenized(train_set, held_set, too_long, pad_id)


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
class _Training:
    """The state a training loop updates, and the one step it repeats."""

    run: _Run
    data: _Tokenized
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
                batch = _collate(self.torch, held[i : i + size], self.data.pad_id)
                loss, n = _supervised_loss(self.torch, self.causal_lm, batch)
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
        batch_ids = _batches(len(train), self.cfg.batch_size, self.cfg.seed, epoch)[index]
        return [train[i] for i in batch_ids]

    def optimise(self, items: list[Encoded], tuner: ThreadTuner) -> tuple[float, int, float]:
        """One optimiser step on `items`: (loss, tokens, seconds)."""
        torch = self.torch
        batch = _collate(torch, items, self.data.pad_id)
        n_tokens = int(batch["attention_mask"].sum())
        tuner.before_step()
        t0 = time.perf_counter()
        with self.autocast():
            loss, _ = _supervised_loss(torch, self.causal_lm, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        tuner.after_step(n_tokens, dt)
        value = loss.item()
        if not math.isfinite(value):
            raise ModelError(f"the loss became {value} at step {self.progress['step']}: lower --lr")
        return value, n_tokens, dt


def _start_training(run: _Run, model: Any, data: _Tokenized) -> _Training:
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
    return _Training(
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


def _resume(training: _Training, state: dict[str, Any] | None, reporter: Reporter) -> None:
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


def _train(training: _Training, tuner: ThreadTuner, reporter: Reporter) -> str | None:
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
    except _Stop as stop:
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
        raise _Stop("max_train_tokens")
    if cfg.max_minutes is not None and time.monotonic() - now.started >= cfg.max_minutes * 60:
        raise _Stop("max_minutes")


def _record_step(
    training: _Training,
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


def _checkpoint_when_due(training: _Training, now: _Invocation) -> None:
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


def _finish(
    training: _Training, tuner: ThreadTuner, stop_reason: str | None, load_seconds: float
) -> TrainResult:
    """Export the weights, write the report; drop the checkpoint once complete."""
    run = training.run
    status = "complete" if training.progress["step"] >= training.total_steps else "stopped"
    training.model.eval()
    outputs = _export(run.out, training.model, run.cfg, run.base_header, run.stack)
    report = _report(training, tuner, status, stop_reason, outputs, load_seconds)
    write_atomic(run.report_path, json.dumps(report, indent=2) + "\n")
    if status == "complete":
        _remove_checkpoint(run.checkpoint_path)
    return TrainResult(run.out, status, stop_reason, report)


def _report(
    training: _Training,
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


def _data_report(run: _Run, data: _Tokenized) -> dict[str, Any]:
    return {
        "file": str(run.data),
        "examples": len(run.examples),
        "train": len(data.train),
        "held_out": len(data.held),
        "dropped_too_long": data.too_long,
        "train_tokens_per_epoch": sum(len(e.input_ids) for e in data.train),
        "response_tokens_per_epoch": sum(e.n_response for e in data.train),
    }


def _training_report(training: _Training, load_seconds: float) -> dict[str, Any]:
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

    for path in FinetuneFolder(out).outputs():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _export(
    out: Path, model: Any, cfg: LocalConfig, base_header: Any, stack: dict[str, Any]
) -> dict[str, str]:
    if cfg.full:
        path = FinetuneFolder(out).full_model
        write_full_gguf(path, model.state_dict(), base_header, out_type=cfg.gguf_type)
        return {"gguf_model": str(path)}
    peft_dir = FinetuneFolder(out).peft_dir
    model.save_pretrained(str(peft_dir), save_embedding_layers=False)
    state = {n: p for n, p in model.named_parameters() if "lora_" in n}
    path = FinetuneFolder(out).adapter
    write_lora_gguf(path, state, base_header, alpha=cfg.lora_alpha)
    return {"gguf_adapter": str(path), "peft_adapter": str(peft_dir)}
