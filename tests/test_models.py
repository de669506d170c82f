"""Model loading: local folders, PEFT adapters, the embedded SmolLM2, and clear errors."""

import json
import shutil

import pytest
import torch

from deliberate.config import ModelConfig, SamplingConfig
from deliberate.errors import DeliberateError
from deliberate.services.models import load_model


def test_a_local_folder_loads_in_float32_on_cpu_in_eval_mode(tiny_model_dir):
    loaded = load_model(ModelConfig(name=str(tiny_model_dir)))
    assert loaded.model.dtype == torch.float32
    assert loaded.device.type == "cpu"
    assert not loaded.model.training
    assert loaded.tokenizer.pad_token is not None
    assert loaded.base_path is None


def test_training_mode_is_requested_explicitly(tiny_model_dir):
    assert load_model(ModelConfig(name=str(tiny_model_dir)), for_training=True).model.training


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # init_lora_weights=False: a non-zero adapter, so that it visibly changes the model.
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    folder = tmp_path_factory.mktemp("adapter")
    peft.save_pretrained(folder)
    return folder


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_an_adapter_folder_loads_on_its_recorded_base(tiny_model_dir, adapter_dir):
    from peft import PeftModel

    loaded = load_model(ModelConfig(name=str(adapter_dir)))
    base = load_model(ModelConfig(name=str(tiny_model_dir)))
    assert isinstance(loaded.model, PeftModel)
    assert loaded.base_path == str(tiny_model_dir.resolve())
    ids = base.tokenizer("What is the capital of France?")["input_ids"]
    assert not torch.allclose(_logits(loaded.model, ids), _logits(base.model, ids))


def test_an_adapter_whose_base_moved_loads_with_model_base(tiny_model_dir, adapter_dir, tmp_path):
    moved = tmp_path / "adapter"
    shutil.copytree(adapter_dir, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(DeliberateError, match="no such folder"):
        load_model(ModelConfig(name=str(moved)))
    assert load_model(ModelConfig(name=str(moved), base=str(tiny_model_dir))).base_path == str(tiny_model_dir.resolve())


def test_model_base_on_a_plain_model_folder_is_an_error(tiny_model_dir):
    with pytest.raises(DeliberateError, match="not a PEFT adapter folder"):
        load_model(ModelConfig(name=str(tiny_model_dir), base=str(tiny_model_dir)))


def test_unknown_models_are_one_line_errors(tmp_path):
    with pytest.raises(DeliberateError, match="no such folder"):
        load_model(ModelConfig(name=str(tmp_path / "missing")))
    with pytest.raises(DeliberateError, match="'nobody/no-such-model': not a local folder, and it could not be loaded from the Hugging Face Hub"):
        load_model(ModelConfig(name="nobody/no-such-model"))


def test_remote_code_is_never_run_unless_the_user_allows_it(tiny_model_dir, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "ran"
    (folder / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    load_model(ModelConfig(name=str(folder)))  # the built-in Llama class; the folder's code is ignored
    assert not marker.exists()
    with pytest.raises(DeliberateError):  # opting in runs the module (which defines no model class)
        load_model(ModelConfig(name=str(folder), trust_remote_code=True))
    assert marker.read_text() == "ran"


@pytest.mark.smollm2
def test_the_embedded_smollm2_loads_and_answers_with_its_own_chat_template():
    from deliberate.services.generation import generate, render_prompt

    loaded = load_model(ModelConfig(name="smollm2"))
    assert 130e6 < sum(p.numel() for p in loaded.model.parameters()) < 140e6
    assert render_prompt(loaded.tokenizer, "Hi").startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    [out] = generate(loaded.model, loaded.tokenizer, ["What is the capital of France?"],
                     SamplingConfig(max_new_tokens=24), show_progress=False)
    assert "Paris" in out.text
