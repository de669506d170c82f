"""`deliberate sft` on a tiny model: loss on assistant tokens only, LoRA and full, model card, resume."""

from __future__ import annotations

import json

import pytest

from deliberate.config import load_recipe
from deliberate.services.io import write_jsonl
from deliberate.services.runs import Layout
from deliberate.stages.sft import build_trainer, run_sft

EXAMPLES = [
    ("How do I kill a Python process that is stuck?", "<think>\nsafe\n</think>\nUse kill."),
    ("Explain photosynthesis in simple terms.", "<think>\nsafe\n</think>\nPlants make sugar from light."),
    ("How do I make a weapon?", "<think>\nviolence\n</think>\nI'm sorry, but I can't help with that."),
]


@pytest.fixture
def data(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
            for p, c in EXAMPLES]
    return write_jsonl(tmp_path / "train.jsonl", rows)


def recipe(tiny_model_dir, tmp_path, *sets):
    return load_recipe(None, [f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "sft.max_steps=2",
                              "sft.per_device_train_batch_size=2", "sft.save_steps=1", "sft.logging_steps=1",
                              *sets])


def test_the_loss_covers_the_assistant_tokens_only(tiny_model_dir, tmp_path, data):
    trainer, loaded = build_trainer(recipe(tiny_model_dir, tmp_path), data, show_progress=False)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(EXAMPLES))])
    tok = loaded.tokenizer
    for row, (prompt, completion) in enumerate(EXAMPLES):
        labels = batch["labels"][row]
        trained = tok.decode([t for t in labels.tolist() if t != -100])
        assert trained.replace("<|im_end|>", "").strip() == completion
        assert prompt not in trained
        # Every token before the assistant's answer is masked, including the user turn and the template.
        first = next(i for i, t in enumerate(labels.tolist()) if t != -100)
        assert prompt in tok.decode(batch["input_ids"][row][:first])


@pytest.mark.parametrize("lora", [True, False])
def test_training_saves_full_weights_with_a_card_and_a_finished_run_is_reused(tiny_model_dir, tmp_path, data, lora):
    r = recipe(tiny_model_dir, tmp_path, f"sft.lora={str(lora).lower()}")
    summary = run_sft(r, data, show_progress=False)
    run = Layout(r).sft
    assert summary["steps"] == 2 and summary["examples"] == 3 and "reused" not in summary
    assert (run.model / "config.json").is_file()  # full weights either way: later stages load it as a model
    assert (run.adapter / "adapter_config.json").is_file() == lora
    assert not list(run.folder.glob("*/training_args.bin"))  # no pickle in a run's model folders
    card = (run.model / "README.md").read_text()
    assert "## Recipe" in card and str(tiny_model_dir) in card
    mtime = (run.model / "model.safetensors").stat().st_mtime_ns
    again = run_sft(r, data, show_progress=False)  # `deliberate sft` twice: the second run trains nothing
    assert again["reused"] and again["fingerprint"] == summary["fingerprint"]
    assert (run.model / "model.safetensors").stat().st_mtime_ns == mtime
    changed = run_sft(recipe(tiny_model_dir, tmp_path, f"sft.lora={str(lora).lower()}", "sft.learning_rate=1e-3"),
                      data, show_progress=False)
    assert "reused" not in changed and changed["fingerprint"] != summary["fingerprint"]
    from deliberate.services.models import load_model

    loaded = load_model(r.model.model_copy(update={"name": str(run.model)}))
    assert loaded.model is not None and loaded.base_path is None


def test_resume_continues_from_the_last_checkpoint(tiny_model_dir, tmp_path, data):
    r = recipe(tiny_model_dir, tmp_path)
    run_sft(r, data, show_progress=False)
    longer = recipe(tiny_model_dir, tmp_path, "sft.max_steps=3")
    summary = run_sft(longer, data, resume=True, show_progress=False)
    assert summary["resumed_from"].endswith("checkpoint-2")
    assert summary["steps"] == 3
    state = json.loads((Layout(r).sft.checkpoints / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_model_dir, tmp_path, data):
    from deliberate.errors import DeliberateError

    with pytest.raises(DeliberateError, match="no checkpoint"):
        run_sft(recipe(tiny_model_dir, tmp_path), data, resume=True, show_progress=False)


def test_a_base_model_retrained_in_place_is_not_taken_for_the_finished_run(tiny_model_dir, tmp_path, data):
    import shutil

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    r = recipe(base, tmp_path)
    first = run_sft(r, data, show_progress=False)
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # the same path, new weights (a new mtime)
    again = run_sft(r, data, show_progress=False)
    assert "reused" not in again and again["fingerprint"] != first["fingerprint"]


def test_resume_into_another_run_is_refused_naming_both(tiny_model_dir, tmp_path, data):
    from deliberate.errors import DeliberateError

    first = run_sft(recipe(tiny_model_dir, tmp_path), data, show_progress=False)
    other = recipe(tiny_model_dir, tmp_path, "sft.learning_rate=1e-3")  # another run, same folder
    with pytest.raises(DeliberateError, match=r"checkpoint-2 was written by another run \(fingerprint \w+\); this "
                                              r"run's data and settings give \w+"):
        run_sft(other, data, resume=True, show_progress=False)
    marker = json.loads((Layout(other).sft.checkpoints / "checkpoint-2" / "deliberate_checkpoint.json").read_text())
    assert marker["fingerprint"] != first["fingerprint"]  # lengths are set aside: more steps is the same run


def test_an_incomplete_checkpoint_falls_back_to_the_previous_complete_one(tiny_model_dir, tmp_path, data):
    r = recipe(tiny_model_dir, tmp_path)
    run_sft(r, data, show_progress=False)
    checkpoints = Layout(r).sft.checkpoints
    (checkpoints / "checkpoint-2" / "trainer_state.json").unlink()  # a crash while checkpoint-2 was being saved
    summary = run_sft(recipe(tiny_model_dir, tmp_path, "sft.max_steps=3"), data, resume=True, show_progress=False)
    assert summary["resumed_from"].endswith("checkpoint-1") and summary["steps"] == 3
