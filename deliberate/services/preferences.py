"""Preference data for DPO, KTO and MODPO.

`load_preferences` reads a stage's preference data (`deliberate pairs`' output, or a file, URL or Hub dataset in
the TRL, PKU-SafeRLHF, HH-RLHF or two-item-list formats) as TRL conversational rows, paired or unpaired.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Literal

from deliberate.config import DataConfig, PreferenceData, Recipe
from deliberate.errors import DeliberateError
from deliberate.services.data import apply_where, load_table
from deliberate.services.io import read_jsonl
from deliberate.services.runs import Layout

Messages = list[dict[str, str]]

FORMAT_COLUMNS = {
    "trl": ("prompt", "chosen", "rejected"),
    "trl_unpaired": ("prompt", "completion", "label"),
    "pku": ("prompt", "response_0", "response_1"),
    "hh": ("chosen", "rejected"),
    "pair_list": ("prompt", "response"),
}


def detect_format(columns: list[str]) -> str:
    have = set(columns)
    for name in ("pku", "trl_unpaired", "trl", "pair_list", "hh"):
        if set(FORMAT_COLUMNS[name]) <= have:
            return name
    raise DeliberateError("preference data: columns " + ", ".join(columns) + " match no known format "
                          "(prompt/chosen/rejected, prompt/completion/label, PKU-SafeRLHF response_0/response_1, "
                          "HH-RLHF chosen/rejected transcripts, prompt/response pairs); set dpo.data.format")


def _turns(value: Any, role: str) -> Messages:
    """Text, or a non-empty list of messages with text content, as messages; anything else is the user's error
    (a number or null would otherwise be trained on as the text "5" or "None")."""
    if isinstance(value, str) and value.strip():
        return [{"role": role, "content": value}]
    if (isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                  and isinstance(m.get("content"), str) for m in value)):
        return [dict(m) for m in value]
    raise DeliberateError(f"expected text or a list of messages with text content for the {role} turn, got "
                          f"{str(value)[:60]!r}")


def _user(prompt: Any) -> Messages:
    return _turns(prompt, "user")


def _assistant(text: Any) -> Messages:
    return _turns(text, "assistant")


_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_hh(transcript: str) -> Messages:
    """An HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as chat messages."""
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript.lstrip("\n")
    parts = _TURN.split(text)
    messages = []
    for role, text in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": text.strip()})
    return messages


def _hh_pair(chosen: str, rejected: str) -> dict[str, Any] | None:
    c, r = parse_hh(chosen), parse_hh(rejected)
    if not c or not r or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant" or c[:-1] != r[:-1]:
        return None
    if not c[-1]["content"] or not r[-1]["content"] or c[-1]["content"] == r[-1]["content"]:
        return None
    return {"prompt": c[:-1], "chosen": [c[-1]], "rejected": [r[-1]]}


def _label(value: Any, row: int) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "desirable", "safe", "yes"}:
        return True
    if text in {"false", "0", "undesirable", "unsafe", "no"}:
        return False
    raise DeliberateError(f"preference data: row {row}: label '{value}' is not true/false")


def _where(rows: list[dict[str, Any]], where: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """The rows whose columns hold the wanted values (`data.where`, read as a file's rows are)."""
    import pandas as pd

    if not where:
        return rows
    kept = [rows[i] for i in apply_where(pd.DataFrame(rows), where, label, "dpo.data.where").index]
    if not kept:
        raise DeliberateError(f"{label}: no examples left after dpo.data.where")
    return kept


def load_preferences(recipe: Recipe, data: PreferenceData,
                     kind: Literal["paired", "unpaired"]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The preference data as TRL conversational rows, paired (prompt/chosen/rejected) or unpaired
    (prompt/completion/label), and a summary of what was read and skipped."""
    if data.source == "stage:pairs":
        name = "pairs.jsonl" if kind == "paired" else "kto.jsonl"
        path = Layout(recipe).pairs / name
        if not path.is_file():
            raise DeliberateError(f"dpo: {path} does not exist; run `deliberate pairs` first")
        rows = read_jsonl(path)
        if not rows:
            raise DeliberateError(f"dpo: {path} has no examples; sample more (pairs.samples) or lower "
                                  "pairs.min_margin")
        rows = _where(rows, data.where, str(path))
        rows = rows[: data.limit] if data.limit else rows
        fields = ("chosen", "rejected") if kind == "paired" else ("completion",)
        for n, row in enumerate(rows, 1):  # written by `deliberate pairs`, but possibly edited since
            try:
                _user(row.get("prompt"))
                for name in fields:
                    _assistant(row.get(name))
            except DeliberateError as e:
                raise DeliberateError(f"{path}: row {n}: {e}") from None
        return rows, {"source": str(path), "format": "deliberate", "rows": len(rows), "skipped": 0}
    df, label = load_table(DataConfig(source=data.source, subset=data.subset, split=data.split,
                                      revision=data.revision))
    df = apply_where(df, data.where, label, "dpo.data.where")
    fmt = detect_format([str(c) for c in df.columns]) if data.format == "auto" else data.format
    missing = [c for c in FORMAT_COLUMNS[fmt] if c not in df.columns]
    if missing:
        raise DeliberateError(f"{label}: format '{fmt}' needs column(s) {', '.join(missing)}; its columns are: "
                              f"{', '.join(map(str, df.columns))}")
    try:
        return _convert(df, label, fmt, data, kind)
    except DeliberateError as e:
        raise DeliberateError(f"{label}: {e}") from None


def _convert(df, label: str, fmt: str, data: PreferenceData,
             kind: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    paired, unpaired, skipped = [], [], 0
    for i, row in enumerate(df.to_dict("records")):
        if fmt == "trl":  # other columns (e.g. judge scores for a MODPO margin) are kept
            paired.append({**{k: v for k, v in row.items() if k not in FORMAT_COLUMNS[fmt]},
                           "prompt": _user(row["prompt"]), "chosen": _assistant(row["chosen"]),
                           "rejected": _assistant(row["rejected"])})
        elif fmt == "pair_list":
            resp = list(row["response"])
            if len(resp) != 2:
                raise DeliberateError(f"{label}: row {i}: 'response' must be a [chosen, rejected] list")
            paired.append({"prompt": _user(row["prompt"]), "chosen": _assistant(resp[0]),
                           "rejected": _assistant(resp[1])})
        elif fmt == "hh":
            pair = _hh_pair(str(row["chosen"]), str(row["rejected"]))
            if pair is None:
                skipped += 1
            else:
                paired.append(pair)
        elif fmt == "trl_unpaired":
            unpaired.append({"prompt": _user(row["prompt"]), "completion": _assistant(row["completion"]),
                             "label": _label(row["label"], i)})
        else:  # pku
            prompt = _user(row["prompt"])
            responses = [row["response_0"], row["response_1"]]
            # KTO on harmlessness: the absolute safe / unsafe labels (SACPO); on helpfulness, the split pair.
            if kind == "unpaired" and data.preference == "safer" and "is_response_0_safe" in row:
                for n in (0, 1):
                    unpaired.append({"prompt": prompt, "completion": _assistant(responses[n]),
                                     "label": _label(row[f"is_response_{n}_safe"], i)})
                continue
            column = f"{data.preference}_response_id"
            if column not in row:
                raise DeliberateError(f"{label}: PKU-SafeRLHF format needs column '{column}' "
                                      f"(dpo.data.preference={data.preference})")
            best = row[column]
            if best not in (0, 1) or isinstance(best, bool):
                raise DeliberateError(f"row {i}: '{column}' must be 0 or 1, got {best!r}")
            best = int(best)
            if responses[0] == responses[1]:
                skipped += 1
                continue
            pair = {"prompt": prompt, "chosen": _assistant(responses[best]),
                    "rejected": _assistant(responses[1 - best])}
            if "is_response_0_safe" in row and "is_response_1_safe" in row:  # for a cost model's sign loss
                pair["chosen_safe"] = _label(row[f"is_response_{best}_safe"], i)
                pair["rejected_safe"] = _label(row[f"is_response_{1 - best}_safe"], i)
            paired.append(pair)
    if kind == "unpaired":
        rows = unpaired or [x for p in paired for x in unpair(p)]
    else:
        rows = paired or pair_up(unpaired)
    rows = rows[: data.limit] if data.limit else rows
    if not rows:
        raise DeliberateError(f"{label}: no {kind} preference examples could be read (skipped {skipped})")
    return rows, {"source": label, "format": fmt, "rows": len(rows), "skipped": skipped}


def unpair(pair: dict[str, Any]) -> list[dict[str, Any]]:
    """A pair as two KTO examples: the chosen completion desirable, the rejected one undesirable."""
    return [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
            {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]


def pair_up(unpaired: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs from labelled completions: per prompt, each desirable one with an undesirable one, in order."""
    groups: dict[str, dict[bool, list[Messages]]] = defaultdict(lambda: {True: [], False: []})
    prompts: dict[str, Messages] = {}
    for row in unpaired:
        key = repr(row["prompt"])
        prompts[key] = row["prompt"]
        groups[key][bool(row["label"])].append(row["completion"])
    return [{"prompt": prompts[k], "chosen": good, "rejected": bad}
            for k, g in groups.items() for good, bad in zip(g[True], g[False], strict=False)]
