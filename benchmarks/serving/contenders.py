"""The four contenders behind one interface: replay(spec) -> summary, first_token_times(prompts),
and a context manager that starts and stops each one. The daemon runs as `appliance serve`; the
onnxruntime-genai Engine and OpenVINO GenAI, which have no gRPC server, run in a peer process
(peers.py) with the same arrivals and figures."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from . import models
from .daemon import DaemonContender
from .workload import WorkloadSpec

NAMES = ("daemon-cache", "daemon-nocache", "genai", "openvino")
DEFAULT_CACHE = "prefix_cache_mb = 512\nprefix_cache_generated = true"


class PeerContender:
    def __init__(self, name: str, python: Path, model_dir: Path, package: Path, prompts, threads: int):
        self.name, self.prompts = name, prompts
        self.command = [str(python), str(Path(__file__).with_name("peers.py")), name, str(model_dir), str(package),
                        str(threads)]
        self.log = models.WORK / "logs" / f"peer-{name}-{package.name}.log"
        self.process = None

    def __enter__(self):
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log.open("w"), text=True)
        self._answer()  # {"ready": true} once the model is loaded
        return self

    def __exit__(self, *exc):
        self.process.stdin.close()
        self.process.wait(60)

    def describe(self) -> str:
        return f"peer process {shlex.join(self.command)}"

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"serving benchmark: the {self.name} peer exited ({self.process.wait()}); see {self.log}")
        return json.loads(line)

    def _ask(self, job: dict) -> dict:
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def replay(self, spec: WorkloadSpec) -> dict:
        return self._ask({"op": "replay", "spec": asdict(spec)})["summary"]

    def first_token_times(self, prompts) -> list[float]:
        return self._ask({"op": "ttft", "prompts": prompts})["ttft_s"]


def make(name: str, model: str, prompts, args):
    package = models.package(model)
    if name.startswith("daemon"):
        extra = args.cache_config if name == "daemon-cache" else "prefix_cache_mb = 0"
        return DaemonContender(name, package, prompts, args.max_batch, models.CONTEXT, extra, args.threads,
                               models.WORK / "logs" / f"{name}-{package.name}.log")
    if name == "genai":
        return PeerContender(name, Path(sys.executable), models.genai_model(model), package, prompts, args.threads)
    return PeerContender(name, models.OPENVINO_PYTHON, models.openvino_model(model), package, prompts, args.threads)
