"""Prompt data shared by every stage: the built-in demo set, local files, files at a URL, or Hugging Face datasets.

`load_prompts(cfg, spec)` returns `PromptRecord`s with a prompt, a spec category (when known) and the expected
behaviour (comply / refuse / safe_complete, when known). Columns are mapped by the recipe's `data.columns`; a
missing column or file is a one-line error that lists what the file has.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deliberate.errors import DeliberateError
from deliberate.services.models import cache_dir

if TYPE_CHECKING:
    import pandas as pd

    from deliberate.config import DataConfig
    from deliberate.services.spec import PolicySpec

BUILTIN_DEMO = "builtin:demo"
FILE_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")

# Labels that public safety datasets use, and the behaviour each one expects.
DEFAULT_LABEL_MAP = {
    "safe": "comply", "benign": "comply", "harmless": "comply", "comply": "comply", "compliance": "comply",
    "unsafe": "refuse", "harmful": "refuse", "refuse": "refuse", "refusal": "refuse",
    "safe_complete": "safe_complete", "safe-complete": "safe_complete",
}


@dataclass
class PromptRecord:
    id: str
    prompt: str
    category: str | None = None
    expected: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "category": self.category, "expected": self.expected,
                **({"meta": self.meta} if self.meta else {})}


def _file_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suffix in FILE_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    raise DeliberateError(f"{path}: unsupported file type (use one of {', '.join(FILE_SUFFIXES)}, optionally .gz)")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a local CSV / JSON (a list of objects) / JSONL / parquet file into a DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DeliberateError(f"{path}: no such file")
    fmt = _file_format(path)
    try:
        if fmt == "csv":
            return pd.read_csv(path, keep_default_na=False)
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "jsonl":
            return pd.DataFrame(_json_objects(path))
        return pd.read_json(path, dtype=False)
    except (ValueError, TypeError, EOFError, pd.errors.ParserError, OSError) as e:  # EOFError: a truncated .gz
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if fmt == "json" and isinstance(e, TypeError):
            first = "expected a list of JSON objects (one per row)"
        raise DeliberateError(f"{path}: could not be read as {fmt}: {first}") from None


def _json_objects(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file (optionally .gz), each of which must be a JSON object."""
    import gzip
    import json

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"line {n}: a row must be a JSON object, not {type(row).__name__}")
            rows.append(row)
    return rows


def _read_hub(cfg: DataConfig) -> pd.DataFrame:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.source, cfg.subset, split=cfg.split or "train", revision=cfg.revision)
    except Exception as e:  # datasets raises many types for a missing dataset, split or network
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get(
            "HF_HUB_OFFLINE") else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeliberateError(
            f"data '{cfg.source}': not a local file, and the Hub dataset could not be loaded{offline}: {first}"
        ) from None
    return ds.to_pandas()


def download(url: str) -> Path:
    """A file at an http(s) URL, downloaded once into the cache (atomically) and read from there afterwards."""
    import hashlib
    import shutil
    import tempfile
    import urllib.error
    import urllib.request


    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "data"
    target = cache_dir() / "data" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.is_file():
        return target
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        raise DeliberateError(f"data '{url}': not downloaded yet, and offline (HF_HUB_OFFLINE is set)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=target.parent, prefix=".download-", delete=False)
    try:
        with tmp, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, tmp)
        os.replace(tmp.name, target)
    except (urllib.error.URLError, OSError, ValueError) as e:
        Path(tmp.name).unlink(missing_ok=True)
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise DeliberateError(f"data '{url}': could not be downloaded: {reason}") from None
    return target


def load_table(cfg: DataConfig) -> tuple[pd.DataFrame, str]:
    """The raw table that `cfg.source` names, and a label for error messages."""
    import pandas as pd

    if cfg.source.count("/") != 1 or Path(cfg.source).expanduser().exists():  # not a Hub id
        for name in ("split", "subset", "revision"):
            if getattr(cfg, name) is not None:
                hint = f" (to pick rows by a column, use where, e.g. --set data.where.{name}={getattr(cfg, name)})"
                raise DeliberateError(f"data '{cfg.source}': {name} applies to Hub datasets only{hint}")
    if cfg.source == BUILTIN_DEMO:
        with resources.as_file(resources.files("deliberate.resources") / "demo_prompts.jsonl") as path:
            return pd.read_json(path, lines=True, dtype=False), BUILTIN_DEMO
    if cfg.source.startswith(("http://", "https://")):
        _file_format(Path(cfg.source.split("?", 1)[0]))  # an unsupported type fails before downloading
        return read_table(download(cfg.source)), cfg.source
    path = Path(cfg.source).expanduser()
    if path.exists() or path.suffix.lower() in (*FILE_SUFFIXES, ".gz") or cfg.source.startswith((".", "/", "~")):
        return read_table(path), str(path)
    if cfg.source.count("/") != 1:
        raise DeliberateError(f"data '{cfg.source}': no such file, and not a Hub dataset id (owner/name)")
    return _read_hub(cfg), cfg.source


