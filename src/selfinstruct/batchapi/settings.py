"""Batch API mode's settings: light, so that naming them imports no HTTP client."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: OpenAI's limits on one batch input file
MAX_LINES = 50_000
MAX_BYTES = 200 * 1024 * 1024


@dataclass
class BatchSettings:
    """How the Batch API is driven; the defaults are OpenAI's limits."""

    poll_seconds: float = 30.0  # between two looks at a running batch
    max_lines: int = MAX_LINES  # a file's lines, and a round's requests
    max_bytes: int = MAX_BYTES  # a file's size
    max_submissions: int = 4  # times a line is sent before it counts as failed


def round_requests(num_instructions: int, per_request: int) -> int:
    """Step 1's lag in Batch API mode, which is its round: a quarter of the requests the target
    needs at one kept instruction a prompt (at most a file's lines). About four rounds then
    make a run, each prompt sees the pool as it stood a round earlier, and the last round asks
    only for what is still missing. A function of the target alone, so that a rerun of the same
    command builds the same requests and finds the batches it already paid for."""
    return max(1, min(MAX_LINES, math.ceil(num_instructions / per_request / 4)))
