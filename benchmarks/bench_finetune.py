"""Training speed and memory of local fine-tuning: LoRA and full, fp32 and bf16 autocast.

Every configuration trains the embedded SmolLM2-135M-Instruct on the same examples (the toy
instruction set of the fine-tuning test; batch 8, or 2 for the slow bf16 rows) in a fresh
process, so that each peak RSS is its own. Printed per configuration: tokens/s over the timed
steps (the first step is a warm-up and not timed), peak RSS of the process, and RSS once the
model is loaded. The baseline row is the plain transformers way of computing the loss
(``model(..., labels=...)``: logits over the whole 49K vocabulary at every position) beside
ours (the output layer only where a response token is predicted), both LoRA fp32.

    .venv/bin/python benchmarks/bench_finetune.py            # all rows, ~5 minutes on 2 cores
    .venv/bin/python benchmarks/bench_finetune.py --steps 3 --only lora-fp32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time

# bf16 rows use smaller batches and fewer steps: on a CPU without native bf16 (AVX2 only, like
# this machine's) autocast emulates it, about 20x slower than fp32.
CONFIGS = {
    "lora-fp32-hf-loss": {"full": False, "bf16": False, "hf_loss": True, "batch": 8},
    "lora-fp32": {"full": False, "bf16": False, "hf_loss": False, "batch": 8},
    "lora-bf16": {"full": False, "bf16": True, "hf_loss": False, "batch": 2},
    "full-fp32": {"full": True, "bf16": False, "hf_loss": False, "batch": 8},
    "full-bf16": {"full": True, "bf16": True, "hf_loss": False, "batch": 2},
}
WORDS = (
    "apple river stone cloud green quiet music paper orange window garden silver bread candle"
    " forest yellow winter lemon tiger rocket"
).split()


def toy_examples(n: int, seed: int = 1) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        if k % 3 == 0:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            out.append(
                {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)}
            )
        elif k % 3 == 1:
            ws = rng.sample(WORDS, rng.randint(3, 5))
            out.append(
                {
                    "instruction": "Reverse the order of the words.",
                    "input": " ".join(ws),
                    "output": " ".join(reversed(ws)),
                }
            )
        else:
            ws = " ".join(rng.sample(WORDS, rng.randint(2, 4)))
            out.append(
                {
                    "instruction": "Write the phrase in upper case.",
                    "input": ws,
                    "output": ws.upper(),
                }
            )
    return out


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(name: str, steps: int, threads: int) -> dict:
    from selfinstruct.finetune.base import (
        import_training_stack,
        load_base,
        peak_rss_mib,
        resolve_base,
    )
    from selfinstruct.finetune.data import Example
    from selfinstruct.finetune.encoding import ChatEncoder, collate
    from selfinstruct.finetune.loop import LORA_TARGETS, supervised_loss

    cfg = CONFIGS[name]
    stack = import_training_stack()
    torch = stack["torch"]
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    tokenizer, model = load_base(resolve_base("local"), stack)
    encoder = ChatEncoder(tokenizer, 512)
    size = cfg["batch"]
    items = [encoder.encode(Example(**e)) for e in toy_examples(size * (steps + 1))]
    if cfg["full"]:
        lm = model
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        peft = stack["peft"]
        lm = peft.get_peft_model(
            model,
            peft.LoraConfig(
                r=16, lora_alpha=32, target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"
            ),
        )
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    causal = lm if cfg["full"] else lm.get_base_model()
    loaded_rss = rss_mib()
    tokens = 0
    seconds = 0.0
    for step in range(steps + 1):
        chunk = items[size * step : size * (step + 1)]
        batch = collate(torch, chunk, tokenizer.pad_token_id or 2)
        t0 = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if cfg["bf16"] else _null()
        with ctx:
            if cfg["hf_loss"]:
                loss = lm(**batch).loss
            else:
                loss, _ = supervised_loss(torch, causal, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if step > 0:
            tokens += int(batch["attention_mask"].sum())
            seconds += dt
    return {
        "config": name,
        "tokens_per_second": round(tokens / seconds, 1),
        "timed_tokens": tokens,
        "timed_seconds": round(seconds, 2),
        "peak_rss_mib": round(peak_rss_mib(), 0),
        "rss_after_load_mib": round(loaded_rss, 0),
        "trainable_parameters": sum(p.numel() for p in params),
        "threads": threads,
        "batch": size,
        "timed_steps": steps,
    }


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed fp32 steps (default 4)")
    parser.add_argument("--bf16-steps", type=int, default=1, help="timed bf16 steps (default 1)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads (default: all cores)",
    )
    parser.add_argument(
        "--only",
        choices=sorted(CONFIGS),
        action="append",
        help="run only these configurations (repeatable)",
    )
    parser.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.threads)), flush=True)
        return
    names = args.only or list(CONFIGS)
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads;"
        f" load average {os.getloadavg()[0]:.2f} at the start"
    )
    header = ("config", "batch x timed steps", "tokens/s", "peak RSS MiB", "RSS after load MiB")
    print("| " + " | ".join(header) + " | trainable params |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = {}
    for name in names:
        steps = args.bf16_steps if CONFIGS[name]["bf16"] else args.steps
        command = [sys.executable, __file__, "--one", name, "--steps", str(steps)]
        command += ["--threads", str(args.threads)]
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1:]} |")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows[name] = row
        print(
            f"| {name} | {row['batch']} x {row['timed_steps']} |"
            f" {row['tokens_per_second']:.1f} | {row['peak_rss_mib']:.0f} |"
            f" {row['rss_after_load_mib']:.0f} | {row['trainable_parameters']:,} |",
            flush=True,
        )
    if "lora-fp32" in rows and "lora-fp32-hf-loss" in rows:
        ours, base = rows["lora-fp32"], rows["lora-fp32-hf-loss"]
        print(
            f"\nours vs baseline (LoRA fp32): {ours['tokens_per_second']:.0f} vs"
            f" {base['tokens_per_second']:.0f} tokens/s"
            f" ({ours['tokens_per_second'] / base['tokens_per_second']:.2f}x)"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
