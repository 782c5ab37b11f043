"""The shipped proxy configs (deploy/nginx, deploy/haproxy) run as they are, on loopback: only
the listen port, the backend addresses and the state paths are put in for the test."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "deploy" / "nginx" / "appliance.conf"
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
# The placeholder appliances in the shipped files: 10.0.0.11 .. 13, gRPC on 50051, HTTP on 8080
# (and HAProxy's `port 50051`, the gRPC port its check of an HTTP server goes to).
_BACKEND = re.compile(r"10\.0\.0\.1(\d):(50051|8080)( port 50051)?")

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


def _backends(text: str, grpc_targets: list[str], http_targets: list[str]) -> str:
    def target(match: re.Match) -> str:
        index = int(match.group(1)) - 1
        if match.group(2) == "50051":
            return grpc_targets[index]
        check = f" port {grpc_targets[index].rpartition(':')[2]}" if match.group(3) else ""
        return http_targets[index] + check

    if {int(m.group(1)) for m in _BACKEND.finditer(text)} != set(range(1, len(grpc_targets) + 1)):
        raise ValueError(f"the shipped config does not name {len(grpc_targets)} appliances 10.0.0.11..")
    return _BACKEND.sub(target, text)


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

    def __init__(self, kind: str, port: int, targets: list[str], work: Path, http_port: int = 0,
                 http_targets: list[str] | None = None):
        """`port` and `targets`: gRPC; `http_port` and `http_targets`: the OpenAI HTTP door (the
        gRPC targets stand in where the daemons run none)."""
        self.kind, self.port, self.work = kind, port, work
        self.http_port = http_port or free_port()
        http_targets = http_targets or targets
        work.mkdir(parents=True, exist_ok=True)
        self.log_path = work / f"{kind}.log"
        if kind == "nginx":
            conf = _backends(NGINX_CONF.read_text(), targets, http_targets)
            conf = conf.replace("listen 50051", f"listen 127.0.0.1:{port}")
            conf = conf.replace("listen 8080", f"listen 127.0.0.1:{self.http_port}")
            (work / "appliance.conf").write_text(conf)
            (work / "nginx.conf").write_text(_NGINX_MAIN.format(work=work))
            command = [shutil.which("nginx"), "-p", str(work), "-e", str(work / "error.log"),
                       "-c", str(work / "nginx.conf")]
        else:
            self.stats_socket = work / "haproxy.sock"
            cfg = _backends(HAPROXY_CFG.read_text(), targets, http_targets)
            cfg = cfg.replace("bind :50051", f"bind 127.0.0.1:{port}").replace("bind :8080",
                                                                                f"bind 127.0.0.1:{self.http_port}")
            cfg = cfg.replace("/run/haproxy/admin.sock", str(self.stats_socket))
            (work / "haproxy.cfg").write_text(cfg)
            command = [shutil.which("haproxy"), "-db", "-f", str(work / "haproxy.cfg")]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port)
        except OSError:
            self.stop()
            raise RuntimeError(f"{kind} did not listen on {port}: {self.log_path.read_text()[-500:]}") from None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_target(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def server_status(self, backend: str = "appliance_grpc") -> dict[str, str]:
        """HAProxy's view of each server of `backend` (app1.. in config order): UP, DOWN, ..."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            text = s.makefile().read()
        rows = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")]
        return {row[1]: row[17] for row in rows if row[0] == backend and row[1] != "BACKEND"}

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
