"""Scale-out with gRPC's own machinery: one client balances round-robin over three appliances,
following their health; one drains (SIGTERM) and one dies (SIGKILL) under continuous load."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Optional

import grpc

from appliance.client import ApplianceClient
from tests.conftest import DaemonProcess

WORKERS = 8
MAX_TOKENS = 120


@dataclass
class Outcome:
    started: float
    ended: float
    code: Optional[grpc.StatusCode]  # None: completed with every token


def load(client: ApplianceClient, stop: threading.Event, outcomes: list[Outcome]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            chunks = list(client.generate("llama", "the weather today", max_tokens=MAX_TOKENS, ignore_eos=True))
            ok = chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == MAX_TOKENS
            code = None if ok else grpc.StatusCode.UNKNOWN
        except grpc.RpcError as exc:
            code = exc.code()
        outcomes.append(Outcome(started, time.monotonic(), code))


def served_generates(daemon: DaemonProcess) -> int:
    return len(re.findall(r'"rpc": "Generate".*"status": "OK"', daemon.log()))


def test_round_robin_over_three_appliances_survives_a_drain_and_a_kill(models_dir):
    daemons = [DaemonProcess(models_dir, "--grace-period", "20") for _ in range(3)]
    draining, survivor, killed = daemons
    try:
        for d in daemons:
            d.wait_serving(120)
        target = "ipv4:" + ",".join(d.target for d in daemons)
        outcomes: list[Outcome] = []
        stop = threading.Event()
        with ApplianceClient(target, timeout_s=60) as client:
            workers = [threading.Thread(target=load, args=(client, stop, outcomes)) for _ in range(WORKERS)]
            for w in workers:
                w.start()
            time.sleep(3)
            spread = [served_generates(d) for d in daemons]

            draining.proc.terminate()  # SIGTERM: NOT_SERVING, refuse new calls, finish running streams
            assert draining.proc.wait(60) == 0
            time.sleep(2)
            killed_at = time.monotonic()
            killed.proc.kill()
            killed.proc.wait(10)
            time.sleep(3)
            stop.set()
            for w in workers:
                w.join(60)

        assert all(n > 0 for n in spread), f"round_robin did not reach every appliance: {spread}"
        in_flight = int(re.search(r"draining: (\d+) stream\(s\) in flight", draining.log()).group(1))
        # Streams running on the drained appliance finished there (it exits only once they have).
        assert re.search(r'"msg": "stopped"', draining.log())
        # Only streams running on the killed appliance at the moment it died may fail.
        failed = [o for o in outcomes if o.code is not None]
        allowed = [o for o in failed if o.started <= killed_at <= o.ended and o.code is grpc.StatusCode.UNAVAILABLE]
        assert failed == allowed, [(o.code, o.started - killed_at) for o in failed if o not in allowed]
        after_kill = [o for o in outcomes if o.started > killed_at]
        assert len(after_kill) > 10 and all(o.code is None for o in after_kill)
        print(f"\nscale-out: {len(outcomes)} streams, spread {spread}, {in_flight} finished during the drain, "
              f"{len(failed)} cut by the kill, {len(after_kill)} served by the survivor after it")
        assert survivor.proc.poll() is None
    finally:
        for d in daemons:
            if d.proc.poll() is None:
                d.stop()
