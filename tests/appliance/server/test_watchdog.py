"""The systemd watchdog is fed only while every engine keeps stepping."""

from __future__ import annotations

import socket
import threading
import time

from appliance.client import ApplianceClient
from appliance.server.config import load_config
from appliance.server.sd_notify import Notifier
from tests.appliance.server.test_hot_reload import put_package, slow_down
from tests.conftest import InProcessDaemon, free_port

WATCHDOG_S = 0.4


def test_a_stuck_engine_stops_the_watchdog_pings_and_they_resume_when_it_moves(tmp_path, models_dir):
    models = tmp_path / "models"
    models.mkdir()
    put_package(models_dir / "llama", models, "chat")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.1)
    pings: list[float] = []
    statuses: list[str] = []
    done = threading.Event()

    def listen():
        while not done.is_set():
            try:
                fields = sock.recv(4096).decode().split("\n")
            except socket.timeout:
                continue
            if "WATCHDOG=1" in fields:
                pings.append(time.monotonic())
            statuses.extend(f for f in fields if f.startswith("STATUS="))

    listener = threading.Thread(target=listen)
    listener.start()
    config = load_config(None, {"server": {"models": models, "listen": f"127.0.0.1:{free_port()}"}})
    try:
        with InProcessDaemon(config, notifier=Notifier(str(tmp_path / "notify")), watchdog_s=WATCHDOG_S) as d, \
                ApplianceClient(d.target, timeout_s=60) as client:
            time.sleep(1.0)
            assert len(pings) >= 3, "no pings while idle"
            # One decode step that takes 2 s: the engine thread is stuck inside the runner.
            engine = d.daemon.registry.lookup("chat").engine.replicas[0]
            slow_down(engine, 2.0)
            stuck_from = time.monotonic()
            chunks = list(client.generate("chat", "hi", max_tokens=2, ignore_eos=True))
            moving_again = time.monotonic()
            time.sleep(1.0)
        assert chunks[-1].completion_tokens == 2
        # Silent while stuck (after the interval that marks it stalled), pinging again after.
        silent = [t for t in pings if stuck_from + WATCHDOG_S + 0.25 < t < moving_again - 0.1]
        assert silent == [], f"{len(silent)} pings while the engine was stuck"
        assert any(t > moving_again for t in pings), "pings did not resume"
        assert any("chat" in s and "stalled" in s for s in statuses)
    finally:
        done.set()
        listener.join()
        sock.close()
