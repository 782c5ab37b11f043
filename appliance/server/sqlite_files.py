"""Opening the appliance's SQLite files (keys, usage) so that a wrong path fails with one clear
line naming the file, and so that reading never creates a file.

`open_database(path, table, schema, mode, what)` checks the file holds `table`: mode "ro" reads,
"rw" writes an existing file, "rwc" also creates a missing file (or fills an empty database)
with `schema`. Anything else is a ConfigError: "keys database /etc/passwd: not a keys database
(not an SQLite file)".
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.errors import ConfigError

MODES = ("ro", "rw", "rwc")


def database_uri(path: Path, mode: str) -> str:
    """An SQLite URI for `path` in `mode`: "ro" and "rw" never create the file."""
    if mode not in MODES:
        raise ValueError(f"mode: one of {', '.join(MODES)}")
    return f"{Path(path).absolute().as_uri()}?mode={mode}"


def open_database(path: Path, table: str, schema: str, mode: str, what: str, timeout: float = 10) -> None:
    path = Path(path)
    prefix = f"{what} {path}"
    if path.is_dir():
        raise ConfigError(f"{prefix}: is a folder, not a database file")
    if not path.exists():
        if mode != "rwc":
            raise ConfigError(f"{prefix}: the file does not exist")
        if not path.parent.is_dir():
            raise ConfigError(f"{prefix}: the folder {path.parent} does not exist")
    try:
        db = sqlite3.connect(database_uri(path, mode), uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        raise ConfigError(f"{prefix}: cannot open it ({exc})") from None
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if table not in tables:
            if tables or mode != "rwc":
                raise ConfigError(f"{prefix}: not a {what} (no {table} table)")
            with db:
                db.execute(schema)
    except sqlite3.DatabaseError as exc:
        # "file is not a database" for a text file, "disk I/O error" for a device, ...
        reason = "not an SQLite file" if "not a database" in str(exc) else str(exc)
        raise ConfigError(f"{prefix}: not a {what} ({reason})") from None
    finally:
        db.close()
