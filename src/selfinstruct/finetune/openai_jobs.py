"""Fine-tune through the OpenAI fine-tuning API (or any server that implements it).

Steps: convert the data to chat JSONL, upload it (``files.create``, purpose ``fine-tune``),
create the job (``fine_tuning.jobs.create``), poll it (``fine_tuning.jobs.retrieve``) with a
growing interval, and report the fine-tuned model's id.

Each step's result is saved in ``OUT/openai_job.json`` the moment it is known (file ids after
the upload, the job id right after its creation), so an interrupted run, rerun with the same
command, resumes polling the same job instead of paying for a second one. The API key is read
from the caller and never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError, ModelError
from selfinstruct.finetune.data import Example, read_examples, split_examples, write_chat_jsonl
from selfinstruct.io import write_atomic
from selfinstruct.progress import Reporter
from selfinstruct.runfolder import FinetuneFolder

DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
RUNNING = ("validating_files", "queued", "running")
FAILED = ("failed", "cancelled")


@dataclass
class OpenAIConfig:
    model: str = DEFAULT_MODEL
    epochs: int | None = None  # None: the server decides ("auto")
    batch_size: int | None = None
    lr_multiplier: float | None = None
    seed: int = 0
    suffix: str | None = None
    eval_fraction: float = 0.0
    poll_interval: float = 10.0  # seconds before the first poll; grows 1.5x to poll_max
    poll_max: float = 120.0
    wait: bool = True  # False: create (or look at) the job and return at once
    max_poll_errors: int = 8  # consecutive failed polls before giving up (rerun resumes)
    restart: bool = False

    def hyperparameters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.epochs is not None:
            out["n_epochs"] = self.epochs
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        if self.lr_multiplier is not None:
            out["learning_rate_multiplier"] = self.lr_multiplier
        return out


@dataclass
class OpenAIResult:
    out_dir: Path
    job_id: str
    status: str
    fine_tuned_model: str | None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> str | None:
        return f"openai:{self.fine_tuned_model}" if self.fine_tuned_model else None


def _client(api_key: str | None, base_url: str | None, timeout: float) -> Any:
    import os

    import openai

    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ConfigError("the openai backend needs a key: `api_key` or OPENAI_API_KEY")
    url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    return openai.OpenAI(api_key=key, base_url=url, timeout=timeout, max_retries=3)


def _fingerprint(examples: list[Any], cfg: OpenAIConfig) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps(e.chat_messages(), ensure_ascii=False).encode())
    h.update(
        json.dumps(
            [cfg.model, cfg.hyperparameters(), cfg.seed, cfg.suffix, cfg.eval_fraction]
        ).encode()
    )
    return h.hexdigest()


def _api_error(e: Exception, doing: str) -> ModelError:
    import openai

    if isinstance(e, openai.APIConnectionError):
        return ModelError(f"{doing}: cannot reach the server ({e}); check `base_url`")
    if isinstance(e, openai.AuthenticationError):
        return ModelError(f"{doing}: the server refused the key (HTTP 401)")
    if isinstance(e, openai.APIStatusError):
        detail = e.message or str(e)
        return ModelError(f"{doing}: HTTP {e.status_code}: {detail}")
    return ModelError(f"{doing}: {e}")


class _State:
    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def save(self, **updates: Any) -> None:
        self.data.update(updates)
        write_atomic(self.path, json.dumps(self.data, indent=2) + "\n")


def run_openai_finetune(
    data: str | Path,
    out_dir: str | Path,
    config: OpenAIConfig | None = None,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: float = 120.0,
    reporter: Reporter | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> OpenAIResult:
    cfg = config or OpenAIConfig()
    reporter = reporter or Reporter(quiet=True)
    client = _client(api_key, base_url, timeout)  # no request yet: a missing key fails here
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = read_examples(data, warn=reporter.warn)
    train, held = split_examples(examples, cfg.eval_fraction, cfg.seed)
    fingerprint = _fingerprint(examples, cfg)

    state = _State(FinetuneFolder(out).openai_job)
    if state.data and cfg.restart:
        state.data = {}
    _check_state(state, fingerprint, out)
    if not state.data.get("job_id"):
        state.save(fingerprint=fingerprint, model=cfg.model, created_by="selfinstruct")
        _upload_examples(client, out, state, train, held, reporter)
        _create_job(client, state, cfg, reporter)
    else:
        reporter.info(f"resuming: polling fine-tuning job {state.data['job_id']}")

    return _poll(client, out, state, cfg, reporter, sleep)


def _check_state(state: _State, fingerprint: str, out: Path) -> None:
    """ConfigError when the saved job belongs to other data or settings; ModelError when it
    failed (continuing it would go nowhere)."""
    if state.data and state.data.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{FinetuneFolder(out).openai_job} belongs to another fine-tuning (different data,"
            " model or settings): choose another `out`, or add `restart` to start a new job"
        )
    status = state.data.get("status")
    if status in FAILED:
        raise ModelError(
            f"fine-tuning job {state.data.get('job_id')} {status}: {state.data.get('error')};"
            " add `restart` to start a new job (charged again)"
        )


def _upload_examples(
    client: Any,
    out: Path,
    state: _State,
    train: list[Example],
    held: list[Example],
    reporter: Reporter,
) -> None:
    """Upload the training and validation files, unless an earlier invocation did."""
    if not state.data.get("training_file"):
        path = FinetuneFolder(out).openai_train
        write_chat_jsonl(path, train)
        state.save(training_file=_upload(client, path), train_examples=len(train))
        reporter.info(f"uploaded {len(train)} training examples: {state.data['training_file']}")
    if held and not state.data.get("validation_file"):
        path = FinetuneFolder(out).openai_validation
        write_chat_jsonl(path, held)
        state.save(validation_file=_upload(client, path), validation_examples=len(held))


def _job_arguments(cfg: OpenAIConfig, state: _State) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": cfg.model,
        "training_file": state.data["training_file"],
        "seed": cfg.seed,
    }
    if state.data.get("validation_file"):
        kwargs["validation_file"] = state.data["validation_file"]
    if cfg.suffix:
        kwargs["suffix"] = cfg.suffix
    if cfg.hyperparameters():
        kwargs["method"] = {
            "type": "supervised",
            "supervised": {"hyperparameters": cfg.hyperparameters()},
        }
    return kwargs


def _create_job(client: Any, state: _State, cfg: OpenAIConfig, reporter: Reporter) -> None:
    try:
        job = client.fine_tuning.jobs.create(**_job_arguments(cfg, state))
    except Exception as e:  # noqa: BLE001 - every API failure becomes one ModelError
        raise _api_error(e, "creating the fine-tuning job") from None
    state.save(job_id=job.id, status=job.status)
    reporter.info(f"created fine-tuning job {job.id} on {cfg.model}")


def _upload(client: Any, path: Path) -> str:
    try:
        with open(path, "rb") as f:
            uploaded = client.files.create(file=(path.name, f), purpose="fine-tune")
    except Exception as e:  # noqa: BLE001
        raise _api_error(e, f"uploading {path.name}") from None
    return uploaded.id


def _poll(
    client: Any,
    out: Path,
    state: _State,
    cfg: OpenAIConfig,
    reporter: Reporter,
    sleep: Callable[[float], None],
) -> OpenAIResult:
    import openai

    job_id = state.data["job_id"]
    interval = cfg.poll_interval
    errors = 0
    last_status = None
    while True:
        try:
            job = client.fine_tuning.jobs.retrieve(job_id)
            errors = 0
        except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as e:
            errors += 1
            if errors >= cfg.max_poll_errors:
                raise ModelError(
                    f"polling job {job_id} failed {errors} times in a row ({e}); the job id is"
                    f" saved in {state.path}: rerun the same command to resume polling"
                ) from None
            reporter.warn(f"polling job {job_id}: {e}; retrying in {interval:.0f}s")
            sleep(interval)
            interval = min(cfg.poll_max, interval * 1.5)
            continue
        except Exception as e:  # noqa: BLE001
            raise _api_error(e, f"polling job {job_id}") from None
        status = job.status
        if status != last_status:
            reporter.info(f"job {job_id}: {status}")
            last_status = status
        if status == "succeeded":
            state.save(
                status=status,
                fine_tuned_model=job.fine_tuned_model,
                trained_tokens=getattr(job, "trained_tokens", None),
                finished_at=getattr(job, "finished_at", None),
            )
            _write_report(out, state.data)
            return OpenAIResult(out, job_id, status, job.fine_tuned_model, state.data)
        if status in FAILED:
            error = getattr(job, "error", None)
            message = (getattr(error, "message", None) or "no reason given") if error else None
            state.save(status=status, error=message or "no reason given")
            _write_report(out, state.data)
            raise ModelError(f"fine-tuning job {job_id} {status}: {message or 'no reason given'}")
        state.save(status=status)
        if not cfg.wait:
            return OpenAIResult(out, job_id, status, None, state.data)
        sleep(interval)
        interval = min(cfg.poll_max, interval * 1.5)


def _write_report(out: Path, data: dict[str, Any]) -> None:
    model = data.get("fine_tuned_model")
    report = {
        "backend": "openai",
        "status": data.get("status"),
        "job_id": data.get("job_id"),
        "base_model": data.get("model"),
        "fine_tuned_model": model,
        "model_spec": f"openai:{model}" if model else None,
        "trained_tokens": data.get("trained_tokens"),
        "data": {
            "train": data.get("train_examples"),
            "held_out": data.get("validation_examples", 0),
        },
        "error": data.get("error"),
    }
    write_atomic(FinetuneFolder(out).report_file, json.dumps(report, indent=2) + "\n")
