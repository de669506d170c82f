"""Files that ship inside the package, so that an installed `deliberate` works outside a clone: the default spec,
the demo prompts, the benchmark definitions (`benchmarks/*.yaml`), the recipes (`recipes/*.yaml`) and the
accelerate configs (`recipes/accelerate/*.yaml`). In a clone, `eval/` and `recipes/` link to these folders.

The package is installed as plain files (a wheel or an editable install, never a zip), so every resource is a
real path that can be opened, listed, copied or handed to `accelerate launch --config_file`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource_path(*parts: str) -> Path:
    """A packaged file or folder: `resource_path("benchmarks")`, `resource_path("recipes", "demo.yaml")`."""
    return Path(str(files(__name__).joinpath(*parts)))


def _yaml_files(folder: Path) -> dict[str, Path]:
    return dict(sorted((p.stem, p) for p in folder.glob("*.yaml")))


def packaged_recipes() -> dict[str, Path]:
    """The packaged recipes by name (`demo`, `sacpo-cpu`, ...): what `--recipe NAME` loads."""
    return _yaml_files(resource_path("recipes"))


def accelerate_configs() -> dict[str, Path]:
    """The packaged accelerate configs by name (`ddp`, `fsdp`, `deepspeed-zero2`, ...)."""
    return _yaml_files(resource_path("recipes", "accelerate"))
