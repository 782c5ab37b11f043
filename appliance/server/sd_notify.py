"""systemd's notify protocol (sd_notify): READY=1 once warm, RELOADING=1 while models reload,
STOPPING=1 on drain, WATCHDOG=1 keep-alives, STATUS= lines.

A datagram to the socket named by $NOTIFY_SOCKET (read once in main and passed in); a no-op when
the daemon does not run under a Type=notify unit.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Optional

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: Optional[str]):
        # An address starting with "@" is in the abstract namespace.
        self.address = "\0" + address[1:] if address and address.startswith("@") else address

    def notify(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # systemd gone or socket unwritable: keep serving
            log.warning("sd_notify failed: %s", exc.strerror)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self, status: str) -> None:
        # MONOTONIC_USEC (CLOCK_MONOTONIC, as systemd reads it) lets Type=notify-reload (systemd
        # 253+) tell this reload from an earlier one; older systemd ignores the field.
        self.notify("RELOADING=1", f"STATUS={status}", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")
