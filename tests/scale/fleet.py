"""Several daemons under continuous streaming load: what the scale-out and proxy tests share."""

from __future__ import annotations

import contextlib
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
    # None: completed with every token; a stream that ended early without an error counts as UNKNOWN.
    code: Optional[grpc.StatusCode]
    detail: str = ""


class Fleet:
    """Three appliances serving `llama`, each with its metrics port, a 20 s drain grace."""

    def __init__(self, models_dir: Path, work: Path, size: int = 3):
        models = work / "models"
        models.mkdir(parents=True)
        shutil.copytree(models_dir / "llama", models / "llama")
        self.metrics_ports = [free_port() for _ in range(size)]
        self.daemons = []
        for port in self.metrics_ports:
            config = work / f"appliance-{port}.toml"
            config.write_text(f'[server]\nmetrics_listen = "127.0.0.1:{port}"\n')
            self.daemons.append(DaemonProcess(models, "--config", str(config), "--grace-period", "20"))
        for daemon in self.daemons:
            daemon.wait_serving(120)
        self.last_seen = [0] * size  # streams each served, as last read (a gone daemon keeps its count)

    @property
    def targets(self) -> list[str]:
        return [d.target for d in self.daemons]

    def served(self) -> list[int]:
        """Generate calls each appliance has finished OK (its metrics; the last reading once gone)."""
        for i, port in enumerate(self.metrics_ports):
            if self.daemons[i].proc.poll() is not None:
                continue
            with contextlib.suppress(OSError):
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                self.last_seen[i] = int(sum(
                    sample.value for family in text_string_to_metric_families(text)
                    if family.name == "appliance_requests" for sample in family.samples
                    if sample.name == "appliance_requests_total" and sample.labels.get("rpc") == "Generate"
                    and sample.labels.get("status") == "OK"))
        return list(self.last_seen)

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc) -> None:
        for daemon in self.daemons:
            if daemon.proc.poll() is None:
                daemon.stop()


class StreamLoad:
    """`workers` threads streaming Generate back to back over one channel until `stop`."""

    def __init__(self, channel: grpc.Channel, workers: int = 8):
        self.stub = inference_pb2_grpc.InferenceStub(channel)
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        request = pb.GenerateRequest(model="llama", prompt="the weather today", max_tokens=MAX_TOKENS, ignore_eos=True)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                last = list(self.stub.Generate(request, timeout=60))[-1]
                complete = last.usage.completion_tokens == MAX_TOKENS
                code, detail = (None, "") if complete else (grpc.StatusCode.UNKNOWN, "ended early without an error")
            except grpc.RpcError as exc:
                code, detail = exc.code(), exc.details() or ""
            self.outcomes.append(Outcome(started, time.monotonic(), code, detail))

    def completed_after(self, moment: float) -> int:
        return sum(1 for o in list(self.outcomes) if o.started > moment and o.code is None)

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return list(self.outcomes)


def wait_until(predicate, timeout_s: float, what: str) -> None:
    assert wait_for(predicate, timeout_s), f"timed out after {timeout_s:.0f} s waiting for {what}"
