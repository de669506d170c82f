"""The recipe: one YAML file validated into pydantic sections (what every stage reads).

One module per section (`model`, `data`, `judge`, `generation`, `generate` and `filter`, `sft`, `pairs` and
`dpo`, `rl`, `merge`, `eval`); `recipe.py` puts them together and loads a file with its overrides. The field
docstrings are the reference: `deliberate recipe fields` prints them.
"""

from deliberate.config.base import Dtype, Expected, Section
from deliberate.config.data import ColumnMap, DataConfig
from deliberate.config.eval import CRITERIA, Benchmark, EvalConfig, Mirror
from deliberate.config.generate import FilterConfig, GenerateConfig
from deliberate.config.guard import GuardConfig, GuardSource
from deliberate.config.judge import JudgeConfig
from deliberate.config.merge import MergeConfig, MergeSpec
from deliberate.config.model import ModelConfig
from deliberate.config.preferences import DPOOptions, DPOStage, MarginConfig, PairsConfig, PreferenceData
from deliberate.config.recipe import Recipe, load_recipe
from deliberate.config.rl import RLOptions
from deliberate.config.rm import RewardModelSpec, RMOptions
from deliberate.config.sampling import ApiConfig, SamplingConfig
from deliberate.config.training import DatasetTrainingOptions, SFTOptions, TrainingOptions

__all__ = [
    "ApiConfig",
    "Benchmark",
    "CRITERIA",
    "ColumnMap",
    "DPOOptions",
    "DPOStage",
    "DataConfig",
    "DatasetTrainingOptions",
    "Dtype",
    "EvalConfig",
    "Expected",
    "FilterConfig",
    "GuardConfig",
    "GuardSource",
    "GenerateConfig",
    "JudgeConfig",
    "MarginConfig",
    "MergeConfig",
    "MergeSpec",
    "Mirror",
    "ModelConfig",
    "PairsConfig",
    "PreferenceData",
    "RLOptions",
    "RMOptions",
    "RewardModelSpec",
    "Recipe",
    "SFTOptions",
    "SamplingConfig",
    "Section",
    "TrainingOptions",
    "load_recipe",
]
