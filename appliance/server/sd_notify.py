"""systemd's notify protocol (sd_notify): READY=1 once warm, STOPPING=1 on drain, STATUS= lines.

A datagram to the socket named by $NOTIFY_SOCKET (read once in main and passed in); a no-op when
the daemon does not run under a Type=notify unit.
"""

from __future__ import annotations

import logging
import socket
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

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")
