"""Soak: mixed requests (generate, chat, embed, classify, redact; some cancelled, some refused)
under API keys with usage metering. RSS may grow at most 5% after warm-up, and the usage database
must hold exactly what the responses reported, per key and model."""

from __future__ import annotations

import collections
import concurrent.futures
import gc
import random

import grpc
import pytest

from appliance.client import ApplianceClient
from appliance.server.keys import KeyRights, KeyStore
from appliance.server.usage import read_usage
from tests.conftest import wait_for
from tests.reliability.conftest import SCALES, engine_clean, rss_bytes, sized
from tests.reliability.daemons import in_process

RSS_GROWTH_LIMIT = 5.0
KINDS = ("generate", "chat", "embed", "classify", "zero-shot", "redact", "cancel", "refused")


@pytest.fixture(scope="module")
def soaked(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("soak")
    store = KeyStore(root / "keys.db")
    keys = {name: store.add(name, KeyRights()) for name in ("alpha", "beta", "canceller")}
    with in_process(models_dir, root, server={"usage_db": root / "usage.db", "max_queue": 256},
                    engine={"max_batch": 4}, auth={"keys_db": root / "keys.db"}) as running:
        yield running, {name: (key.id, token) for name, (key, token) in keys.items()}, root


class Expected:
    """What the usage table must say, from the responses: per (key id, model) the columns
    requests, prompt_tokens, completion_tokens, cancelled, rejected."""

    def __init__(self):
        self.rows = collections.defaultdict(lambda: [0, 0, 0, 0, 0])

    def add(self, key, model, prompt=0, completion=0, cancelled=0, rejected=0, tokens_known=True):
        row = self.rows[(key, model)]
        for i, v in enumerate((1, prompt, completion, cancelled, rejected)):
            row[i] += v


def one_request(target, key_id, token, kind, rng, expected, lock):
    with ApplianceClient(target, api_key=token, timeout_s=120) as client:
        if kind in ("generate", "chat"):
            options = {"messages": [("user", f"hello {rng.random()}")]} if kind == "chat" else {}
            chunks = list(client.generate("llama", "" if options else f"soak {rng.random()}",
                                          max_tokens=rng.randint(1, 12), **options))
            row = dict(prompt=chunks[-1].prompt_tokens, completion=chunks[-1].completion_tokens)
            model = "llama"
        elif kind == "embed":
            response = client.stub.Embed(__import__("appliance.v1.inference_pb2", fromlist=["x"]).EmbedRequest(
                model="minilm", texts=[f"text {rng.random()}", "another"]), metadata=client.metadata, timeout=60)
            row, model = dict(prompt=response.prompt_tokens), "minilm"
        elif kind in ("classify", "zero-shot"):
            from appliance.v1 import inference_pb2 as pb

            request = pb.ClassifyRequest(model="intents", texts=[f"where is my parcel {rng.random()}"])
            if kind == "zero-shot":
                request = pb.ClassifyRequest(model="minilm", texts=["refund please"], labels=[
                    pb.Label(name="refund", description="money back"), pb.Label(name="parcel", description="delivery")])
            response = client.stub.Classify(request, metadata=client.metadata, timeout=60)
            row, model = dict(prompt=response.prompt_tokens), request.model
        elif kind == "redact":
            client.redact(f"mail bob{rng.randint(0, 99)}@example.com")
            return kind  # no model: not metered
        elif kind == "cancel":
            stream = client.generate("llama", f"cancel {rng.random()}", max_tokens=200, ignore_eos=True)
            next(stream)
            stream.close()
            with lock:
                expected.cancelled[key_id] += 1
            return kind
        else:  # refused: a bad field on a served model is metered as rejected
            try:
                list(client.generate("llama", "refused", temperature=-1.0))
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
            row, model = dict(rejected=1), "llama"
    with lock:
        expected.add(key_id, model, **row)
    return kind


@pytest.mark.parametrize("scale", SCALES)
def test_soak_keeps_memory_flat_and_usage_exact(soaked, figures, scale):
    import threading

    running, keys, root = soaked
    total = sized(scale, 150, 2000)
    warm = max(total // 10, 40)
    rng = random.Random(11)
    # Cancelled streams go on their own key: how many tokens a stream made before the cancel reached
    # the engine only the server knows, so that key's rows are checked for counts and lower bounds,
    # and every other key's rows must match the responses exactly.
    plan = []
    for _ in range(total):
        kind = rng.choice(KINDS)
        key = keys["canceller"] if kind == "cancel" else keys[rng.choice(("alpha", "beta"))]
        plan.append((key, kind, rng.randrange(1 << 30)))
    expected, lock = Expected(), threading.Lock()
    expected.cancelled = collections.Counter()
    running.daemon.usage.flush()
    before = {(r[1], r[2]): r for r in read_usage(root / "usage.db")}

    def go(item):
        (key_id, token), kind, seed = item
        return one_request(running.target, key_id, token, kind, random.Random(seed), expected, lock)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        done = list(pool.map(go, plan[:warm]))
        gc.collect()
        rss_warm = rss_bytes()
        done += list(pool.map(go, plan[warm:]))
    model = running.daemon.registry.get("llama")
    clean = wait_for(lambda: engine_clean(model)[0] and running.daemon.service.active_streams == 0, 30)
    gc.collect()
    growth = 100.0 * (rss_bytes() - rss_warm) / rss_warm
    running.daemon.usage.flush()
    rows = {(r[1], r[2]): r for r in read_usage(root / "usage.db")}

    def delta(key):
        now, was = rows.get(key), before.get(key)
        return [now[i] - (was[i] if was else 0) for i in range(3, 8)] if now else [0] * 5

    mismatches = []
    canceller = keys["canceller"][0]
    for key in set(rows) | set(expected.rows):
        got, want = delta(key), list(expected.rows.get(key, [0] * 5))
        if key[0] == canceller:
            n = expected.cancelled[canceller]
            exact = got[0] == got[3] == n and got[4] == 0 and got[1] >= n and got[2] >= n
            if not exact:
                mismatches.append((key, got, f"{n} cancelled, each >= 1 prompt and completion token"))
        elif got != want:
            mismatches.append((key, got, want))
    kinds = collections.Counter(done)
    figures.record("soak requests", f"{len(done)} ({' '.join(f'{k}={v}' for k, v in sorted(kinds.items()))})",
                   f"{total}", len(done) == total)
    figures.record("RSS growth after warm-up", f"{growth:.2f}%", f"<= {RSS_GROWTH_LIMIT}%", growth <= RSS_GROWTH_LIMIT)
    figures.record("usage rows not matching the responses", len(mismatches), "0", not mismatches)
    figures.record("engine clean after soak", clean, "True", clean)
    assert len(done) == total and clean
    assert not mismatches, mismatches[:4]
    assert growth <= RSS_GROWTH_LIMIT
