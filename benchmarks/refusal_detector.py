"""Accuracy of the rules judge's refusal detector against human labels.

    python benchmarks/refusal_detector.py [--datasets ../shared/datasets]

XSTest ships five models' completions of its 450 prompts, each labelled by two annotators: full compliance,
full refusal or partial refusal. We score full compliance vs full refusal (partial refusals are ambiguous by
design) and print accuracy, precision and recall of `is_refusal`, per model and overall.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from deliberate.judges.refusal import is_refusal

ROOT = Path(__file__).resolve().parents[1]


def measure(folder: Path) -> dict[str, dict[str, float]]:
    report = {}
    totals = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for path in sorted((folder / "xstest" / "model_completions").glob("*.csv")):
        df = pd.read_csv(path, keep_default_na=False)
        df = df[df.final_label.isin(["1_full_compliance", "2_full_refusal"])]
        counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
        for completion, label in zip(df.completion, df.final_label, strict=True):
            predicted, actual = is_refusal(completion), label == "2_full_refusal"
            counts[("t" if predicted == actual else "f") + ("p" if predicted else "n")] += 1
        report[path.stem.removeprefix("xstest_v2_completions_")] = summarise(counts)
        for k in totals:
            totals[k] += counts[k]
    report["all"] = summarise(totals)
    return report


def summarise(c: dict[str, int]) -> dict[str, float]:
    n = sum(c.values())
    return {"n": n, "accuracy": round((c["tp"] + c["tn"]) / n, 3),
            "precision": round(c["tp"] / max(1, c["tp"] + c["fp"]), 3),
            "recall": round(c["tp"] / max(1, c["tp"] + c["fn"]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    report = measure(parser.parse_args().datasets)
    print(f"{'completions':<18}{'n':>6}{'accuracy':>10}{'precision':>11}{'recall':>8}")
    for name, r in report.items():
        print(f"{name:<18}{r['n']:>6}{r['accuracy']:>10}{r['precision']:>11}{r['recall']:>8}")
    print(json.dumps(report["all"]))


if __name__ == "__main__":
    main()
