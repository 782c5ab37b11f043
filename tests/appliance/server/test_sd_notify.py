"""systemd's notify protocol, checked against a real notify socket that the test opens.

The socket stands in for systemd's: it receives with SO_PASSCRED, as systemd does, so each test
also checks that the datagrams come from the daemon's main process (the unit says
NotifyAccess=main, and systemd drops messages from any other pid).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.server.sd_notify import Notifier
from tests.conftest import REPO, DaemonProcess, free_port


def _daemon_source() -> str:
    return "\n".join(p.read_text() for p in (REPO / "appliance").rglob("*.py") if p.name != "sd_notify.py")


# The watchdog feed and SIGHUP reload live in the daemon, not in this module; until they land,
# their tests skip rather than fail (an unhandled SIGHUP would simply kill the daemon).
watchdog_landed = pytest.mark.skipif("WATCHDOG_USEC" not in _daemon_source(),
                                     reason="the daemon does not read WATCHDOG_USEC yet")
reload_landed = pytest.mark.skipif("SIGHUP" not in _daemon_source(),
                                   reason="the daemon does not handle SIGHUP yet")

UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass
class Datagram:
    at: float  # time.monotonic() on arrival
    fields: list[str]
    pid: int  # the sender, from SCM_CREDENTIALS


class NotifySocket:
    """An AF_UNIX datagram socket like systemd's; `address` is a path or "@name" (abstract)."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[Datagram] = []

    def receive(self, timeout_s: float) -> Datagram | None:
        self.sock.settimeout(max(timeout_s, 0.001))
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        except socket.timeout:
            return None
        pid = next(UCRED.unpack(d[:UCRED.size])[0] for level, kind, d in ancillary
                   if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS))
        datagram = Datagram(time.monotonic(), data.decode().split("\n"), pid)
        self.received.append(datagram)
        return datagram

    def wait_for(self, prefix: str, timeout_s: float = 120) -> Datagram:
        """The next datagram with a field starting with `prefix` ("READY=1", "STATUS=loading")."""
        deadline = time.monotonic() + timeout_s
        while (datagram := self.receive(deadline - time.monotonic())) is not None:
            if any(field.startswith(prefix) for field in datagram.fields):
                return datagram
        raise AssertionError(f"no {prefix} within {timeout_s}s; got {[d.fields for d in self.received]}")

    def collect(self, duration_s: float) -> list[Datagram]:
        deadline = time.monotonic() + duration_s
        start = len(self.received)
        while time.monotonic() < deadline:
            self.receive(deadline - time.monotonic())
        return self.received[start:]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


# --- the Notifier on its own -------------------------------------------------------------------


def test_each_call_sends_one_datagram_of_newline_separated_fields(notify_socket):
    notifier = Notifier(notify_socket.address)
    notifier.status("loading 2 model(s)")
    notifier.ready("serving on 0.0.0.0:50051: llama=ready")
    notifier.watchdog()
    before = time.monotonic_ns() // 1000
    notifier.reloading("reloading models")
    after = time.monotonic_ns() // 1000
    notifier.stopping("draining 3 stream(s)")
    got = [notify_socket.receive(5) for _ in range(5)]
    assert [d.fields for d in got[:3]] == [
        ["STATUS=loading 2 model(s)"],
        ["READY=1", "STATUS=serving on 0.0.0.0:50051: llama=ready"],
        ["WATCHDOG=1"],
    ]
    reloading = got[3].fields
    assert reloading[:2] == ["RELOADING=1", "STATUS=reloading models"]
    # MONOTONIC_USEC is CLOCK_MONOTONIC in microseconds, the clock systemd compares it with.
    assert reloading[2].startswith("MONOTONIC_USEC=") and before <= int(reloading[2].split("=")[1]) <= after
    assert got[4].fields == ["STOPPING=1", "STATUS=draining 3 stream(s)"]
    assert {d.pid for d in got} == {os.getpid()}
    assert notify_socket.receive(0.05) is None


def test_abstract_namespace_address():
    sock = NotifySocket(f"@appliance-test-{uuid.uuid4().hex}")
    try:
        Notifier(sock.address).ready("up")
        assert sock.receive(5).fields == ["READY=1", "STATUS=up"]
    finally:
        sock.close()


@pytest.mark.parametrize("address", [None, ""])
def test_without_notify_socket_nothing_is_sent(address):
    notifier = Notifier(address)
    notifier.ready("up")
    notifier.watchdog()
    notifier.stopping("bye")


def test_a_missing_socket_is_logged_not_raised(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="appliance.server.sd_notify"):
        Notifier(str(tmp_path / "gone.sock")).ready("up")
    assert "sd_notify failed" in caplog.text


# --- the daemon under a notify socket ----------------------------------------------------------


