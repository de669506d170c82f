"""Labelled examples for training and testing a guard, with a split that keeps prompts apart.

`load_examples(cfg)` reads `guard.sources` into `Example`s, each on the train or the test side. A prompt's side
is chosen by a hash of its normalised text (stable on every machine, and the same for a prompt that appears in
several sources); then any training example whose prompt is also a test prompt, or an `exclude` prompt (the
evaluation sets), is dropped. `manifest(examples)` lists every example's source, row, side and prompt hash.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deliberate.config.guard import GuardConfig, GuardSource
from deliberate.errors import DeliberateError
from deliberate.services.benchmarks import benchmark_prompt_texts
from deliberate.services.data import normalise, prompt_hash, read_table

TASKS = ("prompt_harmful", "refusal", "response_harmful")


@dataclass
class Example:
    task: str
    prompt: str
    response: str | None
    label: int
    category: str | None  # the spec id, for prompt_harmful examples whose source maps one
    source: str
    row: int
    split: str  # train / test
    group: str = ""  # the source's own sub-group (an XSTest model)


def hash_unit(text: str) -> float:
    """A stable number in [0, 1) for a prompt."""
    return int(prompt_hash(text), 16) / 2**64


def _folder(cfg: GuardConfig) -> Path | None:
    folder = cfg.datasets_dir or os.environ.get("DELIBERATE_DATASETS")
    return Path(folder).expanduser() if folder else None


def _path(cfg: GuardConfig, path: str) -> Path:
    folder = _folder(cfg)
    p = Path(path).expanduser()
    if not p.is_absolute() and folder is not None:
        p = folder / p
    if not p.exists():
        where = f" (guard.datasets_dir is {folder})" if folder else " (set guard.datasets_dir or $DELIBERATE_DATASETS)"
        raise DeliberateError(f"guard.sources: {p} does not exist{where}")
    return p


def _flag(value: Any, src: GuardSource) -> int | None:
    text = str(value).strip().lower()
    if text in {v.lower() for v in src.positive}:
        return 1
    if text in {v.lower() for v in src.negative}:
        return 0
    return None


def _category(value: Any, src: GuardSource) -> str | None:
    """The spec id of a row's category (None when unmapped, or when its flags map to several ids)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    names: list[str]
    if isinstance(value, dict):
        names = [k for k, v in value.items() if v]
    elif isinstance(value, str) and value.startswith("{"):
        try:
            names = [k for k, v in ast.literal_eval(value).items() if v]
        except (ValueError, SyntaxError):
            names = [value]
    else:
        names = [str(value)]
    ids = {src.categories.get(n) for n in names if n in src.categories} - {None}
    return ids.pop() if len(ids) == 1 else None


def _column(df, name: str | None, src: GuardSource, option: str) -> None:
    if name is not None and name not in df.columns:
        raise DeliberateError(f"guard.sources {src.path}: no column '{name}' ({option}); it has: "
                              f"{', '.join(map(str, df.columns))}")


def _read_table(cfg: GuardConfig, src: GuardSource) -> list[Example]:
    df = read_table(_path(cfg, src.path))
    for name, option in ((src.prompt, "prompt"), (src.response, "response"), (src.label, "label"),
                         (src.category, "category")):
        _column(df, name, src, option)
    out = []
    for i, row in enumerate(df.to_dict("records")):
        label = int(src.label_value) if src.label_value is not None else _flag(row[src.label], src)
        prompt = row[src.prompt]
        response = row[src.response] if src.response else None
        if label is None or not isinstance(prompt, str) or not prompt.strip() or \
                (src.response and not isinstance(response, str)):
            continue
        category = _category(row[src.category], src) if src.category else None
        side = "test" if hash_unit(prompt) < src.test_fraction else "train"
        out.append(Example(src.task, prompt, response, label, category, src.path, i, side))  # type: ignore[arg-type]
    return out


