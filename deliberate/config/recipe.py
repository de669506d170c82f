"""The recipe: one YAML file that says which model, spec, data and judge a run uses, and each stage's settings.

Every field is documented here; these docstrings are the reference for recipe authors. A recipe is validated
when it is loaded: an unknown field, a wrong type or a bad value is reported as one line that names the file
and the field. Any field can be overridden from the command line with `--set section.field=value` (the value is
read as YAML, so `--set sft.learning_rate=1e-4` is a float and `--set data.where.split=heldout` a string).

Relative paths in a recipe (data files, spec files, output folders) are relative to the directory you run
`deliberate` from. A bare name that is not a file (`--recipe demo`, `--recipe sacpo-cpu.yaml`) is the packaged
recipe of that name (`deliberate recipe list`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from deliberate.config.base import Section
from deliberate.config.data import DataConfig
from deliberate.config.eval import EvalConfig
from deliberate.config.generate import FilterConfig, GenerateConfig
from deliberate.config.guard import GuardConfig
from deliberate.config.judge import JudgeConfig
from deliberate.config.merge import MergeConfig
from deliberate.config.model import ModelConfig
from deliberate.config.overrides import apply_override
from deliberate.config.preferences import DPOOptions, PairsConfig
from deliberate.config.rl import RLOptions
from deliberate.config.rm import RMOptions
from deliberate.config.sampling import SamplingConfig
from deliberate.config.training import SFTOptions
from deliberate.config.yamlio import load_yaml_file, validate
from deliberate.errors import DeliberateError, did_you_mean
from deliberate.resources import packaged_recipes


class Recipe(Section):
    """A whole run: the model, spec, data and judge, and every stage's settings."""

    name: str = "default"
    """A name for the run; it appears in reports and model cards."""
    license: str | None = None
    """The licence in the metadata of the model cards this recipe writes (e.g. `apache-2.0`, a Hub licence id);
    the base model's licence usually decides what it may be. Unset: apache-2.0 for models made from the
    embedded SmolLM2 (its licence), none otherwise."""
    output_dir: Path = Path("runs/default")
    """Where every stage writes its outputs (one subfolder per stage); `~` is the home folder."""

    @field_validator("output_dir")
    @classmethod
    def _home(cls, v: Path) -> Path:
        return v.expanduser()
    seed: int = Field(default=0, ge=0, lt=2**32)
    """Seed of everything random: sampling, data order, initialisation, bootstrap resamples (0 to 2^32 - 1)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The model to align (the base that evaluations compare against)."""
    spec: str = "default"
    """The policy spec: `default` (built in) or a path to a spec YAML file."""
    data: DataConfig = Field(default_factory=DataConfig)
    """The prompts that generate, pairs and rl train on."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """The judge of every stage (filter, pairs, rl reward, eval, `deliberate judge`)."""
    generation: SamplingConfig = Field(default_factory=SamplingConfig)
    """How `answer` and `eval` generate answers."""
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    """Deliberative alignment, step 1: the teacher's spec-conditioned reasoning completions."""
    filter: FilterConfig = Field(default_factory=FilterConfig)
    """Step 2: which judged completions are kept for SFT."""
    sft: SFTOptions = Field(default_factory=SFTOptions)
    """Step 3: fine-tuning on the kept completions with the spec stripped."""
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    """Judge-ranked preference pairs sampled from a policy."""
    dpo: DPOOptions = Field(default_factory=DPOOptions)
    """Offline preference optimisation (DPO, KTO, SACPO's stages, MODPO)."""
    rm: RMOptions = Field(default_factory=RMOptions)
    """Reward and cost models trained on preference pairs (Safe RLHF's first step; MODPO's margin)."""
    rl: RLOptions = Field(default_factory=RLOptions)
    """Online RL with a judge reward (GRPO, RLOO, PPO, PPO-Lagrangian)."""
    merge: MergeConfig = Field(default_factory=MergeConfig)
    """Model merges (P-SACPO)."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Benchmarks, models to compare, pairwise judging."""
    guard: GuardConfig = Field(default_factory=GuardConfig)
    """Training a small safety guard (`deliberate guard train`) to serve as the `guard` judge."""

    @field_validator("name")
    @classmethod
    def _name_is_a_word(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _stages_are_valid(self) -> Recipe:
        self.dpo.stage_list()  # a bad stage is reported when the recipe is loaded, not hours later
        names = [m.name for m in self.merge.merges]
        if len(set(names)) != len(names):
            raise ValueError("merge.merges: two merges have the same name")
        return self


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`: mappings merge key by key, anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def _read_recipe(path: Path, seen: tuple[Path, ...] = (), read: list[Path] | None = None) -> dict[str, Any]:
    """A recipe file as a mapping, with the files it `extends` (relative to it) merged underneath, in order. Every
    file merged is appended to `read`, in merge order (the file itself last)."""
    data: Any = load_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DeliberateError(f"{path}: a recipe is a mapping of sections (model, data, ...), got {type(data).__name__}")
    parents = data.pop("extends", None) or []
    if not isinstance(parents, str | list) or not all(isinstance(p, str) for p in ([parents] if isinstance(
            parents, str) else parents)):
        raise DeliberateError(f"{path}: extends: expected a recipe file or a list of them, got {parents!r}")
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        parent_path = (path.resolve().parent / str(parent)).resolve()
        if parent_path in seen:
            raise DeliberateError(f"{path}: extends {parent}, which extends it back")
        if not parent_path.is_file():
            raise DeliberateError(f"{path}: extends {parent}, which does not exist ({parent_path})")
        merged = _deep_merge(merged, _read_recipe(parent_path, (*seen, parent_path), read))
    if read is not None:
        read.append(path)
    return _deep_merge(merged, data)


def find_recipe(path: str | Path) -> Path:
    """The recipe file `path` names: the file itself when it exists, else the packaged recipe of that name when it
    is a bare name (`demo`, `demo.yaml`, no folder); a missing file is one error that lists the packaged recipes."""
    path = Path(path)
    if path.is_file():
        return path
    if len(path.parts) == 1 and not path.suffix and (local := path.with_suffix(".yaml")).is_file():
        return local  # `--recipe demo` with a demo.yaml here: the user's own file comes first
    packaged = packaged_recipes()
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if len(path.parts) == 1 and name in packaged:
        return packaged[name]
    nor = ", nor a packaged recipe" if len(path.parts) == 1 else ""
    raise DeliberateError(f"{path}: no such file{nor}; {did_you_mean(name, packaged)}packaged recipes "
                          f"(--recipe NAME): {', '.join(packaged) or 'none'}")


def read_recipe(path: str | Path) -> tuple[list[Path], dict[str, Any]]:
    """The recipe `path` names (see `find_recipe`) as one mapping with what it `extends` merged in, and the files
    merged, in order: the recipe's own file last."""
    found = find_recipe(path)
    read: list[Path] = []
    data = _read_recipe(found, (found.resolve(),), read)
    return read, data


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe (the defaults when `path` is None), then apply `--set` overrides.

    `path` is a recipe file, or the name of a packaged recipe (`demo`, `sacpo-cpu`) when no such file exists.
    A recipe may start with `extends: other.yaml` (or a list of files, later ones winning), relative to itself:
    it then holds only what differs, e.g. a small CPU variant of a GPU recipe."""
    files, data = read_recipe(path) if path else ([], {})
    source = str(files[-1]) if files else "defaults"
    for assignment in overrides or []:
        apply_override(data, assignment)
    if overrides:
        source += " with --set " + ", ".join(a.partition("=")[0] for a in overrides)
    return validate(Recipe, data, source)
