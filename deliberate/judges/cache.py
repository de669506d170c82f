"""A persistent judge cache: SQLite (WAL), keyed by everything that determines a judgment.

Only successful judgments are stored, so failures are retried on the next run. SQLite commits are atomic, so a
crash mid-run loses at most the uncommitted tail, never corrupts what is stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class JudgeCache:
    COMMIT_EVERY = 64

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()
        self._pending = 0

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM judgments WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO judgments (key, value) VALUES (?, ?)", (key, json.dumps(value)))
        self._pending += 1
        if self._pending >= self.COMMIT_EVERY:
            self.flush()

    def flush(self) -> None:
        self._db.commit()
        self._pending = 0

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        self.flush()
        self._db.close()
