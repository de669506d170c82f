"""A persistent judge cache: SQLite (WAL), keyed by everything that determines a judgment.

Only successful judgments are stored, so failures are retried on the next run. Each judgment is committed the
moment it is stored (a WAL commit costs microseconds; a paid judgment lost to a crash costs money), and SQLite
commits are atomic, so a crash never corrupts what is stored. A cache path that is a folder, sits under a
file, or holds something that is not this cache is a one-line error before any judging starts.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class JudgeCache:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        where = f"judge.cache {self.path}"
        if self.path.is_dir():
            raise DeliberateError(f"{where}: is a folder; give a file path (e.g. {self.path / 'judge.sqlite'})")
        if blocker := next((p for p in self.path.parents if p.exists() and not p.is_dir()), None):
            raise DeliberateError(f"{where}: {blocker} is a file, not a folder")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DeliberateError(f"{where}: its folder cannot be made: {e.strerror}") from None
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute("SELECT key, value FROM judgments LIMIT 1").fetchall()
            self._db.commit()
            # A write, rolled back: a cache that can be read but not written would lose every paid judgment.
            self._db.execute("INSERT OR REPLACE INTO judgments (key, value) VALUES ('deliberate-probe', '{}')")
            self._db.rollback()
        except sqlite3.Error as e:
            raise DeliberateError(f"{where}: not a usable judge cache ({e}); point judge.cache elsewhere or "
                                  "remove the file") from None

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM judgments WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        try:
            with self._db:  # one transaction per judgment: committed when this returns
                self._db.execute("INSERT OR REPLACE INTO judgments (key, value) VALUES (?, ?)",
                                 (key, json.dumps(value)))
        except sqlite3.Error as e:
            raise DeliberateError(f"judge.cache {self.path}: could not store a judgment ({e})") from None

    def flush(self) -> None:
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        self._db.close()
