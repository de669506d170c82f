"""What every stage does when some of its judgments or generations fail: one rule, written once.

A stage collects the error of each failed item and hands its outputs to `publish`. When the failed fraction is
within `judge.max_failures` (0 by default: any failure counts), the outputs replace the earlier ones and the
failures, if any, are reported as a warning. Beyond it, the outputs go to `<folder>/incomplete/` beside the
earlier complete ones, which stay byte-identical, and the stage stops with `StageFailed` (exit code 3) naming
how many failed and the top reasons. What succeeded is never lost: judgments are cached as they arrive and
generations saved as they arrive, so the rerun pays only for what failed.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError, StageFailed
from deliberate.services.io import atomic_write_text, write_json, write_jsonl

INCOMPLETE = "incomplete"


@dataclass
class Tally:
    """Items attempted and the errors of those that failed, gathered across a stage's batches."""

    total: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, total: int, errors: Sequence[str]) -> None:
        self.total += total
        self.errors += list(errors)


def top_reasons(errors: Sequence[str], n: int = 3) -> str:
    """The most common errors with their counts: `30× HTTP 500 after 4 attempts; 2× timeout`."""
    counts = Counter(" ".join(str(e).split())[:160] for e in errors)
    return "; ".join(f"{c}× {reason}" for reason, c in counts.most_common(n))


def failure_line(stage: str, what: str, failed: int, total: int, errors: Sequence[str]) -> str:
    return f"{stage}: {failed} of {total} {what} failed ({top_reasons(errors)})"


def too_many(failed: int, total: int, max_failures: float) -> bool:
    return failed > 0 and failed > max_failures * total


def write_outputs(folder: Path, files: dict[str, Any]) -> None:
    """Write each file of `files` into `folder`: a list as JSON lines, a dict as JSON, a str as text."""
    for name, content in files.items():
        path = folder / name
        if isinstance(content, str):
            atomic_write_text(path, content)
        elif isinstance(content, dict):
            write_json(path, content)
        else:
            write_jsonl(path, content)


def publish(stage: str, folder: Path, files: dict[str, Any], *, summary: dict[str, Any], total: int,
            errors: Sequence[str], max_failures: float, what: str = "judgments") -> None:
    """Write a stage's outputs under the failure rule (see the module docstring). `summary` (one of `files`)
    gets `warning`: the failure line when some items failed within the allowance, else None. Raises StageFailed
    beyond the allowance."""
    beside = folder / INCOMPLETE
    for target in (folder, beside):
        blocked = [target / name for name in files if (target / name).is_dir()]
        if target.exists() and not target.is_dir() or blocked:
            raise DeliberateError(f"{blocked[0] if blocked else target}: is in the way of {stage}'s outputs (a "
                                  f"{'folder' if blocked else 'file'}); move it away and run again (judgments are "
                                  "cached: the rerun pays nothing again)")
    summary["warning"] = failure_line(stage, what, len(errors), total, errors) if errors else None
    if too_many(len(errors), total, max_failures):
        write_outputs(beside, files)
        raise StageFailed(
            f"{failure_line(stage, what, len(errors), total, errors)}; more than judge.max_failures="
            f"{max_failures:g} allows. What succeeded is kept (cached or saved) and these outputs are in {beside}; "
            f"the earlier outputs in {folder} are unchanged. Run again to retry the failed ones.")
    write_outputs(folder, files)
    if beside.is_dir():
        shutil.rmtree(beside, ignore_errors=True)
