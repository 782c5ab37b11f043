"""Usage metering in SQLite: per key, model and UTC day, what was asked and what was served.

Writes go through one background thread so the event loop never waits on the disk; `flush()`
blocks until everything recorded so far is on disk (tests, shutdown).
"""

from __future__ import annotations

import csv
import datetime
import io
import queue
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from appliance.server.sqlite_files import database_uri, open_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key_id, model)
)
"""
COLUMNS = ("day", "key_id", "model", "requests", "prompt_tokens", "completion_tokens", "cancelled", "rejected")


@dataclass(frozen=True)
class UsageEvent:
    key_id: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cancelled: bool = False
    rejected: bool = False


class UsageLog:
    def __init__(self, path: Path):
        self.path = path
        open_database(path, "usage", _SCHEMA, "rwc", "usage database")
        self._queue: queue.Queue[Optional[UsageEvent | threading.Event]] = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name="usage", daemon=True)
        self._thread.start()

    def record(self, event: UsageEvent) -> None:
        self._queue.put(event)

    def flush(self, timeout: float = 10.0) -> None:
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(10)

    def _write_loop(self) -> None:
        db = sqlite3.connect(self.path)
        while (item := self._queue.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
                continue
            day = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
            db.execute(
                "INSERT INTO usage VALUES (?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT (day, key_id, model) DO UPDATE SET "
                "requests = requests + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens, "
                "cancelled = cancelled + excluded.cancelled, rejected = rejected + excluded.rejected",
                (day, item.key_id, item.model, item.prompt_tokens, item.completion_tokens,
                 int(item.cancelled), int(item.rejected)))
            db.commit()
        db.close()


def read_usage(path: Path, since: Optional[str] = None) -> list[tuple]:
    """Rows from `since` (a YYYY-MM-DD day) on; opens the file read-only and never creates one."""
    if since is not None:
        check_day(since)
    open_database(path, "usage", _SCHEMA, "ro", "usage database")
    db = sqlite3.connect(database_uri(path, "ro"), uri=True, timeout=10)
    try:
        return db.execute(f"SELECT {', '.join(COLUMNS)} FROM usage WHERE day >= ? ORDER BY day, key_id, model",
                          (since or "",)).fetchall()
    finally:
        db.close()


def check_day(day: str) -> str:
    """A UTC day as the table stores it, YYYY-MM-DD; ValueError names the expected form."""
    try:
        if len(day) == 10 and datetime.date.fromisoformat(day).isoformat() == day:
            return day
    except (TypeError, ValueError):
        pass
    raise ValueError("expected a day as YYYY-MM-DD, e.g. 2026-12-01")


def usage_csv(rows: list[tuple]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return out.getvalue()
