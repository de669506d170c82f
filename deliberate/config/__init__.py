"""The recipe: one YAML file validated into pydantic sections (what every stage reads).

One module per section (`model`, `data`, `judge`, `generation`, `generate` and `filter`, `sft`, `pairs` and
`dpo`, `rl`, `merge`, `eval`); `recipe.py` puts them together and loads a file with its overrides. The field
docstrings are the reference: `deliberate recipe fields` prints them.
"""

from deliberate.config.base import Expected, Section
from deliberate.config.data import ColumnMap, DataConfig
from deliberate.config.eval import EvalConfig
from deliberate.config.generate import FilterConfig, GenerateConfig
from deliberate.config.judge import JudgeConfig
from deliberate.config.merge import MergeConfig, MergeSpec
from deliberate.config.model import ModelConfig
from deliberate.config.preferences import DPOConfig, DPOStage, MarginConfig, PairsConfig, PreferenceData
from deliberate.config.recipe import Recipe, load_recipe
from deliberate.config.rl import RLConfig
from deliberate.config.sampling import GenerationConfig
from deliberate.config.training import SFTConfig, TrainingOptions

__all__ = ["ColumnMap", "DPOConfig", "DPOStage", "DataConfig", "EvalConfig", "Expected", "FilterConfig",
           "GenerateConfig", "GenerationConfig", "JudgeConfig", "MarginConfig", "MergeConfig", "MergeSpec",
           "ModelConfig", "PairsConfig", "PreferenceData", "RLConfig", "Recipe", "SFTConfig", "Section",
           "TrainingOptions", "load_recipe"]
