"""mergekit merges: weights match the formulas, LoRA adapters merge into their base, P-SACPO sweeps."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model
from safetensors.torch import load_file

from deliberate.config import load_recipe
from deliberate.errors import DeliberateError
from deliberate.stages.merge import run_merges


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-inputs")
    return [build_tiny_model(root / name, seed=seed) for name, seed in (("base", 0), ("helpful", 1), ("safe", 2))]


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _merge(tmp_path, merges, model=None):
    recipe = load_recipe(None, [f"output_dir={tmp_path}", f"merge.merges={merges}"]
                         + ([f"model.name={model}"] if model else []))
    return recipe, run_merges(recipe, show_progress=False)


def test_p_sacpo_linear_sweep_matches_the_formula(three_models, tmp_path):
    base, helpful, safe = three_models
    _, summaries = _merge(tmp_path, f"[{{name: p-sacpo, models: [{helpful}, {safe}], alphas: [0.25, 0.75]}}]")
    assert [s["model"] for s in summaries] == ["p-sacpo/a0.25", "p-sacpo/a0.75"]
    h, s = _weights(helpful), _weights(safe)
    for alpha in (0.25, 0.75):
        merged = _weights(tmp_path / "merge" / "p-sacpo" / f"a{alpha:g}" / "model")
        assert set(merged) == set(h)
        for name in h:
            assert torch.allclose(merged[name], (1 - alpha) * h[name] + alpha * s[name], atol=1e-6), name
    assert (tmp_path / "merge" / "p-sacpo" / "a0.25" / "model" / "tokenizer.json").is_file()
    assert "weights [0.75, 0.25]" in (tmp_path / "merge" / "p-sacpo" / "a0.25" / "model" / "README.md").read_text()


def test_task_arithmetic_matches_the_formula(three_models, tmp_path):
    base, helpful, safe = three_models
    _merge(tmp_path, f"[{{name: ta, method: task_arithmetic, base_model: {base}, models: [{helpful}, {safe}], "
                     "weights: [0.7, 0.4]}]")
    b, h, s = _weights(base), _weights(helpful), _weights(safe)
    merged = _weights(tmp_path / "merge" / "ta" / "model")
    for name in b:
        assert torch.allclose(merged[name], b[name] + 0.7 * (h[name] - b[name]) + 0.4 * (s[name] - b[name]),
                              atol=1e-5), name


def test_lora_adapter_is_merged_into_its_base(three_models, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = three_models[0]
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    merged_by_peft = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    _merge(tmp_path, f"[{{name: half, models: [{base}, {adapter}], alphas: [0.5]}}]")
    merged = _weights(tmp_path / "merge" / "half" / "a0.5" / "model")
    b = _weights(base)
    changed = 0
    for name, value in b.items():
        expect = 0.5 * value + 0.5 * merged_by_peft[name]
        assert torch.allclose(merged[name], expect, atol=1e-5), name
        changed += not torch.equal(merged_by_peft[name], value)
    assert changed == 4  # q_proj and v_proj of both layers


def test_merges_chain_and_rerun_is_reused(three_models, tmp_path):
    base, helpful, safe = three_models
    merges = (f"[{{name: first, models: [{helpful}, {safe}], alphas: [0.5]}}, "
              f"{{name: second, method: slerp, models: ['merge:first/a0.5', {base}], alphas: [0.3]}}]")
    recipe, summaries = _merge(tmp_path, merges)
    assert len(summaries) == 2 and not any(s.get("reused") for s in summaries)
    assert all(s.get("reused") for s in run_merges(recipe, show_progress=False))


def test_merge_errors_are_one_line(three_models, tmp_path):
    base, helpful, safe = three_models
    with pytest.raises(DeliberateError, match="alphas need exactly two models"):
        _merge(tmp_path, f"[{{name: x, models: [{base}, {helpful}, {safe}], alphas: [0.5]}}]")
    with pytest.raises(DeliberateError, match="needs base_model"):
        _merge(tmp_path, f"[{{name: x, method: ties, models: [{helpful}, {safe}]}}]")
    assert _merge(tmp_path, "[]")[1] == []
    with pytest.raises(DeliberateError, match="run `deliberate dpo` first"):
        _merge(tmp_path, f"[{{name: x, models: [stage:helpful, {safe}], alphas: [0.5]}}]")
