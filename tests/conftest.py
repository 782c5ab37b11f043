"""Shared fixtures: tiny random models of real architectures, exported once per session.

Fixtures write only under pytest's temporary folders. Exports run in the test process, and leave
the export CLI's own global state there: TOKENIZERS_PARALLELISM and its subnormal-flush mode.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Exports run in this process too (export_or_fail): no test may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    from appliance.engine.providers import PROVIDER_NAMES

    try:
        import onnxruntime

        has_cuda = PROVIDER_NAMES["cuda"] in onnxruntime.get_available_providers()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="no CUDA execution provider on this host")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def export_or_fail(source: Path, output: Path, *extra: str) -> Path:
    """Exports through the CLI's main in this process: importing the export stack is 5 of the 6 s a
    tiny export takes in a fresh interpreter, paid here once per session. Tests of what the command
    prints or exits with use run_export, a real process."""
    from export.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main([str(source), "--output", str(output), *extra])
    assert code == 0, printed.getvalue()[-2000:]
    return output


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> dict[str, Path]:
    missing = [name for name in ("torch", "optimum", "onnxruntime_genai") if importlib.util.find_spec(name) is None]
    if missing:  # a GPU host brought up from a wheelhouse has the daemon only
        pytest.skip(f"the export stack is not installed here (no {', '.join(missing)})")
    from export.tiny_models import make_bert, make_decoder, make_gpt2, minilm_dir

    root = tmp_path_factory.mktemp("sources")
    return {
        "llama": make_decoder(root / "llama", "llama"),
        "qwen2": make_decoder(root / "qwen2", "qwen2", seed=1),
        "phi3": make_decoder(root / "phi3", "phi3", seed=2),
        "mistral": make_decoder(root / "mistral", "mistral", seed=3),
        "gpt2": make_gpt2(root / "gpt2"),
        "bert": make_bert(root / "bert"),
        "bert-classifier": make_bert(root / "bert-classifier", task="text-classification"),
        "bert-tagger": make_bert(root / "bert-tagger", task="token-classification"),
        "minilm": minilm_dir(),
    }


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, request) -> Path:
    """A served models folder: tiny llama and qwen2 (builder, fp32), gpt2 (optimum, fp32),
    a text classifier, and the real MiniLM (int8).

    APPLIANCE_TEST_MODELS=DIR uses a folder exported beforehand instead: `make gpu-check` brings
    one (offline/gpu_check.py --make-packages) to GPU hosts that lack the export stack.
    """
    if given := os.environ.get("APPLIANCE_TEST_MODELS"):
        return Path(given)
    sources = request.getfixturevalue("sources")
    root = tmp_path_factory.mktemp("models")
    export_or_fail(sources["llama"], root / "llama")
    export_or_fail(sources["qwen2"], root / "qwen2")
    export_or_fail(sources["gpt2"], root / "gpt2")
    export_or_fail(sources["bert-classifier"], root / "intents")
    export_or_fail(sources["minilm"], root / "minilm", "--precision", "int8")
    return root


@pytest.fixture(scope="session")
def minilm_fp32(sources, tmp_path_factory) -> Path:
    """The real all-MiniLM-L6-v2 at fp32, exported once for every test that reads it."""
    return export_or_fail(sources["minilm"], tmp_path_factory.mktemp("minilm-fp32") / "minilm")


@pytest.fixture(scope="session")
def llama_int4(sources, tmp_path_factory) -> Path:
    """The tiny llama as plain `--precision int4` writes it, exported once for every test that reads it."""
    return export_or_fail(sources["llama"], tmp_path_factory.mktemp("llama-int4") / "llama-int4", "--precision", "int4")


@pytest.fixture(scope="session")
def llama_int4_b128(sources, tmp_path_factory) -> Path:
    """The tiny llama at int4 in blocks of 128, exported once for every test that reads it."""
    return export_or_fail(sources["llama"], tmp_path_factory.mktemp("llama-int4-b128") / "llama-b128",
                          "--precision", "int4", "--block-size", "128")


@pytest.fixture(scope="session")
def llama_int4_prefill_int8(sources, tmp_path_factory) -> Path:
    """The tiny llama at int4 with an int8 prefill graph (`--prefill-int8`), exported once."""
    return export_or_fail(sources["llama"], tmp_path_factory.mktemp("llama-int4-int8") / "llama-int4-int8",
                          "--precision", "int4", "--prefill-int8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """`appliance serve` in a subprocess on a loopback port."""

    def __init__(self, models: Path, *extra: str, env: dict | None = None, python: str = sys.executable,
                 cwd: Path | None = None):
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = models.parent / f"daemon-{self.port}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [python, "-m", "appliance.cli", "serve", "--models", str(models), "--listen", self.target,
             "--threads", "1", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd,
        )

    def wait_serving(self, timeout_s: float = 60) -> "DaemonProcess":
        from appliance.client import ApplianceClient

        with ApplianceClient(self.target) as client:
            client.wait_until_serving(timeout_s)
        return self

    def stop(self, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture(scope="session")
def daemon(models_dir):
    process = DaemonProcess(models_dir).wait_serving()
    yield process
    process.stop()


@pytest.fixture
def client(daemon):
    from appliance.client import ApplianceClient

    with ApplianceClient(daemon.target, timeout_s=60) as c:
        yield c


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


class InProcessDaemon:
    """The daemon on its own event loop in a thread, so tests can reach inside (registry, stats)."""

    def __init__(self, config, **daemon_args):
        import asyncio
        import threading

        self.config = config
        self.target = config.server.listen
        self._ready = threading.Event()
        self._failure: list[BaseException] = []

        async def main():
            from appliance.server.app import Daemon

            try:
                self.daemon, self.loop = Daemon(config, **daemon_args), asyncio.get_running_loop()
                await self.daemon.start()
            except BaseException as exc:
                self._failure.append(exc)
                raise
            finally:
                self._ready.set()
            await self.daemon._stop.wait()
            await self.daemon.drain()

        self._thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)

    def __enter__(self) -> "InProcessDaemon":
        self._thread.start()
        assert self._ready.wait(120), "the daemon did not start"
        if self._failure:
            raise self._failure[0]
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.daemon.request_stop)
        self._thread.join(60)
