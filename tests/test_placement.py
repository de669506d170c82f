"""Where a model goes: this process's GPU under `accelerate launch`, nowhere under FSDP / ZeRO-3 (the trainer
shards it), and QLoRA's clear errors; the LoRA merge from gathered weights; PPO's save refusing sharded runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from deliberate.config import ModelConfig
from deliberate.errors import DeliberateError
from deliberate.services import models
from deliberate.services.models import load_model, pick_device, placement, sharded_training

LAUNCH_ENV = ("LOCAL_RANK", "WORLD_SIZE", "RANK", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED",
              "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE")


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_each_process_under_accelerate_launch_uses_the_gpu_of_its_local_rank(monkeypatch, gpus):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert pick_device("auto") == "cuda:1"
    assert pick_device("cuda") == "cuda:1"  # not every rank on cuda:0
    assert pick_device("cuda:3") == "cuda:3"  # an explicit GPU is kept
    assert placement("auto", for_training=True) == "cuda:1"


def test_one_process_keeps_its_devices_as_before(gpus):
    assert pick_device("auto") == "cuda"
    assert pick_device("cpu") == "cpu"


def test_without_a_gpu_every_process_runs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("auto") == "cpu"
    assert placement("auto", for_training=True) == "cpu"


@pytest.mark.parametrize("env", [{"ACCELERATE_USE_FSDP": "true"},
                                 {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}],
                         ids=["fsdp", "zero3"])
def test_under_fsdp_or_zero3_a_model_to_train_is_placed_by_the_trainer(monkeypatch, gpus, env):
    monkeypatch.setenv("LOCAL_RANK", "1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert sharded_training() in ("FSDP", "ZeRO-3")
    assert placement("auto", for_training=True) is None
    assert placement("auto") == "cuda:1"  # a judge or a scorer still goes to this process's GPU


def test_zero2_replicates_the_weights_so_models_are_placed(monkeypatch, gpus):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert sharded_training() is None
    assert placement("auto", for_training=True) == "cuda"


def test_the_zero_stage_is_read_from_a_deepspeed_config_file(monkeypatch, tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config))
    assert sharded_training() == "ZeRO-3"


def _moves(monkeypatch) -> list:
    from transformers import PreTrainedModel

    moves, to = [], PreTrainedModel.to
    monkeypatch.setattr(PreTrainedModel, "to", lambda self, *a, **k: moves.append(a) or to(self, *a, **k))
    return moves


def test_load_model_leaves_a_model_to_train_under_fsdp_where_it_loaded(monkeypatch, tiny_model_dir):
    moves = _moves(monkeypatch)
    load_model(ModelConfig(name=str(tiny_model_dir)), for_training=True)
    assert moves == [("cpu",)]
    moves.clear()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    loaded = load_model(ModelConfig(name=str(tiny_model_dir)), for_training=True)
    assert moves == [] and loaded.device.type == "cpu"


def test_under_zero3_the_deepspeed_config_exists_while_a_model_to_train_loads(monkeypatch, tiny_model_dir):
    import accelerate.utils
    from transformers import AutoModelForCausalLM

    class Plugin:  # accelerate's DeepSpeedPlugin, without DeepSpeed: counts how many are alive
        alive = 0

        def __init__(self):
            Plugin.alive += 1

        def __del__(self):
            Plugin.alive -= 1

        def set_mixed_precision(self, mixed_precision):
            pass

        def set_deepspeed_weakref(self):  # what makes from_pretrained partition the weights (zero.Init)
            pass

    seen, load = [], AutoModelForCausalLM.from_pretrained.__func__
    monkeypatch.setattr(accelerate.utils, "DeepSpeedPlugin", Plugin)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **k: seen.append(Plugin.alive) or load(cls, *a, **k)))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    load_model(ModelConfig(name=str(tiny_model_dir)), for_training=True)
    load_model(ModelConfig(name=str(tiny_model_dir)))  # a judge or a frozen scorer: whole, on its device
    assert seen == [1, 0] and Plugin.alive == 0


def test_quantization_without_a_gpu_is_one_clear_error(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeliberateError, match=r"quantization 4bit needs a CUDA GPU \(bitsandbytes\)"):
        load_model(ModelConfig(name=str(tiny_model_dir)), for_training=True, quantization="4bit")


def test_quantization_without_bitsandbytes_names_the_extra_to_install(monkeypatch, gpus, tiny_model_dir):
    find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    with pytest.raises(DeliberateError, match=r"pip install 'deliberate\[qlora\]'"):
        load_model(ModelConfig(name=str(tiny_model_dir)), for_training=True, quantization="8bit")


def test_an_unknown_quantization_is_refused(tiny_model_dir):
    with pytest.raises(DeliberateError, match="use one of 4bit, 8bit"):
        load_model(ModelConfig(name=str(tiny_model_dir)), quantization="3bit")


def test_quantization_is_refused_under_fsdp(monkeypatch, gpus, tiny_model_dir):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(DeliberateError, match="not supported under FSDP"):
        load_model(ModelConfig(name=str(tiny_model_dir)), for_training=True, quantization="4bit")


def _lora_model(seed: int, tied: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    return get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                              init_lora_weights=False, task_type="CAUSAL_LM"))


class _ShardingAccelerator:
    """What `merged_model` asks of an FSDP accelerator, on one process: the gathered state dict is the model's,
    with a tied tensor listed once."""

    is_main_process = True

    def __init__(self):
        from accelerate.utils import DistributedType

        self.distributed_type = DistributedType.FSDP

    def unwrap_model(self, model):
        return model

    def get_state_dict(self, model):
        seen, out = set(), {}
        for k, v in model.state_dict().items():
            if v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                out[k] = v.clone()
        return out


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_a_lora_model_merged_from_its_gathered_weights_equals_the_model_merged_in_place(tied):
    from deliberate.services.training import merged_model

    model = _lora_model(3, tied)
    trainer = SimpleNamespace(accelerator=_ShardingAccelerator(), model=model, model_wrapped=model)
    from deliberate.services.training import gathered_weights

    merged = merged_model(trainer, Path("unused"), gathered_weights(trainer))  # the folder: a quantized base only
    assert merged is not model.get_base_model()  # a copy built from the gathered weights
    assert (merged.lm_head.weight is merged.model.embed_tokens.weight) == tied
    from_gathered, in_place = merged.state_dict(), model.merge_and_unload().state_dict()
    assert from_gathered.keys() == in_place.keys()
    assert all(torch.equal(from_gathered[k], in_place[k]) for k in in_place)


def test_ppo_saving_from_the_main_process_alone_refuses_sharded_runs(monkeypatch, tmp_path):
    from deliberate.services.runs import ModelRun
    from deliberate.services.training import save_policy

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(DeliberateError, match="does not work under FSDP"):
        save_policy(None, None, ModelRun(tmp_path), lora=False, card="", summary={})
    assert not list(tmp_path.iterdir())


def test_a_qlora_adapter_is_merged_into_the_full_precision_start_weights(monkeypatch, tiny_model_dir, tmp_path):
    """The merge path of a quantized base (bitsandbytes needs a GPU: here the base is marked quantized): `model/`
    is the saved adapter on the start model's full weights, reloaded, equal to merging them independently."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from deliberate.config import load_recipe
    from deliberate.services import training
    from deliberate.services.io import write_jsonl
    from deliberate.services.runs import Layout
    from deliberate.stages.sft import run_sft

    seen = []
    monkeypatch.setattr(training, "is_quantized", lambda model: seen.append(model) or True)
    data = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": [{"role": "user", "content": f"Question {i}?"}],
         "completion": [{"role": "assistant", "content": "Paris is the answer."}]} for i in range(4)])
    r = load_recipe(None, [f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "sft.max_steps=2",
                           "sft.per_device_train_batch_size=2", "sft.learning_rate=1e-2", "sft.lora_dropout=0"])
    run_sft(r, data, show_progress=False)
    assert seen  # the QLoRA branch ran
    run = Layout(r).sft
    saved = AutoModelForCausalLM.from_pretrained(run.model).state_dict()
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                         str(run.adapter)).merge_and_unload().state_dict()
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)
    assert any(not torch.equal(saved[k], start[k]) for k in saved)  # the adapter moved the weights


@pytest.mark.parametrize(("sets", "message"), [
    (["sft.quantization=4bit", "sft.lora=false"], "set lora: true"),
    (["rl.quantization=4bit", "rl.algo=ppo"], "works with grpo and rloo"),
    (["rm.quantization=8bit"], "not supported for reward models")])
def test_qlora_settings_that_cannot_work_fail_when_the_recipe_loads(sets, message):
    from deliberate.config import load_recipe

    with pytest.raises(DeliberateError, match=message):
        load_recipe(None, sets)


def test_weights_load_with_transformers_whatever_backend_answers_and_a_served_model_is_refused(tiny_model_dir):
    from deliberate.services.models import weights_config

    assert weights_config(ModelConfig(name=str(tiny_model_dir), backend="vllm")).backend == "hf"  # vLLM weights
    served = ModelConfig(name="gpt-4o-mini", backend="openai", base_url="http://127.0.0.1:9/v1")
    assert weights_config(served, str(tiny_model_dir)).backend == "hf"  # a stage's output of a served base
    with pytest.raises(DeliberateError, match="backend openai.*loads the weights in this process"):
        load_model(weights_config(served))
    assert load_model(weights_config(ModelConfig(name=str(tiny_model_dir), backend="vllm"))).model is not None
