"""The shipped proxy configs (deploy/nginx, deploy/haproxy) run as they are, on loopback: only
the listen port, the backend addresses and the state paths are put in for the test."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "deploy" / "nginx" / "appliance.conf"
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
# The placeholder appliances in the shipped files, in order.
_BACKEND = re.compile(r"10\.0\.0\.1\d:50051")

_NGINX_MAIN = """daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {work}/access.log;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {work}/appliance.conf;
}}
"""


def _backends(text: str, targets: list[str]) -> str:
    found = _BACKEND.findall(text)
    if len(found) != len(targets):
        raise ValueError(f"the shipped config names {len(found)} backends; the test brings {len(targets)}")
    for placeholder, target in zip(found, targets):
        text = text.replace(placeholder, target, 1)
    return text


def wait_listening(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Proxy:
    """nginx or haproxy in the foreground, from its shipped config, until `stop`."""

    def __init__(self, kind: str, port: int, targets: list[str], work: Path):
        self.kind, self.port, self.work = kind, port, work
        work.mkdir(parents=True, exist_ok=True)
        self.log_path = work / f"{kind}.log"
        if kind == "nginx":
            conf = _backends(NGINX_CONF.read_text(), targets).replace("listen 50051", f"listen 127.0.0.1:{port}")
            (work / "appliance.conf").write_text(conf)
            (work / "nginx.conf").write_text(_NGINX_MAIN.format(work=work))
            command = [shutil.which("nginx"), "-p", str(work), "-e", str(work / "error.log"),
                       "-c", str(work / "nginx.conf")]
        else:
            self.stats_socket = work / "haproxy.sock"
            cfg = _backends(HAPROXY_CFG.read_text(), targets).replace("bind :50051", f"bind 127.0.0.1:{port}")
            cfg = cfg.replace("/run/haproxy/admin.sock", str(self.stats_socket))
            (work / "haproxy.cfg").write_text(cfg)
            command = [shutil.which("haproxy"), "-db", "-f", str(work / "haproxy.cfg")]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        wait_listening(port)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def server_status(self) -> dict[str, str]:
        """HAProxy's view of each backend (app1.. in config order): UP, DOWN, ..."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            text = s.makefile().read()
        rows = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")]
        return {row[1]: row[17] for row in rows if row[0] == "appliance_grpc" and row[1] != "BACKEND"}

    def error_log(self) -> str:
        path = self.work / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
