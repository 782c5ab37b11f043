"""API keys: stored only as salted scrypt hashes in SQLite, each with its rights and limits.

A key reads `apk_<id>_<secret>`: the id finds the row, the secret is checked against its hash.
The daemon caches a verified key for a few seconds (scrypt is deliberately slow) and rereads the
row after that, so `appliance keys revoke` takes effect within the cache time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

PREFIX = "apk_"
CACHE_S = 5.0
# Bounds the verification cache: a stream of made-up tokens must not grow memory without end.
CACHE_ENTRIES = 4096
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    rights TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class KeyRights:
    """What a key may do; empty tuples and 0 mean "no limit"."""

    models: tuple[str, ...] = ()
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrency: int = 0
    input_policies: tuple[str, ...] = ("off", "redact", "pseudonymize")
    output_policies: tuple[str, ...] = ("off", "redact", "restore")
    # May call the Admin service (hot reload).
    admin: bool = False

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    rights: KeyRights
    created_at: float = 0.0
    revoked_at: Optional[float] = None


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


def _parse(token: str) -> Optional[tuple[str, str]]:
    if not token.startswith(PREFIX):
        return None
    key_id, sep, secret = token[len(PREFIX):].partition("_")
    return (key_id, secret) if sep and key_id and secret else None


@dataclass
class KeyStore:
    path: Path
    _cache: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def add(self, name: str, rights: KeyRights) -> tuple[ApiKey, str]:
        """Creates a key; returns it and the token, which is shown once and never stored."""
        key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
        key = ApiKey(key_id, name, rights, time.time())
        with self._connect() as db:
            db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL, ?)",
                       (key_id, name, salt, _hash(secret, salt), key.created_at, json.dumps(rights.__dict__)))
        return key, f"{PREFIX}{key_id}_{secret}"

    def list(self) -> list[ApiKey]:
        with self._connect() as db:
            rows = db.execute("SELECT id, name, created_at, revoked_at, rights FROM api_keys ORDER BY created_at").fetchall()
        return [ApiKey(i, n, _rights(r), c, rv) for i, n, c, rv, r in rows]

    def revoke(self, key_id: str) -> bool:
        with self._connect() as db:
            done = db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                              (time.time(), key_id))
        return done.rowcount == 1

    def verify(self, token: str) -> Optional[ApiKey]:
        """The key a token belongs to, or None (unknown, wrong secret or revoked)."""
        digest = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_S:
            return cached[1]
        parsed = _parse(token)
        key = self._check(*parsed) if parsed else None
        with self._lock:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[digest] = (now, key)
        return key

    def _check(self, key_id: str, secret: str) -> Optional[ApiKey]:
        with self._connect() as db:
            row = db.execute("SELECT name, salt, hash, created_at, revoked_at, rights FROM api_keys WHERE id = ?",
                             (key_id,)).fetchone()
        if row is None or row[4] is not None:
            return None
        name, salt, stored, created, _, rights = row
        if not hmac.compare_digest(_hash(secret, salt), stored):
            return None
        return ApiKey(key_id, name, _rights(rights), created)


def _rights(raw: str) -> KeyRights:
    values = json.loads(raw)
    return KeyRights(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
