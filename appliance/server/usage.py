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
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as db:
            db.execute(_SCHEMA)
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
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT {', '.join(COLUMNS)} FROM usage WHERE day >= ? ORDER BY day, key_id, model",
                          (since or "",)).fetchall()


def usage_csv(rows: list[tuple]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return out.getvalue()
