"""Scale-out with gRPC's own machinery: one client balances round-robin over three appliances,
following their health; one drains (SIGTERM) and one dies (SIGKILL) under continuous load.
Every wait is on a condition (streams served, a process gone), none on a fixed time."""

from __future__ import annotations

import re
import time

import grpc

from appliance.client import open_channel
from tests.scale.fleet import Fleet, StreamLoad, grpc_streams, wait_until


def test_round_robin_over_three_appliances_survives_a_drain_and_a_kill(models_dir, tmp_path):
    with Fleet(models_dir, tmp_path) as fleet:
        drained, survivor, killed = fleet.daemons
        with open_channel(grpc, "ipv4:" + ",".join(fleet.targets)) as channel:
            load = StreamLoad(grpc_streams(channel))
            wait_until(lambda: min(fleet.served()) >= 2, 60, "round_robin to reach every appliance")
            spread = fleet.served()

            drained.proc.terminate()  # SIGTERM: NOT_SERVING, refuse new calls, finish running streams
            assert drained.proc.wait(60) == 0
            at_drain = time.monotonic()
            wait_until(lambda: load.completed_after(at_drain) >= 10, 60, "streams after the drain")
            killed_at = time.monotonic()
            killed.proc.kill()
            killed.proc.wait(10)
            wait_until(lambda: load.completed_after(killed_at) >= 20, 60, "streams after the kill")
            outcomes = load.stop()
        assert survivor.proc.poll() is None

    in_flight = int(re.search(r"draining: (\d+) stream\(s\) in flight", drained.log()).group(1))
    # Only streams running on the killed appliance at the moment it died may fail.
    failed = [o for o in outcomes if o.code is not None]
    allowed = [o for o in failed if o.started <= killed_at <= o.ended and o.code == "UNAVAILABLE"]
    assert failed == allowed, [(o.code, o.detail, o.started - killed_at) for o in failed if o not in allowed]
    after_kill = [o for o in outcomes if o.started > killed_at]
    assert all(o.code is None for o in after_kill)
    print(f"\nscale-out: {len(outcomes)} streams, spread {spread}, {in_flight} finished during the drain, "
          f"{len(failed)} cut by the kill, {len(after_kill)} served by the survivor after it")
