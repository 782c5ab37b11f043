"""Who is calling and what they may do: API keys, per-key rate and concurrency limits.

Keys come as `authorization: Bearer <key>` metadata. Without a key store configured the server
is open (every caller is the anonymous principal with every right), which suits a loopback
development box; production configs set `[auth] keys_db`.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import grpc

from appliance.errors import ApplianceError, NotAllowed, QueueFull, quoted_name
from appliance.server.keys import ApiKey, KeyRights, KeyStore

# Without a key store the operator has chosen an open server (a loopback or lab box): every
# caller has every right, the admin one included.
ANONYMOUS = ApiKey("anonymous", "anonymous", KeyRights(admin=True))


class Unauthenticated(ApplianceError):
    status_name = "UNAUTHENTICATED"


class TokenBucket:
    """`rate` per minute, bursting up to one minute's worth."""

    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate = per_minute / 60.0
        self.stamp = time.monotonic()

    def take(self, amount: float) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False

    def has_credit(self) -> bool:
        self.take(0)  # refill first
        return self.tokens > 0

    def charge(self, amount: float) -> None:
        """Takes tokens already spent (may go negative: the next requests wait for the refill)."""
        self.take(0)
        self.tokens -= amount


@dataclass
class Lease:
    """A request's hold on its key's concurrency slot; release exactly once."""

    auth: "Authenticator"
    key: ApiKey
    released: bool = False

    def release(self, tokens_used: int = 0) -> None:
        if not self.released:
            self.released = True
            self.auth._release(self.key, tokens_used)


class Authenticator:
    def __init__(self, store: Optional[KeyStore]):
        self.store = store
        self._lock = threading.Lock()
        self._active: dict[str, int] = defaultdict(int)
        self._request_buckets: dict[str, TokenBucket] = {}
        self._token_buckets: dict[str, TokenBucket] = {}

    def identify(self, context: grpc.aio.ServicerContext) -> ApiKey:
        if self.store is None:
            return ANONYMOUS
        return self.identify_header(dict(context.invocation_metadata() or ()).get("authorization", ""))

    def identify_header(self, header: str) -> ApiKey:
        """The key of an `authorization` value (gRPC metadata or the HTTP header alike)."""
        if self.store is None:
            return ANONYMOUS
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>'")
        key = self.store.verify(token.strip())
        if key is None:
            raise Unauthenticated("invalid or revoked API key")
        return key

    @staticmethod
    def check_admin(key: ApiKey) -> None:
        if not key.rights.admin:
            raise NotAllowed("this call needs a key with the admin right (appliance keys add --admin)")

    @staticmethod
    def check_model(key: ApiKey, model: str) -> None:
        if not key.rights.allows_model(model):
            raise NotAllowed(f"model: this key may not use {quoted_name(model)}")

    def admit(self, key: ApiKey) -> Lease:
        """Applies the key's request rate, token rate and concurrency limits (RESOURCE_EXHAUSTED)."""
        rights = key.rights
        with self._lock:
            if rights.max_concurrency and self._active[key.id] >= rights.max_concurrency:
                raise QueueFull(f"this key already has {rights.max_concurrency} requests running")
            if rights.requests_per_minute and not self._bucket(self._request_buckets, key.id,
                                                               rights.requests_per_minute).take(1):
                raise QueueFull(f"this key's rate of {rights.requests_per_minute} requests per minute is spent")
            if rights.tokens_per_minute and not self._bucket(self._token_buckets, key.id,
                                                             rights.tokens_per_minute).has_credit():
                raise QueueFull(f"this key's quota of {rights.tokens_per_minute} tokens per minute is spent")
            self._active[key.id] += 1
        return Lease(self, key)

    def _release(self, key: ApiKey, tokens_used: int) -> None:
        with self._lock:
            self._active[key.id] -= 1
            if key.rights.tokens_per_minute and tokens_used:
                self._bucket(self._token_buckets, key.id, key.rights.tokens_per_minute).charge(tokens_used)

    @staticmethod
    def _bucket(buckets: dict, key_id: str, per_minute: int) -> TokenBucket:
        bucket = buckets.get(key_id)
        if bucket is None or bucket.capacity != per_minute:
            bucket = buckets[key_id] = TokenBucket(per_minute)
        return bucket

    def active(self, key_id: str) -> int:
        """Calls key `key_id` has running now (its max_concurrency counts these)."""
        with self._lock:
            return self._active.get(key_id, 0)

    def active_total(self) -> int:
        """Calls running now over every key: 0 once every lease has been released."""
        with self._lock:
            return sum(self._active.values())
