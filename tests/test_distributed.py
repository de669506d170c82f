"""Training verbs under `accelerate launch` with two processes on the CPU (torch.distributed, gloo): the run
finishes, one process writes the outputs, and both ranks end with the same weights; under FSDP2 the saved
model holds the weights the ranks trained (gathered before any LoRA merge)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_model

from deliberate.services.io import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate"
REWARDS = Path(__file__).with_name("rl_rewards.py")
FSDP_ON_CPU = Path(__file__).with_name("fsdp_on_cpu.py")


def test_the_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = load_config_from_file(str(path))
        kinds[path.stem] = str(config.distributed_type)
    assert {"ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3", "cpu-2proc", "cpu-fsdp2"} <= set(kinds)
    assert "FSDP" in kinds["fsdp"] and "FSDP" in kinds["cpu-fsdp2"] and "DEEPSPEED" in kinds["deepspeed-zero3"]


@pytest.mark.parametrize("verb", ["rl", "dpo"])
def test_a_training_verb_runs_on_two_processes_and_the_ranks_agree(tmp_path, verb):
    tiny = build_tiny_model(tmp_path / "tiny", seed=5)
    out = tmp_path / "out"
    sets = [f"model.name={tiny}", f"output_dir={out}"]
    if verb == "rl":
        prompts = tmp_path / "prompts.jsonl"
        write_jsonl(prompts, [{"id": str(i), "prompt": f"Tell me about {w}", "category": "safe"}
                              for i, w in enumerate(["cats", "dogs", "rain", "maps"])])
        sets += [f"data.source={prompts}", f"rl.reward_function={REWARDS}:letter_a", "rl.max_steps=3",
                 "rl.prompts_per_step=4", "rl.max_new_tokens=8", "rl.lora=false", "rl.learning_rate=1e-2"]
        args = ["rl", "--algo", "ppo"]
        summary_path = out / "rl" / "summary.json"
    else:
        pairs = tmp_path / "pairs.jsonl"
        write_jsonl(pairs, [{"prompt": f"Question {i}?", "chosen": "Paris is the answer.",
                             "rejected": "I'm sorry, I can't."} for i in range(8)])
        sets += [f"dpo.data.source={pairs}", "dpo.lora=false", "dpo.max_steps=2", "dpo.learning_rate=1e-3",
                 "dpo.per_device_train_batch_size=2", "dpo.max_length=64"]
        args = ["dpo"]
        summary_path = out / "dpo" / "dpo" / "summary.json"
    run = _launch("cpu-2proc.yaml", ["-m", "deliberate", *args], sets, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    digests = summary["weights_digest_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1], digests
    assert (summary_path.parent / "model" / "deliberate_model.json").is_file()
    assert not list(summary_path.parent.glob("*.tmp"))


def _launch(config: str, program: list[str], sets: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config), *program]
    for s in sets:
        command += ["--set", s]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_PORT": "0"}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


# Both verbs and both saves (full weights gathered by the trainer; a LoRA merge of gathered weights), two runs
# rather than four, for the suite's time: each is a pair of processes.
@pytest.mark.parametrize(("verb", "lora"), [("sft", False), ("dpo", True)], ids=["sft-full", "dpo-lora"])
def test_under_fsdp2_the_saved_model_holds_the_weights_the_ranks_trained(tmp_path, verb, lora):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from deliberate.services.training import weights_digest

    tiny = build_tiny_model(tmp_path / "tiny", seed=5)
    out = tmp_path / "out"
    sets = [f"model.name={tiny}", f"output_dir={out}", f"{verb}.lora={str(lora).lower()}", f"{verb}.max_steps=2",
            f"{verb}.learning_rate=1e-2", f"{verb}.per_device_train_batch_size=2", f"{verb}.max_length=64"]
    if verb == "sft":
        write_jsonl(out / "filter" / "kept.jsonl", [
            {"id": str(i), "prompt": f"How do I bake bread number {i}?", "category": "safe",
             "reasoning": "Baking is allowed.", "answer": "Mix flour, water, salt and yeast, then bake."}
            for i in range(8)])
        folder = out / "sft"
    else:
        pairs = tmp_path / "pairs.jsonl"
        write_jsonl(pairs, [{"prompt": f"Question {i}?", "chosen": "Paris is the answer.",
                             "rejected": "I'm sorry, I can't."} for i in range(8)])
        sets.append(f"dpo.data.source={pairs}")
        folder = out / "dpo" / "dpo"
    run = _launch("cpu-fsdp2.yaml", [str(FSDP_ON_CPU), verb], sets, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert set(re.findall(r"FSDP2 sharded \w+ on rank (\d)", run.stderr)) == {"0", "1"}, "FSDP2 did not run"
    digests = json.loads((folder / "summary.json").read_text())["weights_digest_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1], digests
    assert (folder / "model" / "deliberate_model.json").is_file() and not list(folder.glob("*.tmp"))
    saved = AutoModelForCausalLM.from_pretrained(folder / "model")
    start = AutoModelForCausalLM.from_pretrained(tiny)
    assert weights_digest(saved, trainable_only=False) != weights_digest(start, trainable_only=False)
    if not lora:
        assert weights_digest(saved, trainable_only=False) == digests[0]  # every weight, as the ranks had them
        return
    adapter = PeftModel.from_pretrained(start, folder / "adapter", is_trainable=True)
    assert weights_digest(adapter) == digests[0]  # the gathered adapter is the one the ranks trained
    merged, mine = adapter.merge_and_unload().state_dict(), saved.state_dict()
    assert merged.keys() == mine.keys()
    assert all(torch.equal(merged[k], mine[k]) for k in merged)  # model/ is that adapter merged into the start