def _require(df: pd.DataFrame, column: str | None, option: str, label: str) -> None:
    if column is not None and column not in df.columns:
        raise DeliberateError(
            f"{label}: no column '{column}' (set by {option}); its columns are: {', '.join(map(str, df.columns))}"
        )


def apply_where(df: pd.DataFrame, where: dict[str, Any], label: str, option: str = "data.where") -> pd.DataFrame:
    """The rows whose columns hold the wanted values (`where`)."""
    for column, wanted in where.items():
        _require(df, column, f"{option}.{column}", label)
        values = wanted if isinstance(wanted, list) else [wanted]
        df = df[df[column].astype(str).isin([str(v) for v in values])]
    return df


def normalise(text: str) -> str:
    """A prompt compared with case and spacing ignored (for deduplication and benchmark exclusion)."""
    return " ".join(text.lower().split())


def prompt_hash(text: str) -> str:
    return hashlib.blake2b(normalise(text).encode(), digest_size=8).hexdigest()


def load_prompts(cfg: DataConfig, spec: PolicySpec | None = None) -> list[PromptRecord]:
    """Load prompts as `cfg` describes (every source of a `data.mix`, in order, a prompt two sources share kept
    once); categories are checked against `spec` when one is given."""
    if not getattr(cfg, "mix", None):
        return _load_source(cfg, spec)
    records, seen = [], set()
    for source in cfg.mix:
        for r in _load_source(source, spec):
            key = normalise(r.prompt)
            if key not in seen:
                seen.add(key)
                records.append(PromptRecord(id=f"{source.name}:{r.id}", prompt=r.prompt, category=r.category,
                                            expected=r.expected, meta={**r.meta, "source": source.name}))
    return records


def _load_source(cfg, spec: PolicySpec | None) -> list[PromptRecord]:
    df, label = load_table(cfg)
    columns = cfg.columns
    # Standard column names are picked up without configuration.
    cat_col = columns.category or ("category" if "category" in df.columns else None)
    exp_col = columns.expected or next((c for c in ("expected", "label") if c in df.columns), None)
    id_col = columns.id or ("id" if "id" in df.columns else None)
    for column, option in [(columns.prompt, "data.columns.prompt"), (columns.category, "data.columns.category"),
                           (columns.expected, "data.columns.expected"), (columns.id, "data.columns.id")]:
        _require(df, column, option, label)
    df = apply_where(df, cfg.where, label)
    if cfg.sample is not None:
        column = df[columns.prompt].astype(str)
        df = df.loc[column.map(prompt_hash).sort_values(kind="stable").index[: cfg.sample]].sort_index()
    if cfg.limit is not None:
        df = df.head(cfg.limit)
    label_map = {**DEFAULT_LABEL_MAP, **{str(k).lower(): v for k, v in cfg.label_map.items()}}
    used = {c for c in (columns.prompt, cat_col, exp_col, id_col) if c}
    records = []
    # Without an id column a row is its position; a sampled row keeps its position in the file, so that its id
    # does not depend on which other rows were drawn.
    positions = [str(p) for p in df.index] if cfg.sample is not None else None
    for i, row in enumerate(df.to_dict("records")):
        prompt = row[columns.prompt]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DeliberateError(f"{label}: row {i}: column '{columns.prompt}' is empty or not text")
        category = cfg.category or (_text(row.get(cat_col)) if cat_col else None)
        category = cfg.category_map.get(category, category) if category else None
        if category and spec is not None:
            category = spec.category(category).id if spec.find(category) else category
        expected = cfg.expected
        if expected is None and exp_col:
            raw = _text(row.get(exp_col))
            if raw is not None:
                expected = label_map.get(raw.lower())
                if expected is None:
                    raise DeliberateError(
                        f"{label}: row {i}: label '{raw}' in column '{exp_col}' has no expected behaviour; "
                        f"map it with data.label_map (e.g. --set data.label_map.{raw}=refuse)"
                    )
        rid = _text(row.get(id_col)) if id_col else None
        meta = {str(k): _plain(v) for k, v in row.items() if k not in used and _text(v) is not None}
        records.append(PromptRecord(id=rid or (positions[i] if positions else str(i)), prompt=prompt, category=category, expected=expected, meta=meta))
    if not records:
        raise DeliberateError(f"{label}: no prompts left after data.where / data.limit / data.sample")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise DeliberateError(f"{label}: ids in column '{id_col}' are not unique")
    return records


def _plain(value: Any) -> Any:
    """A value that JSON can hold (outputs are JSON lines): numpy scalars and arrays as numbers and lists,
    anything else JSON cannot hold (timestamps, bytes) as its text."""
    import json

    if hasattr(value, "tolist"):  # numpy scalars and arrays
        value = value.tolist()
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    text = str(value).strip()
    return text or None