class NotifiedDaemon(DaemonProcess):
    """`appliance serve` with only the notify variables systemd would set, none inherited.

    watchdog_pid "self" starts it through `sh -c 'WATCHDOG_PID=$$ exec ...'`, so the variable
    names the daemon's own pid (exec keeps the shell's), as systemd sets it.
    """

    def __init__(self, models: Path, notify_address: str, watchdog_usec: int | None = None,
                 watchdog_pid: str | None = None):
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = models.parent / f"daemon-{self.port}.log"
        self._log = self.log_path.open("w")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["NOTIFY_SOCKET"] = notify_address
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        command = [sys.executable, "-m", "appliance.cli", "serve", "--models", str(models), "--listen",
                   self.target, "--threads", "1"]
        if watchdog_pid == "self":
            command = ["sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh", *command]
        elif watchdog_pid is not None:
            env["WATCHDOG_PID"] = watchdog_pid
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)


@pytest.fixture
def llama_only(models_dir, tmp_path) -> Path:
    served = tmp_path / "models"
    served.mkdir()
    shutil.copytree(models_dir / "llama", served / "llama")
    return served


def health(target: str) -> str:
    from appliance.client import ApplianceClient

    with ApplianceClient(target, timeout_s=10) as client:
        return client.health()


def test_daemon_reports_loading_then_ready_only_once_serving_then_stopping(models_dir, notify_socket):
    daemon = NotifiedDaemon(models_dir, notify_socket.address)
    try:
        notify_socket.wait_for("STATUS=loading", timeout_s=60)
        assert not any("READY=1" in d.fields for d in notify_socket.received)
        # The server answers while the packages load, and it is not serving yet.
        seen_before_ready = health(daemon.target)
        ready = notify_socket.wait_for("READY=1")
        # READY=1 is sent only after health turned SERVING: no waiting here.
        assert health(daemon.target) == "SERVING"
        assert seen_before_ready == "NOT_SERVING"
        status = next(f for f in ready.fields if f.startswith("STATUS="))
        assert status.startswith(f"STATUS=serving on {daemon.target}") and "llama=ready" in status
        daemon.proc.send_signal(signal.SIGTERM)
        stopping = notify_socket.wait_for("STOPPING=1", timeout_s=30)
        assert any(f.startswith("STATUS=draining") for f in stopping.fields)
        assert daemon.stop() == 0
        assert {d.pid for d in notify_socket.received} == {daemon.proc.pid}
    finally:
        daemon.stop()


@watchdog_landed
@pytest.mark.parametrize("watchdog_pid", ["self", None], ids=["WATCHDOG_PID=daemon", "WATCHDOG_PID-unset"])
def test_daemon_feeds_the_watchdog_every_half_interval(llama_only, notify_socket, watchdog_pid):
    from appliance.client import ApplianceClient

    daemon = NotifiedDaemon(llama_only, notify_socket.address, watchdog_usec=1_000_000, watchdog_pid=watchdog_pid)
    try:
        notify_socket.wait_for("READY=1")
        # The engine keeps stepping through a generation, so the pings go on meanwhile.
        with ApplianceClient(daemon.target, timeout_s=60) as client:
            stream = threading.Thread(target=lambda: list(client.generate("llama", "story", max_tokens=64,
                                                                          ignore_eos=True)))
            start = time.monotonic()
            stream.start()
            window = notify_socket.collect(3.0)
            end = time.monotonic()
            stream.join(60)
        pings = [d.at for d in window if d.fields == ["WATCHDOG=1"]]
        assert len(pings) >= 5, [d.fields for d in window]
        # systemd (WATCHDOG_USEC=1 s) restarts the daemon after a 1 s silence; half of it is the aim.
        gaps = [b - a for a, b in zip([start, *pings], [*pings, end])]
        assert max(gaps) < 1.0, gaps
        assert {d.pid for d in window} == {daemon.proc.pid}
        assert daemon.stop() == 0
    finally:
        daemon.stop()


@watchdog_landed
def test_daemon_leaves_a_watchdog_meant_for_another_process_alone(llama_only, notify_socket):
    # sd_watchdog_enabled(): WATCHDOG_PID naming another pid means the watchdog is not ours.
    daemon = NotifiedDaemon(llama_only, notify_socket.address, watchdog_usec=1_000_000,
                            watchdog_pid=str(os.getpid()))
    try:
        notify_socket.wait_for("READY=1")
        window = notify_socket.collect(2.0)
        assert not any("WATCHDOG=1" in d.fields for d in notify_socket.received), [d.fields for d in window]
        assert daemon.stop() == 0
    finally:
        daemon.stop()


@reload_landed
def test_sighup_reports_reloading_then_ready_and_keeps_serving(llama_only, notify_socket):
    daemon = NotifiedDaemon(llama_only, notify_socket.address)
    try:
        notify_socket.wait_for("READY=1")
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = notify_socket.wait_for("RELOADING=1", timeout_s=30)
        ready = notify_socket.wait_for("READY=1", timeout_s=120)
        assert reloading.at <= ready.at
        assert health(daemon.target) == "SERVING"
        assert daemon.proc.poll() is None
        assert {d.pid for d in notify_socket.received} == {daemon.proc.pid}
        assert daemon.stop() == 0
    finally:
        daemon.stop()
