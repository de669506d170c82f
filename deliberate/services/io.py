"""Files that survive crashes: atomic writes, JSONL reading, and resumable JSONL outputs.

Every stage writes its outputs through these helpers, so an interrupted run never leaves a half-written file
where a complete one is expected, and a long stage can continue where it stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from deliberate.config.yamlio import read_text
from deliberate.errors import DeliberateError


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` so that readers see the old file or the whole new one, never a partial one."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see atomic_write_text)."""
    path = Path(path)
    if path.is_dir():
        raise DeliberateError(f"{path}: is a folder where an output file goes; move it away and run again")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise DeliberateError(f"{path}: cannot be written ({e.strerror or type(e).__name__}"
                              f"{': ' + str(e.filename) if e.filename else ''})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder `new` in place of `target`: readers see the old complete folder or the new one
    (the old one is moved aside first and removed last)."""
    import shutil

    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)


def check_writable(folder: str | Path, what: str = "output_dir") -> Path:
    """Make `folder` (and its parents) and prove a file can be written in it, before any expensive work: an
    unwritable output found after an hour of generation loses the hour."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".deliberate-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DeliberateError(f"{what} {folder}: cannot be written ({e.strerror or type(e).__name__}); choose "
                              "another with --output or --set output_dir=...") from None
    return folder


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON lines, atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_yaml(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a malformed line is an error naming the file and line."""
    rows = []
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DeliberateError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(rows[-1], dict):
            raise DeliberateError(f"{path}:{lineno}: a JSON line must be an object, not {type(rows[-1]).__name__}")
    return rows


def require_keys(rows: list[dict[str, Any]], keys: Iterable[str], path: str | Path, hint: str = "") -> None:
    """Every row has every key, or a one-line error naming the first row that lacks one."""
    keys = list(keys)
    for n, row in enumerate(rows, 1):
        if lacking := [k for k in keys if k not in row]:
            raise DeliberateError(f"{path}: row {n} has no {', '.join(lacking)}{hint}")


class ResumableJsonl:
    """A JSONL output built up row by row, that an interrupted run continues without duplicates or gaps.

    Rows are appended (and fsynced) to `<path>.partial`, each with a unique key; on restart the rows already
    there are kept and their keys reported as done, so the caller only produces the missing ones. A line cut
    short by a crash is dropped. `finish()` writes the complete file atomically, in the caller's order, and
    removes the partial file. Rows of a finished file count as done too, so a finished output is reused.
    """

    def __init__(self, path: str | Path, key: str = "key"):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.key = key
        for target in (self.path, self.partial):  # before any work is done into them
            if target.exists() and not target.is_file():
                raise DeliberateError(f"{target}: is a folder where an output file goes; move it away and run again")
        check_writable(self.path.parent, "output folder")
        self.rows: dict[str, dict[str, Any]] = {}
        for source in (self.path, self.partial):  # a finished file, then rows added since
            if source.exists():
                for row in self._read_tolerant(source):
                    self.rows[row[key]] = row

    def _read_tolerant(self, path: Path) -> Iterator[dict[str, Any]]:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a crashed write
                if isinstance(row, dict) and self.key in row:
                    yield row

    @property
    def done(self) -> set[str]:
        return set(self.rows)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = [r for r in rows if r[self.key] not in self.rows]
        if not rows:
            return
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        with open(self.partial, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for r in rows:
            self.rows[r[self.key]] = r

    def _repair_tail(self) -> None:
        """Cut a trailing partial line left by a crash, so the next append starts on a fresh line."""
        if not self.partial.exists() or self.partial.stat().st_size == 0:
            return
        data = self.partial.read_bytes()
        if not data.endswith(b"\n"):
            self.partial.write_bytes(data[: data.rfind(b"\n") + 1])

    def finish(self, order: Iterable[str] | None = None,
               current: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Write the complete file in `order`; `current` (by key) holds fields that come from today's input
        rather than from when a row was made (a corrected label), laid over the stored rows."""
        keys = list(order) if order is not None else list(self.rows)
        missing = [k for k in keys if k not in self.rows]
        if missing:
            raise RuntimeError(f"{self.path}: {len(missing)} rows missing at finish (e.g. {missing[0]!r})")
        rows = [{**self.rows[k], **(current or {}).get(k, {})} for k in keys]
        write_jsonl(self.path, rows)
        self.partial.unlink(missing_ok=True)
        return rows
