"""selfinstruct: grow an instruction-tuning dataset from a few seed tasks (Self-Instruct, Wang et
al. 2022), on any model, then fine-tune on it, evaluate it and look at it.

    import selfinstruct as si

    run = si.Pipeline(out="runs/x", model="openai:gpt-4o-mini", seeds=si.seeds.default())
    run.run(num_instructions=100)            # or the four steps one by one
    si.rouge_l("a b c", "a c").fmeasure       # the similarity the filter uses
    si.evaluate("local", "tasks.jsonl", "predictions.jsonl")

The names below are the public API; everything else is private and may change.
"""

from importlib import metadata as _metadata

from selfinstruct import seeds
from selfinstruct.engine import EngineSettings
from selfinstruct.errors import (
    BudgetExhausted,
    ConfigError,
    DataFileError,
    MissingExtraError,
    ModelError,
    RunLockedError,
    SeedFileError,
    SelfInstructError,
)
from selfinstruct.evaluation import evaluate
from selfinstruct.models import Completion, Model, ModelInfo, Sampling, load_model
from selfinstruct.pipeline import Pipeline
from selfinstruct.records import Example, Rating, SeedTask
from selfinstruct.runfolder import RunFolder, RunRecord
from selfinstruct.similarity import RougeLIndex, rouge_l
from selfinstruct.steps import StepReport

try:
    __version__ = _metadata.version("selfinstruct")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "BudgetExhausted",
    "Completion",
    "ConfigError",
    "DataFileError",
    "EngineSettings",
    "Example",
    "MissingExtraError",
    "Model",
    "ModelError",
    "ModelInfo",
    "Pipeline",
    "Rating",
    "RougeLIndex",
    "RunFolder",
    "RunRecord",
    "RunLockedError",
    "Sampling",
    "SeedFileError",
    "SeedTask",
    "SelfInstructError",
    "StepReport",
    "__version__",
    "evaluate",
    "load_model",
    "rouge_l",
    "seeds",
]
