"""JSON log lines on stdout, one object per line, for journald and log shippers.

Records may carry structured fields in `extra={"fields": {...}}` (request ids, statuses, counts);
messages and fields are written by our code and never hold prompt text or detected values.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            # The exception's class and where it was raised, not its text (it may quote input).
            line["error"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
        return json.dumps(line, ensure_ascii=False)


def configure_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
