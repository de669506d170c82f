"""Benchmarks as data: `<name>.yaml` files (or a prompt file) and their local mirrors. The project's own ship in the
package (`deliberate/resources/benchmarks/`); an `eval/<name>.yaml` in the working directory overrides one."""

from __future__ import annotations

import os
import re
from pathlib import Path

from deliberate.config.data import DataConfig
from deliberate.config.eval import Benchmark
from deliberate.config.yamlio import load_yaml_file, validate
from deliberate.errors import DeliberateError, did_you_mean
from deliberate.resources import resource_path
from deliberate.services.data import FILE_SUFFIXES, PromptRecord, load_prompts, normalise, read_table
from deliberate.services.spec import PolicySpec, load_spec

PACKAGED_BENCHMARKS = resource_path("benchmarks")


def load_benchmark(name: str) -> Benchmark:
    """`eval/<name>.yaml` from the working directory, else the packaged benchmark of that name; a YAML file path;
    or a prompt file (csv/json/jsonl/parquet with the standard columns) used as a benchmark of its own."""
    if Path(name).suffix.lower() in (*FILE_SUFFIXES, ".gz"):
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name.split(".")[0]).strip("_.") or "prompts"
        return Benchmark(name=stem, description=f"prompts from {name}", data=DataConfig(source=name))
    folders = (Path("eval"), PACKAGED_BENCHMARKS)
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) else [folder / f"{name}.yaml" for folder in folders]
    for path in candidates:
        if path.is_file():
            return validate(Benchmark, load_yaml_file(path), str(path))
    known = sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})
    raise DeliberateError(f"eval: unknown benchmark '{name}'; {did_you_mean(name, known)}known: "
                          f"{', '.join(known) or 'none'} (or a .yaml benchmark file, or a prompt file)")


def benchmark_data(bench: Benchmark, datasets_dir: str | None) -> DataConfig:
    """The benchmark's data section, pointed at its local mirror when the datasets folder has it."""
    folder = datasets_dir or os.environ.get("DELIBERATE_DATASETS")
    if bench.mirror is None or not folder:
        return bench.data
    path = Path(folder).expanduser() / bench.mirror.path
    if not path.is_file():
        return bench.data
    columns = bench.mirror.columns or bench.data.columns
    return bench.data.model_copy(update={"source": str(path), "subset": None, "split": None, "revision": None,
                                        "columns": columns})


def benchmark_prompts(bench: Benchmark, datasets_dir: str | None,
                      spec: PolicySpec) -> tuple[DataConfig, list[PromptRecord]]:
    """The benchmark's data section (its mirror when the datasets folder has it) and its prompts. When the
    source cannot be read (offline, a gated set) and a mirror exists, the error says where to put it."""
    data = benchmark_data(bench, datasets_dir)
    try:
        return data, load_prompts(data, spec)
    except DeliberateError as e:
        if bench.mirror is None or data is not bench.data:
            raise
        folder = datasets_dir or os.environ.get("DELIBERATE_DATASETS")
        where = f"{folder} has no {bench.mirror.path}" if folder else \
            "set eval.datasets_dir (or $DELIBERATE_DATASETS) to the folder that holds it"
        raise DeliberateError(f"{e}; benchmark '{bench.name}' can be read from a local copy, "
                              f"<datasets folder>/{bench.mirror.path}: {where}") from None


PROMPT_COLUMNS = ("prompt", "forbidden_prompt", "goal", "instruction", "text")


def benchmark_prompt_texts(refs: list[str], datasets_dir: str | None, option: str) -> set[str]:
    """Normalised prompts of benchmarks (by name) and prompt files (relative to the datasets folder when not
    found as given): what training data must not hold."""
    out: set[str] = set()
    for ref in refs:
        path = Path(ref).expanduser()
        if path.suffix.lower() in FILE_SUFFIXES:
            folder = datasets_dir or os.environ.get("DELIBERATE_DATASETS")
            if not path.exists() and not path.is_absolute() and folder:
                path = Path(folder).expanduser() / path
            if not path.is_file():
                raise DeliberateError(f"{option}: {ref}: no such file")
            df = read_table(path)
            column = next((c for c in PROMPT_COLUMNS if c in df.columns), None)
            if column is None:
                raise DeliberateError(f"{option} {ref}: no prompt column ({', '.join(PROMPT_COLUMNS)})")
            out |= {normalise(p) for p in df[column] if isinstance(p, str)}
        else:
            _, records = benchmark_prompts(load_benchmark(ref), datasets_dir, load_spec("default"))
            out |= {normalise(r.prompt) for r in records}
    return out


def training_prompts(data: DataConfig, spec: PolicySpec, datasets_dir: str | None) -> list[PromptRecord]:
    """The recipe's prompts without those of `data.exclude` (the evaluation benchmarks)."""
    records = load_prompts(data, spec)
    if not data.exclude:
        return records
    held_out = benchmark_prompt_texts(data.exclude, datasets_dir, "data.exclude")
    kept = [r for r in records if normalise(r.prompt) not in held_out]
    if not kept:
        raise DeliberateError(f"data: every one of the {len(records)} prompts is a prompt of data.exclude "
                              f"({', '.join(data.exclude)})")
    return kept