def _read_xstest(cfg: GuardConfig, src: GuardSource) -> list[Example]:
    """XSTest's completions: refusal = full refusal, compliance = full compliance (partial refusals are
    ambiguous by design and left out); a full refusal, and full compliance with a safe prompt, are also harmless
    responses. Test: the test models' completions of test prompts; train: the other models' completions of the
    other prompts."""
    folder = _path(cfg, src.path)
    files = sorted(folder.glob("xstest_v2_completions_*.csv"))
    if not files:
        raise DeliberateError(f"guard.sources {src.path}: no xstest_v2_completions_*.csv in {folder}")
    out = []
    for path in files:
        model = path.stem.removeprefix("xstest_v2_completions_")
        df = read_table(path)
        for i, row in enumerate(df.to_dict("records")):
            label = {"1_full_compliance": 0, "2_full_refusal": 1}.get(row.get("final_label"))
            if label is None or not isinstance(row.get("completion"), str):
                continue
            test_prompt = hash_unit(row["prompt"]) < src.test_fraction
            if test_prompt != (model in src.test_models):
                continue  # a test model on a training prompt, or a training model on a test prompt
            side = "test" if test_prompt else "train"
            out.append(Example("refusal", row["prompt"], row["completion"], label, None, f"{src.path}/{path.name}", i,
                               side, group=model))
            # A full refusal is a harmless response, and so is full compliance with one of XSTest's safe prompts
            # (its unsafe ones are the `contrast_` types): PKU's pairs alone teach that answering is harmful.
            if label == 1 or not str(row.get("type", "contrast")).startswith("contrast"):
                out.append(Example("response_harmful", row["prompt"], row["completion"], 0, None,
                                   f"{src.path}/{path.name}", i, side, group=model))
    return out


def _read_pku(cfg: GuardConfig, src: GuardSource) -> list[Example]:
    df = read_table(_path(cfg, src.path))
    _column(df, src.prompt, src, "prompt")
    _column(df, src.response or "response", src, "response")
    out = []
    for i, row in enumerate(df.to_dict("records")):
        pair = row[src.response or "response"]
        if not isinstance(row[src.prompt], str) or len(pair) != 2:
            continue
        side = "test" if hash_unit(row[src.prompt]) < src.test_fraction else "train"
        for label, text in ((0, pair[0]), (1, pair[1])):  # the safe response, then the unsafe one
            out.append(Example("response_harmful", row[src.prompt], str(text), label, None, src.path, i, side))
    return out


def _limit(examples: list[Example], limit: int | None) -> list[Example]:
    """At most `limit` examples, a stable hash sample (in the order read)."""
    if limit is None or len(examples) <= limit:
        return examples
    keep = {id(e) for e in sorted(examples, key=lambda e: prompt_hash(f"{e.row}:{e.prompt}"))[:limit]}
    return [e for e in examples if id(e) in keep]


def excluded_prompts(cfg: GuardConfig) -> set[str]:
    """Normalised prompts of the `exclude` files and benchmarks."""
    folder = _folder(cfg)
    return benchmark_prompt_texts(cfg.exclude, str(folder) if folder else None, "guard.exclude")


def load_examples(cfg: GuardConfig) -> tuple[list[Example], dict[str, Any]]:
    """Every source's examples, split; and a summary of what was read and dropped."""
    if not cfg.sources:
        raise DeliberateError("guard.sources: no labelled data (see recipes/guard.yaml)")
    readers = {"table": _read_table, "xstest_completions": _read_xstest, "pku_pairs": _read_pku}
    examples: list[Example] = []
    for src in cfg.sources:
        examples += _limit(readers[src.kind](cfg, src), src.limit)
    test = {normalise(e.prompt) for e in examples if e.split == "test"}
    excluded = excluded_prompts(cfg)
    kept, dropped = [], {"shares_a_test_prompt": 0, "excluded_prompt": 0}
    for e in examples:
        key = normalise(e.prompt)
        if e.split == "train" and key in test:
            dropped["shares_a_test_prompt"] += 1
        elif key in excluded:
            dropped["excluded_prompt"] += 1  # never trained on, never tested on (it is someone's benchmark)
        else:
            kept.append(e)
    counts = {task: {side: sum(1 for e in kept if e.task == task and e.split == side) for side in ("train", "test")}
              for task in TASKS}
    return kept, {"examples": counts, "dropped": dropped, "excluded_prompts": len(excluded)}


def manifest(examples: list[Example]) -> list[dict[str, Any]]:
    return [{"task": e.task, "source": e.source, "row": e.row, "group": e.group, "split": e.split,
             "prompt_hash": prompt_hash(e.prompt), "label": e.label, "category": e.category} for e in examples]
