"""benchmarks/gpu_check.py, the prepared GPU check, run as a GPU image would run it: `--tiny` on the CPU, with trl,
datasets, vllm and the CLI's libraries made impossible to import (that image has torch, transformers, peft and
accelerate only)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ["trl", "datasets", "vllm", "pandas", "mergekit", "openai", "typer", "pydantic", "rich"]

# A package whose sys.modules entry is None cannot be imported, and importlib.util.find_spec reports it missing:
# as if it were not installed.
RUN_WITHOUT = """
import runpy, sys
absent, argv = sys.argv[1].split(","), sys.argv[2:]
for name in absent:
    sys.modules[name] = None
for name in absent:
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"the block does not work: {name} imported")
sys.argv = argv
runpy.run_path(argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def check(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu-check") / "gpu.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("DELIBERATE_DECODER", None)
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, ",".join(ABSENT), str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny",
         "--device", "cpu", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done, json.loads(out.read_text())


def test_it_runs_without_trl_datasets_vllm_or_the_cli_libraries(check):
    done, report = check
    assert report["tiny"] and report["device"].startswith("cpu")
    failed = {name: part["error"] for name, part in [*report.items(), *report["generation"].items()]
              if isinstance(part, dict) and "error" in part}
    assert not failed  # a failing section or generation path is reported, not raised: none may fail here
    assert report["rich_stand_in"] is True  # rich blocked: generation's progress bars got the stand-in
    assert "grpo step" in done.stdout and "deliberate_generate" in done.stdout  # the summary table


def test_every_section_reports_positive_throughput(check):
    _, report = check
    assert report["sft"]["tokens_per_s"] > 0 and report["dpo"]["tokens_per_s"] > 0
    assert report["sft"]["mfu"] is None  # no peak known on a CPU
    generation = report["generation"]
    for name in ("hf_generate", "deliberate_generate", "deliberate_hf_cascade"):
        assert generation[name]["ran"], generation[name]
        assert generation[name]["tokens_per_s"] > 0 and generation[name]["new_tokens"] > 0


def test_sft_starts_at_the_loss_of_a_uniform_guess(check):
    sft = check[1]["sft"]
    assert sft["loss_first"] == pytest.approx(math.log(check[1]["model"]["vocab"]), abs=0.1)
    assert sft["loss_last"] < sft["loss_first"]  # the same batch every step: the steps train


def test_dpo_loss_is_log_2_while_policy_equals_reference(check):
    dpo = check[1]["dpo"]
    assert dpo["loss_step0"] == pytest.approx(math.log(2), abs=1e-4)
    assert dpo["loss_last"] < dpo["loss_step0"] - 0.01  # chosen over rejected, on a fixed batch


def test_both_deliberate_paths_agree_with_hf_generate_in_float32(check):
    generation = check[1]["generation"]
    assert generation["deliberate_path"].startswith("decode loop")  # the CPU path; the cascade path runs too
    for name in ("deliberate_generate", "deliberate_hf_cascade"):
        agreement = generation[name]["agreement_with_hf_generate"]
        assert 0 <= agreement["identical"] <= 1
        # float32 and a tiny model: only a near-tie between two logits could tell the paths apart
        assert agreement["identical"] >= 0.75, (name, agreement)
        assert agreement["mean_matching_prefix"] <= agreement["mean_length"]


def test_grpo_step_parts_add_up_to_the_step(check):
    grpo = check[1]["grpo"]
    seconds = grpo["seconds"]
    parts = [seconds[k] for k in ("generation", "scoring", "forward_backward", "optimizer")]
    assert all(p >= 0 for p in parts) and seconds["generation"] > 0
    assert sum(parts) == pytest.approx(seconds["total"], rel=0.05, abs=0.005)
    assert sum(grpo["share"].values()) == pytest.approx(1.0, abs=0.05)
    assert grpo["steps_measured"] >= 1 and grpo["generation_tokens_per_s"] > 0
