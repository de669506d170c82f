"""Benchmarks as data: `eval/<name>.yaml` files (or a prompt file) and their local mirrors."""

from __future__ import annotations

import os
from pathlib import Path

from deliberate.config.data import DataConfig
from deliberate.config.eval import Benchmark
from deliberate.config.yamlio import load_yaml_file, validate
from deliberate.errors import DeliberateError
from deliberate.services.data import FILE_SUFFIXES

EVAL_DIR = Path(__file__).resolve().parents[2] / "eval"



def load_benchmark(name: str) -> Benchmark:
    """`eval/<name>.yaml` (from the working directory, then the project's own eval/), a YAML file path, or a
    prompt file (csv/json/jsonl/parquet with the standard columns) used as a benchmark of its own."""
    if Path(name).suffix.lower() in (*FILE_SUFFIXES, ".gz"):
        stem = Path(name).name.split(".")[0]
        return Benchmark(name=stem, description=f"prompts from {name}", data=DataConfig(source=name))
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) else [Path("eval") / f"{name}.yaml",
                                                                       EVAL_DIR / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return validate(Benchmark, load_yaml_file(path), str(path))
    known = sorted(p.stem for p in EVAL_DIR.glob("*.yaml")) if EVAL_DIR.is_dir() else []
    raise DeliberateError(f"eval: unknown benchmark '{name}' (known: {', '.join(known) or 'none'})")


def benchmark_data(bench: Benchmark, datasets_dir: str | None) -> DataConfig:
    """The benchmark's data section, pointed at its local mirror when the datasets folder has it."""
    folder = datasets_dir or os.environ.get("DELIBERATE_DATASETS")
    if bench.mirror is None or not folder:
        return bench.data
    path = Path(folder).expanduser() / bench.mirror.path
    if not path.is_file():
        return bench.data
    columns = bench.mirror.columns or bench.data.columns
    return bench.data.model_copy(update={"source": str(path), "subset": None, "columns": columns})
