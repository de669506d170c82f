"""Publishing finished models on the Hugging Face Hub (`push_to_hub`, `hub_model_id`, `hub_private`).

A training verb or `merge` uploads each model folder it finished (or reused) after it is complete on disk: the
weights, tokenizer, the model card with its metadata and `provenance.json`. An upload that fails leaves the local
model as it is and ends the command with one `error:` line. The token is huggingface_hub's own (`HF_TOKEN`, or
a stored login); deliberate never reads or writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deliberate.config import Recipe
from deliberate.config.training import Publishing
from deliberate.errors import DeliberateError, redact
from deliberate.services.runs import MARKER, Layout, ModelRun
from deliberate.services.training import is_main_process


@dataclass(frozen=True)
class Upload:
    label: str  # the model's name in the recipe: sft, dpo-safe-beta0.1, merge-psacpo-a0.5, ...
    folder: Path  # the finished `model/` folder
    repo_id: str


def repo_for(section: Publishing, label: str, several: bool) -> str:
    """The Hub repository of one model: `hub_model_id` with `{label}` filled in, or `-<label>` appended when
    the section makes several models and the id has no `{label}`."""
    assert section.hub_model_id is not None
    if "{label}" in section.hub_model_id:
        return section.hub_model_id.replace("{label}", label)
    return f"{section.hub_model_id}-{label}" if several else section.hub_model_id


def finished_models(recipe: Recipe, verb: str) -> list[tuple[str, ModelRun]]:
    """(label, run) for every finished model a verb writes under the recipe's output folder."""
    layout = Layout(recipe)
    if verb in ("sft", "rl"):
        run = layout.sft if verb == "sft" else layout.rl
        return [(verb, run)] if run.finished else []
    folder = layout.root / verb
    names = {"dpo": lambda: [s.name for s in recipe.dpo.stage_list()], "rm": lambda: [m.name for m in recipe.rm.models],
             "merge": lambda: [m.name for m in recipe.merge.merges]}[verb]()
    runs = [ModelRun(m.parent.parent) for m in sorted(folder.glob(f"**/model/{MARKER}"))]
    parts = [(r, r.folder.relative_to(folder).parts) for r in runs]
    return [("-".join((verb, *p)), r) for r, p in parts if p and p[0] in names]  # this recipe's, not stale ones


def uploads(recipe: Recipe, verb: str, section: Publishing) -> list[Upload]:
    """What `push_to_hub` sends for this verb: one repository per finished model."""
    found = finished_models(recipe, verb)
    several = len(found) > 1
    return [Upload(label, run.model, repo_for(section, label, several)) for label, run in found]


def push(recipe: Recipe, verb: str, section: Publishing) -> list[Upload]:
    """Upload the verb's finished models when the section says so (main process only); returns the uploads."""
    if not section.push_to_hub or not is_main_process():
        return []
    todo = uploads(recipe, verb, section)
    if not todo:
        return []
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalTokenNotFoundError, OfflineModeIsEnabled

    api = HfApi()
    for up in todo:
        try:
            api.create_repo(up.repo_id, private=section.hub_private, repo_type="model", exist_ok=True)
            api.upload_folder(repo_id=up.repo_id, folder_path=str(up.folder), repo_type="model",
                              commit_message=f"deliberate {verb}: {recipe.name} {up.label}")
        except OfflineModeIsEnabled:
            raise DeliberateError(f"push_to_hub: {up.repo_id}: the Hub is offline (HF_HUB_OFFLINE is set); the "
                                  f"model is saved in {up.folder}. Unset HF_HUB_OFFLINE and run again") from None
        except LocalTokenNotFoundError:
            raise DeliberateError(f"push_to_hub: {up.repo_id}: no Hugging Face token (set HF_TOKEN or run `hf "
                                  f"auth login`); the model is saved in {up.folder}") from None
        except Exception as e:  # HfHubHTTPError, httpx's connection errors, OSError, ...: one line, redacted
            reason = redact(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            raise DeliberateError(f"push_to_hub: {up.repo_id}: the upload failed: {reason}; the model is saved "
                                  f"in {up.folder}") from None
    return todo
