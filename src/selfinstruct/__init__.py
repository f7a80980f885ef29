"""selfinstruct: grow an instruction-tuning dataset from a few seed tasks (Self-Instruct, Wang et
al. 2022), on any model, then fine-tune on it, evaluate it and look at it.

    import selfinstruct as si

    with si.Pipeline(out="runs/x", model="openai:gpt-4o-mini", seeds=si.seeds.default()) as run:
        run.run(num_instructions=100)        # or the four steps one by one
    si.rouge_l("a b c", "a c").fmeasure       # the similarity the filter uses
    si.evaluate("local", "tasks.jsonl", "predictions.jsonl")

The names below are the public API; everything else is private and may change.
"""

from importlib import metadata as _metadata

from selfinstruct import seeds
from selfinstruct.batchapi import BatchSettings
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
    TransientModelError,
)
from selfinstruct.evaluation import EvalResult, Scores, evaluate
from selfinstruct.identity import RunIdentityError
from selfinstruct.judge import JudgeSettings
from selfinstruct.models import Completion, Model, ModelInfo, Sampling, load_model
from selfinstruct.models.scripted import ScriptedModel
from selfinstruct.pipeline import Pipeline
from selfinstruct.records import Example, Rating, SeedTask
from selfinstruct.runfolder import RunFolder, RunRecord
from selfinstruct.similarity import RougeLIndex, rouge_l
from selfinstruct.steps import StepReport
from selfinstruct.steps.classify import ClassifySettings
from selfinstruct.steps.instances import InstanceSettings
from selfinstruct.steps.instructions import InstructionSettings
from selfinstruct.steps.prepare import PrepareSettings

try:
    __version__ = _metadata.version("selfinstruct")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "BatchSettings",
    "BudgetExhausted",
    "ClassifySettings",
    "Completion",
    "ConfigError",
    "DataFileError",
    "EngineSettings",
    "EvalResult",
    "Example",
    "InstanceSettings",
    "InstructionSettings",
    "JudgeSettings",
    "MissingExtraError",
    "Model",
    "ModelError",
    "ModelInfo",
    "Pipeline",
    "PrepareSettings",
    "Rating",
    "RougeLIndex",
    "RunFolder",
    "RunIdentityError",
    "RunLockedError",
    "RunRecord",
    "Sampling",
    "Scores",
    "ScriptedModel",
    "SeedFileError",
    "SeedTask",
    "SelfInstructError",
    "StepReport",
    "TransientModelError",
    "evaluate",
    "load_model",
    "rouge_l",
    "seeds",
    "__version__",
]
