"""Several daemons under continuous streaming load: what the scale-out and proxy tests share."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import grpc
from prometheus_client.parser import text_string_to_metric_families

from appliance.v1 import inference_pb2 as pb, inference_pb2_grpc
from tests.conftest import DaemonProcess, free_port, wait_for

MAX_TOKENS = 60
GENERATIONS = ("Generate", "completions")  # the rpc label of a generation, gRPC and HTTP
# Behind a proxy a client retries a call refused with UNAVAILABLE (an appliance that drains, or
# a proxy with no backend left); gRPC retries only before the first response message, so a
# stream is never replayed. No health checking: the health service behind a proxy is whichever
# appliance the proxy picked, not the proxy.
RETRYING_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "appliance.v1.Inference"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "0.5s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


@dataclass
class Outcome:
    started: float
    ended: float
    # None: completed with every token. Else the gRPC status name, or "HTTP <status>" for the HTTP
    # door; a stream that ended early without an error counts as INCOMPLETE.
    code: Optional[str]
    detail: str = ""


class Fleet:
    """Three appliances serving `llama`, each with its metrics port, a 20 s drain grace."""

    def __init__(self, models_dir: Path, work: Path, size: int = 3):
        models = work / "models"
        models.mkdir(parents=True)
        shutil.copytree(models_dir / "llama", models / "llama")
        self.metrics_ports = [free_port() for _ in range(size)]
        self.http_targets = [f"127.0.0.1:{free_port()}" for _ in range(size)]  # the OpenAI HTTP door
        self.daemons = []
        for port, http_target in zip(self.metrics_ports, self.http_targets):
            config = work / f"appliance-{port}.toml"
            config.write_text(f'[server]\nmetrics_listen = "127.0.0.1:{port}"\n')
            self.daemons.append(DaemonProcess(models, "--config", str(config), "--grace-period", "20",
                                              "--http-listen", http_target))
        try:
            for daemon in self.daemons:
                daemon.wait_serving(120)
        except BaseException:
            self.__exit__()  # no with-block will: the constructor did not return
            raise
        self.last_seen = [0] * size  # streams each served, as last read (a gone daemon keeps its count)

    @property
    def targets(self) -> list[str]:
        return [d.target for d in self.daemons]

    def served(self) -> list[int]:
        """Generations (gRPC Generate, HTTP completions) each appliance has finished OK (its
        metrics; the last reading once gone)."""
        for i, port in enumerate(self.metrics_ports):
            if self.daemons[i].proc.poll() is not None:
                continue
            with contextlib.suppress(OSError):
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                self.last_seen[i] = int(sum(
                    sample.value for family in text_string_to_metric_families(text)
                    if family.name == "appliance_requests" for sample in family.samples
                    if sample.name == "appliance_requests_total" and sample.labels.get("rpc") in GENERATIONS
                    and sample.labels.get("status") == "OK"))
        return list(self.last_seen)

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc) -> None:
        for daemon in self.daemons:
            if daemon.proc.poll() is None:
                daemon.stop()


class StreamLoad:
    """`workers` threads streaming `stream_one()` back to back until `stop`; each call returns
    (code, detail) as Outcome has them."""

    def __init__(self, stream_one, workers: int = 8):
        self._stream_one = stream_one
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            code, detail = self._stream_one()
            self.outcomes.append(Outcome(started, time.monotonic(), code, detail))

    def completed_after(self, moment: float) -> int:
        return sum(1 for o in list(self.outcomes) if o.started > moment and o.code is None)

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return list(self.outcomes)


def grpc_streams(channel: grpc.Channel):
    """One Generate stream over `channel`, as StreamLoad's stream_one."""
    stub = inference_pb2_grpc.InferenceStub(channel)
    request = pb.GenerateRequest(model="llama", prompt="the weather today", max_tokens=MAX_TOKENS, ignore_eos=True)

    def stream_one() -> tuple[Optional[str], str]:
        try:
            last = list(stub.Generate(request, timeout=60))[-1]
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""
        return (None, "") if last.usage.completion_tokens == MAX_TOKENS else ("INCOMPLETE", "ended early")
    return stream_one


def http_streams(target: str):
    """One streamed /v1/completions call (server-sent events) to `target`, as StreamLoad's stream_one."""
    host, _, port = target.rpartition(":")
    body = json.dumps({"model": "llama", "prompt": "the weather today", "max_tokens": MAX_TOKENS,
                       "stream": True, "ignore_eos": True})

    def stream_one() -> tuple[Optional[str], str]:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request("POST", "/v1/completions", body, {"content-type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                return f"HTTP {response.status}", response.read(200).decode(errors="replace")
            events = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
        except (OSError, http.client.HTTPException) as exc:
            return "CUT", exc.__class__.__name__
        finally:
            connection.close()
        finished = len(events) >= 2 and events[-1] == "data: [DONE]" and '"finish_reason":"length"' in events[-2]
        return (None, "") if finished else ("INCOMPLETE", f"{len(events)} events, no [DONE] after a length finish")
    return stream_one


def wait_until(predicate, timeout_s: float, what: str) -> None:
    assert wait_for(predicate, timeout_s), f"timed out after {timeout_s:.0f} s waiting for {what}"
