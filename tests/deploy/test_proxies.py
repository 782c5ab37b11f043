"""A fleet of three appliances behind the real nginx and HAProxy, from the configs shipped in
deploy/, through each door (gRPC, and the OpenAI HTTP API with server-sent events): streams flow
through the proxy while one appliance drains (SIGTERM) and another is killed (SIGKILL). Streams
on the drained one finish, only streams running on the killed one fail, new streams keep
flowing, and the proxy stops sending to both. Prints what it saw.
"""

from __future__ import annotations

import re
import shutil
import time

import grpc
import pytest

from tests.conftest import free_port
from tests.deploy.proxies import Proxy
from tests.scale.fleet import (RETRYING_SERVICE_CONFIG, Fleet, StreamLoad, grpc_streams, http_streams,
                               wait_until)


def _needs(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (.ci/run installs it from Debian: apt-get install {binary})")


def _proxy_stopped_sending(proxy: Proxy, fleet: Fleet, door: str, index: int) -> bool:
    """Whether the proxy has given up on backend `index`: HAProxy says DOWN; nginx (passive
    health only) has logged a failed connection to it."""
    if proxy.kind == "haproxy":
        return proxy.server_status(f"appliance_{door}")[f"app{index + 1}"] == "DOWN"
    target = fleet.targets[index] if door == "grpc" else fleet.http_targets[index]
    return f"upstream: \"{door}://{target}" in proxy.error_log()


DOORS = ("grpc", "http")


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_a_fleet_behind_the_proxy_survives_a_drain_and_a_kill(kind, models_dir, tmp_path):
    _needs(kind)
    with Fleet(models_dir, tmp_path / "fleet") as fleet, \
            Proxy(kind, free_port(), fleet.targets, tmp_path / kind, http_targets=fleet.http_targets) as proxy, \
            grpc.insecure_channel(proxy.target, options=[("grpc.service_config", RETRYING_SERVICE_CONFIG),
                                                         ("grpc.enable_retries", 1)]) as channel:
        drained, survivor, killed = range(3)
        # Both doors at once, four streams each, through the same proxy to the same appliances.
        loads = {"grpc": StreamLoad(grpc_streams(channel), workers=4),
                 "http": StreamLoad(http_streams(proxy.http_target), workers=4)}

        def completed_after(moment: float, count: int):
            return lambda: all(load.completed_after(moment) >= count for load in loads.values())

        def gave_up_on(index: int):
            return lambda: all(_proxy_stopped_sending(proxy, fleet, door, index) for door in DOORS)

        wait_until(lambda: min(fleet.served()) >= 2, 60, "every appliance to serve streams")
        before = fleet.served()

        drained_at = time.monotonic()
        fleet.daemons[drained].proc.terminate()  # NOT_SERVING, refuse new calls, finish running streams
        assert fleet.daemons[drained].proc.wait(60) == 0
        drain_s = time.monotonic() - drained_at
        at_drain = fleet.served()
        wait_until(completed_after(drained_at + drain_s, 5), 60, "streams after the drain")

        killed_at = time.monotonic()
        fleet.daemons[killed].proc.kill()
        fleet.daemons[killed].proc.wait(10)
        wait_until(gave_up_on(killed), 30, f"{kind} to give up on the killed one")
        noticed_s = time.monotonic() - killed_at
        wait_until(completed_after(killed_at + noticed_s, 10), 60, "streams after the kill")
        after = fleet.served()
        outcomes = {door: load.stop() for door, load in loads.items()}
        health = {door: proxy.server_status(f"appliance_{door}") for door in DOORS} if kind == "haproxy" else {}
        stopped_sending = {door: [_proxy_stopped_sending(proxy, fleet, door, i) for i in range(3)] for door in DOORS}

    in_flight = re.search(r"draining: (\d+) stream\(s\) in flight", fleet.daemons[drained].log()).group(1)
    print(f"\n{kind}: generations per backend (drained, survivor, killed) before the drain {before}, when the "
          f"drained one exited {at_drain} ({drain_s:.2f} s drain, {in_flight} gRPC stream(s) in flight finished "
          f"there), at the end {after}; {kind} stopped sending to the killed one {noticed_s * 1e3:.0f} ms after it; "
          f"health at the end {health or 'passive (nginx has no active checks)'}")
    assert all(n > 0 for n in before), f"{kind} did not reach every appliance: {before}"
    assert after[survivor] > at_drain[survivor]
    for door, done in outcomes.items():
        failed = [o for o in done if o.code is not None]
        # Streams on the killed appliance: running when it died, or sent there before the proxy knew.
        cut = [o for o in failed if o.started <= killed_at + noticed_s and o.ended >= killed_at]
        print(f"  {door}: {len(done)} streams, {len(failed)} failed "
              f"({sorted({f'{o.code}: {o.detail[:80]}' for o in failed})}), {len(cut)} of them on the killed one")
        assert failed == cut, [(o.code, round(o.started - killed_at, 2)) for o in failed if o not in cut]
        assert len(cut) <= 8
        assert all(o.code is None for o in done if o.started > killed_at + noticed_s)
        if kind == "haproxy":
            assert health[door] == {"app1": "DOWN", "app2": "UP", "app3": "DOWN"}
        else:  # nginx found both gone when it tried them, and had no complaint about the survivor
            assert stopped_sending[door] == [True, False, True]
