"""`deliberate dpo` step time against a bare TRL DPOTrainer on the same model, data and settings.

Both train the same pairs (PKU-SafeRLHF rows from ../shared/datasets, "safer" preference) for the same steps with
identical DPOConfig values; the ratio of seconds per step should be near 1 (deliberate adds only data loading
and saving around TRL's loop, which are timed separately).

    python benchmarks/dpo_step_time.py                      # SmolLM2, LoRA, 8 steps of 4 pairs
    python benchmarks/dpo_step_time.py --full --bf16 --steps 6
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "pku_saferlhf" / "train.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (also on a CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best is reported")
    args = parser.parse_args()

    from datasets import Dataset
    from peft import LoraConfig
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from deliberate.config import load_recipe
    from deliberate.services.models import resolve_model_path
    from deliberate.services.preferences import load_preferences
    from deliberate.services.runs import ModelRun
    from deliberate.stages.dpo import build_trainer

    tmp = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    recipe = load_recipe(None, [f"model.name={args.model}", f"output_dir={tmp}", f"dpo.data.source={DATA}",
                                f"dpo.max_steps={args.steps}", f"dpo.per_device_train_batch_size={args.batch}",
                                f"dpo.max_length={args.max_length}", f"dpo.lora={not args.full}".lower(),
                                f"dpo.bf16={args.bf16}".lower(), "dpo.learning_rate=5e-6", "dpo.save_steps=100000"])
    stage = recipe.dpo.stage_list()[0]
    rows, _ = load_preferences(recipe, stage.data, "paired")
    path = resolve_model_path(args.model)

    def ours() -> float:
        t0 = time.perf_counter()
        trainer, _ = build_trainer(recipe, stage, path, rows, stage.beta, 1.0, ModelRun(tmp / "ours"), show_progress=False)
        setup = time.perf_counter() - t0
        result = trainer.train()
        return setup, result.metrics["train_runtime"] / trainer.state.global_step

    def bare() -> float:
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        ref = AutoModelForCausalLM.from_pretrained(path) if args.full else None
        config = DPOConfig(output_dir=str(tmp / "bare"), learning_rate=5e-6, max_steps=args.steps,
                           per_device_train_batch_size=args.batch, max_length=args.max_length, beta=stage.beta,
                           use_cpu=True, bf16=args.bf16, seed=0, data_seed=0, report_to=[], disable_tqdm=True,
                           save_strategy="no", gradient_checkpointing=False, dataloader_num_workers=0,
                           logging_steps=5, logging_first_step=True)
        peft = None if args.full else LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                 target_modules="all-linear", task_type="CAUSAL_LM")
        data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
        trainer = DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=data, processing_class=tokenizer,
                             peft_config=peft)
        setup = time.perf_counter() - t0
        result = trainer.train()
        return setup, result.metrics["train_runtime"] / trainer.state.global_step

    results: dict[str, list[tuple[float, float]]] = {"deliberate dpo": [], "bare TRL DPOTrainer": []}
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both
        results["deliberate dpo"].append(ours())
        results["bare TRL DPOTrainer"].append(bare())
    table = Table(title=f"DPO on {args.model}: {len(rows)} pairs, {args.steps} steps of {args.batch}, "
                        f"{'full' if args.full else 'LoRA'}{', bf16' if args.bf16 else ''}")
    for col in ("trainer", "setup s", "s/step (best)", "s/step (all runs)"):
        table.add_column(col)
    best = {k: min(s for _, s in v) for k, v in results.items()}
    for name, runs in results.items():
        table.add_row(name, f"{min(s for s, _ in runs):.1f}", f"{best[name]:.2f}",
                      ", ".join(f"{s:.2f}" for _, s in runs))
    Console().print(table)
    print(f"ratio deliberate / bare TRL: {best['deliberate dpo'] / best['bare TRL DPOTrainer']:.3f}")


if __name__ == "__main__":
    main()
