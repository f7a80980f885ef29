"""Batch API mode: the steps' requests through OpenAI's Batch API, at the batch price.

`engine.BatchEngine` has the engine's interface, so a step runs on it unchanged; see engine.py
for how rounds, resume and failed lines work, and docs/batch.md for the user's view. Only the
settings are imported here: the engine (and its HTTP client) loads when a batch is run.
"""

from selfinstruct.batchapi.settings import MAX_BYTES, MAX_LINES, BatchSettings, round_requests

__all__ = ["MAX_BYTES", "MAX_LINES", "BatchSettings", "round_requests"]
