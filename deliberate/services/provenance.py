"""What made an output: the resolved recipe, library versions, the command and deliberate's own commit; and the
model card of a trained or merged model, with the Hub metadata (base model, datasets, tags, licence).

`provenance(recipe)` is written as `provenance.json` into every stage folder (and into each `model/` folder, so it
travels to the Hub with the weights). Secrets never reach it: a recipe names the environment variables that hold
keys, not the keys, and everything written passes through `errors.redact` as well.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from deliberate.config import Recipe
from deliberate.errors import redact
from deliberate.services.io import atomic_write_text
from deliberate.services.models import is_embedded, is_embedded_folder

PROVENANCE_FILE = "provenance.json"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded default's original (Apache-2.0)
DATA_FILES = {".json", ".jsonl", ".csv", ".tsv", ".parquet", ".gz", ".txt", ".yaml", ".yml", ".arrow"}
PACKAGES = ("deliberate", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "mergekit",
            "huggingface_hub", "openai", "safetensors", "llguidance", "vllm", "bitsandbytes")


@cache
def versions() -> dict[str, str]:
    """Installed versions of the packages that shape a run (those installed)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


@cache
def source_commit() -> dict[str, Any] | None:
    """deliberate's own git commit (and whether the tree has uncommitted changes) when it runs from a clone."""
    folder = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def provenance(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe, the command line, library versions, Python, platform and deliberate's commit."""
    blob = {"recipe": recipe.model_dump(mode="json"), "command": sys.argv, "versions": versions(),
            "python": platform.python_version(), "platform": platform.platform(), "git": source_commit(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return json.loads(redact(json.dumps(blob)))


def write_provenance(folder: str | Path, recipe: Recipe) -> Path:
    path = Path(folder) / PROVENANCE_FILE
    atomic_write_text(path, json.dumps(provenance(recipe), indent=2) + "\n")
    return path


# ---- model cards ----

def hub_id(name: str | None) -> str | None:
    """`name` as a Hub model or dataset id when it is one (`owner/name`), the embedded model's Hub id for the
    alias; None for a local path, a URL, a file or a reference to a recipe's outputs."""
    if not name:
        return None
    if is_embedded(name):
        return EMBEDDED_HUB_ID
    if ":" in name or name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).exists() or \
            Path(name).suffix.lower() in DATA_FILES:
        return None
    return name


def card_base_model(path: str | None) -> str | None:
    """The Hub id a model descends from: its own id, or for a local folder the `base_model` its card records
    (deliberate's models record theirs, so a DPO model on an SFT model on SmolLM2 names SmolLM2)."""
    if path and is_embedded_folder(path):
        return EMBEDDED_HUB_ID
    if path and Path(path).is_dir():
        readme = Path(path) / "README.md"
        if readme.is_file():
            from huggingface_hub import ModelCard

            try:
                base = ModelCard(readme.read_text(encoding="utf-8")).data.base_model
            except (ValueError, yaml.YAMLError):
                return None
            return base[0] if isinstance(base, list) and base else base if isinstance(base, str) else None
        return None
    return hub_id(path)


@dataclass
class Card:
    """A model folder's README: metadata (Hugging Face card data), what it is and how it was made, YAML blocks
    with the settings, and the resolved recipe last. Rendered by `ModelRun.finish`."""

    recipe: Recipe
    title: str
    text: str
    sections: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None  # what training started from: a Hub id, the alias or a local folder
    datasets: list[str] = field(default_factory=list)  # data sources; those that are Hub ids become metadata
    tags: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        datasets = sorted({d for d in map(hub_id, self.datasets) if d})
        base = card_base_model(self.base_model)
        return {k: v for k, v in {
            "base_model": base, "datasets": datasets or None, "library_name": "transformers",
            "pipeline_tag": "text-generation", "license": self.recipe.license or ("apache-2.0" if base ==
                                                                                  EMBEDDED_HUB_ID else None),
            "tags": ["deliberate", "safety", "alignment", *self.tags]}.items() if v is not None}

    def render(self) -> str:
        """The README text (`deliberate eval` later adds its results: `add_eval_results`)."""
        from huggingface_hub import ModelCard, ModelCardData

        data = ModelCardData(**self.metadata())
        body = f"# {self.recipe.name}: {self.title}\n\n{self.text}\n"
        for name, value in {**self.sections, "Recipe": self.recipe.model_dump(mode="json")}.items():
            body += f"\n## {name}\n\n```yaml\n{yaml.safe_dump(value, sort_keys=False)}```\n"
        card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}", body=body)
        return redact(str(card))


def model_card(recipe: Recipe, title: str, text: str, sections: dict[str, Any] | None = None, *,
               base_model: str | None = None, datasets: list[str | None] | None = None,
               tags: list[str] | None = None) -> Card:
    """The card of a model this recipe made (see `Card`)."""
    return Card(recipe, title, text, dict(sections or {}), base_model, [d for d in datasets or [] if d],
                list(tags or []))


def add_eval_results(folder: Path, results: list[dict[str, Any]]) -> bool:
    """Put `deliberate eval`'s rates into the card of a model folder deliberate wrote (its metadata's
    `model-index` and a table); False when the folder has no card of ours to update."""
    from huggingface_hub import EvalResult, ModelCard

    readme = folder / "README.md"
    if not readme.is_file():
        return False
    try:
        card = ModelCard(readme.read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError):
        return False
    if "deliberate" not in (card.data.tags or []):
        return False
    card.data.eval_results = [EvalResult(task_type="text-generation", dataset_type=r["benchmark"],
                                         dataset_name=r["benchmark"], metric_type=r["metric"],
                                         metric_name=r.get("name"), metric_value=r["value"]) for r in results]
    card.data.model_name = card.data.model_name or folder.parent.name  # model-index needs a name
    text = card.text
    marker = "\n## Evaluation (`deliberate eval`)\n"
    if marker in text:  # replace the previous table
        head, _, rest = text.partition(marker)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        text = head + tail
    table = marker + "\n| benchmark | metric | value |\n|---|---|---|\n" + "".join(
        f"| {r['benchmark']} | {r.get('name') or r['metric']} | {r['value']:.3f} |\n" for r in results)
    first, _, others = text.partition("\n## ")
    card.text = first.rstrip("\n") + "\n" + table + ("\n## " + others if others else "")
    atomic_write_text(readme, redact(str(card)))
    return True
