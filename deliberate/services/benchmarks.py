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
from deliberate.services.data import FILE_SUFFIXES, PromptRecord, load_prompts
from deliberate.services.spec import PolicySpec

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
