"""Reward-model training on SmolLM2 (`deliberate rm`): held-out pair accuracy and training time.

    python benchmarks/reward_model.py [--pairs 2000] [--kind reward] [--epochs 1] [--source pku|hh] [--json out.json]
                                      [--out runs/rm-bench --resume]

A harmlessness model on public pairs from ../shared/datasets, none of whose held-out prompts is trained on (a
hash of the prompt picks 20% of them):
- `pku`: PKU-SafeRLHF pairs with exactly one safe response (pku_seferlhf_realign_dpo_5k.json; the safe one
  preferred);
- `hh`: Anthropic HH-RLHF harmless-base test transcripts (chosen vs rejected).
`--kind cost` trains the same pairs as a cost model (the less safe response must score higher). Prints the held-out
accuracy with its Wilson interval, the "longer response wins" baseline, the score spread, steps and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"pku": ("pku_saferlhf/pku_seferlhf_realign_dpo_5k.json", "pair_list"),
           "hh": ("hh_rlhf/harmless-base/test.jsonl.gz", "hh")}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--kind", choices=["reward", "cost"], default="reward")
    parser.add_argument("--source", choices=list(SOURCES), default="pku")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--datasets", default=os.environ.get("DELIBERATE_DATASETS", str(ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--out", type=Path, help="the run folder (a fresh temporary one when unset)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    args = parser.parse_args()

    from deliberate.config import load_recipe
    from deliberate.stages.rm import run_rm

    path, fmt = SOURCES[args.source]
    out = args.out or Path(tempfile.mkdtemp(prefix="rm-bench-"))
    spec = {"name": "bench", "kind": args.kind,
            "data": {"source": str(Path(args.datasets) / path), "format": fmt, "split": None,
                     "limit": args.pairs}}
    recipe = load_recipe(None, [
        "model.name=smollm2", f"output_dir={out}", f"rm.lora={str(args.lora).lower()}", f"rm.learning_rate={args.lr}",
        f"rm.num_train_epochs={args.epochs}", "rm.per_device_train_batch_size=8", "rm.max_length=384",
        "rm.eval_fraction=0.2", "rm.bf16=true", f"rm.models=[{json.dumps(spec)}]"])
    start = time.perf_counter()
    [summary] = run_rm(recipe, resume=args.resume)
    total = time.perf_counter() - start
    held = summary["held_out"]
    acc, base = held["accuracy"], held["baseline_longer_wins"]
    print(f"{args.source} {args.kind} model on SmolLM2-135M ({'LoRA' if args.lora else 'full'}, {args.epochs:g} epoch, "
          f"lr {args.lr:g}): {summary['examples']} training pairs, {held['pairs']} held out")
    print(f"  held-out accuracy   {acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]")
    print(f"  longer-wins baseline {base['value']:.3f} [{base['ci95'][0]:.3f}, {base['ci95'][1]:.3f}]")
    print(f"  scores              mean {held['scores']['mean']:.3f}, std {held['scores']['std']:.3f}")
    print(f"  training            {summary['steps']} steps in {summary['seconds']:.0f}s "
          f"({2 * summary['examples'] * args.epochs / summary['seconds']:.1f} sequences/s); total with scoring "
          f"{total:.0f}s; loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                         "seconds_total": total}, indent=1))


if __name__ == "__main__":
    main()
