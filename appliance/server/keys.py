"""API keys: stored only as salted scrypt hashes in SQLite, each with its rights and limits.

A key reads `apk_<id>_<secret>`: the id finds the row, the secret is checked against its hash.
The daemon caches a verified key for a few seconds (scrypt is deliberately slow) and rereads the
row after that, so `appliance keys revoke` takes effect within the cache time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from appliance.errors import InvalidRequest
from appliance.redact.policies import INPUT_POLICIES, OUTPUT_POLICIES
from appliance.server.sqlite_files import database_uri, open_database

log = logging.getLogger(__name__)

PREFIX = "apk_"
CACHE_S = 5.0
# Bounds the verification cache: a stream of made-up tokens must not grow memory without end.
CACHE_ENTRIES = 4096
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
# Limits are per minute (or requests at once); past this a limit means nothing, so it is a typo.
MAX_LIMIT = 2**31 - 1
MAX_NAME_CHARS = 100

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
    """What a key may do, validated when made: an empty `models` and a limit of 0 mean "no
    limit"; the policies are the redaction policies the key may choose (at least one each)."""

    models: tuple[str, ...] = ()
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrency: int = 0
    input_policies: tuple[str, ...] = INPUT_POLICIES
    output_policies: tuple[str, ...] = OUTPUT_POLICIES
    # May call the Admin service (hot reload).
    admin: bool = False

    def __post_init__(self):
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrency"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= MAX_LIMIT:
                raise InvalidRequest(name, f"must be a whole number from 0 (no limit) to {MAX_LIMIT}")
        if not isinstance(self.models, tuple) or not all(_is_model_name(m) for m in self.models):
            raise InvalidRequest("models", "each must be a model's name (not empty, no spaces around it)")
        for name, known in (("input_policies", INPUT_POLICIES), ("output_policies", OUTPUT_POLICIES)):
            policies = getattr(self, name)
            if not isinstance(policies, tuple) or not policies or not set(policies) <= set(known):
                raise InvalidRequest(name, f"must name one or more of {', '.join(known)}")
        if type(self.admin) is not bool:
            raise InvalidRequest("admin", "must be true or false")

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models


def _is_model_name(name) -> bool:
    return isinstance(name, str) and name == name.strip() and name.isprintable() and bool(name)


def check_key_name(name) -> str:
    if not isinstance(name, str) or not name.strip() or not name.isprintable() or len(name) > MAX_NAME_CHARS:
        raise InvalidRequest("name", f"must be 1 to {MAX_NAME_CHARS} printable characters, not only spaces")
    return name


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    rights: KeyRights
    created_at: float = 0.0
    revoked_at: Optional[float] = None
    # Why a stored key is unusable (rights stored before they were validated); such a key never
    # authenticates, and `rights` is then a placeholder.
    invalid: str = ""


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


def _parse(token: str) -> Optional[tuple[str, str]]:
    if not token.startswith(PREFIX):
        return None
    key_id, sep, secret = token[len(PREFIX):].partition("_")
    return (key_id, secret) if sep and key_id and secret else None


@dataclass
class KeyStore:
    """`mode` is SQLite's: "rwc" (the daemon, `keys add`) creates a missing file in an existing
    folder, "rw" (`keys revoke`) and "ro" (`keys list`) open only an existing keys database."""

    path: Path
    mode: str = "rwc"
    _cache: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.path = Path(self.path)
        open_database(self.path, "api_keys", _SCHEMA, self.mode, "keys database")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(database_uri(self.path, self.mode), uri=True, timeout=10)

    def add(self, name: str, rights: KeyRights) -> tuple[ApiKey, str]:
        """Creates a key; returns it and the token, which is shown once and never stored."""
        check_key_name(name)
        if not isinstance(rights, KeyRights):
            raise InvalidRequest("rights", "must be a KeyRights")
        key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
        key = ApiKey(key_id, name, rights, time.time())
        with self._connect() as db:
            db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL, ?)",
                       (key_id, name, salt, _hash(secret, salt), key.created_at, json.dumps(rights.__dict__)))
        return key, f"{PREFIX}{key_id}_{secret}"

    def list(self) -> list[ApiKey]:
        with self._connect() as db:
            rows = db.execute("SELECT id, name, created_at, revoked_at, rights FROM api_keys ORDER BY created_at").fetchall()
        keys = []
        for key_id, name, created, revoked, raw in rows:
            rights, invalid = _stored_rights(raw)
            keys.append(ApiKey(key_id, name, rights or KeyRights(), created, revoked, invalid))
        return keys

    def revoke(self, key_id: str) -> bool:
        with self._connect() as db:
            done = db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                              (time.time(), key_id))
        return done.rowcount == 1

    def cached(self) -> int:
        """Verdicts held in memory (at most CACHE_ENTRIES), so a flood of bad tokens cannot grow them."""
        with self._lock:
            return len(self._cache)

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
        name, salt, stored, created, _, raw = row
        if not hmac.compare_digest(_hash(secret, salt), stored):
            return None
        rights, invalid = _stored_rights(raw)
        if rights is None:
            # Fail closed rather than guess what such rights meant (most of those keys were refused
            # for every call anyway: a rate of -5, a model named "").
            log.warning("API key %s has invalid stored rights (%s): refused; revoke it and add it again",
                        key_id, invalid)
            return None
        return ApiKey(key_id, name, rights, created)


def _stored_rights(raw: str) -> tuple[Optional[KeyRights], str]:
    """(rights, "") or (None, why they are invalid) for a row's JSON."""
    try:
        values = json.loads(raw)
        return KeyRights(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}), ""
    except InvalidRequest as exc:
        return None, str(exc)
    except (ValueError, TypeError, AttributeError):
        return None, "rights: not a JSON object of known fields"
