"""Progress bars for long work: counts, rate, and (for generation) tokens per second.

Bars live on stderr while the work runs and are cleared when it ends (`transient`): what was done is said by the
stage's own summary on stdout, and a command that fails leaves its one `error:` line alone on stderr. Where
stderr is not a terminal (a log file, CI) no bar is drawn at all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None, unit: str):
        self.progress, self.task, self.unit = progress, task, unit
        self.extra = 0

    def advance(self, n: int = 1, tokens: int = 0) -> None:
        self.extra += tokens
        if self.progress is None:
            return
        elapsed = self.progress.tasks[self.task].elapsed or 0.0
        rate = f"{self.extra / elapsed:,.0f} {self.unit}/s" if self.extra and elapsed else ""
        self.progress.update(self.task, advance=n, rate=rate)


@contextmanager
def progress_bar(description: str, total: int, unit: str = "it", enabled: bool = True) -> Iterator[_Bar]:
    """A rich progress bar on stderr: done/total, percent, elapsed, remaining, and a custom rate."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:  # a log file or CI: nothing drawn, not even a blank line
        yield _Bar(None, None, unit)
        return
    progress = Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[rate]}", markup=False),
        console=console, transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total, rate="")
        yield _Bar(progress, task, unit)


class TrainingBar:
    """Optimizer steps of a training run on stderr: done/total, elapsed, remaining, steps/s and the last loss."""

    def __init__(self, description: str, total: int, start: int = 0):
        console = Console(stderr=True)
        self.shown = console.is_terminal  # a log file or CI: nothing drawn
        self.progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[loss]}"), console=console, transient=True, disable=not self.shown)
        self.progress.start()
        self.task = self.progress.add_task(description, total=total, completed=start, rate="", loss="")
        self.start = start

    def update(self, step: int, loss: float | None = None) -> None:
        task = self.progress.tasks[self.task]
        fields: dict = {}
        if task.elapsed and step > self.start:
            fields["rate"] = f"{(step - self.start) / task.elapsed:.2f} steps/s"
        if loss is not None:
            fields["loss"] = f"loss {loss:.4g}"
        self.progress.update(self.task, completed=step, **fields)

    def close(self) -> None:
        self.progress.stop()
