"""Serving one package for a benchmark: the daemon alone on a free loopback port (SERVING), or the
same engine in this process for the side-by-side figure."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """A process's resident memory (VmRSS) now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@contextmanager
def serve_alone(package: Path, config_toml: str = "", threads: int = 2, ready_timeout_s: float = 300,
                log: Optional[Path] = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`appliance serve` with only `package` in its models folder (neighbours would load too and
    count against its memory and cores); yields (target, process) once health says SERVING. Its
    output goes to `log` (else nowhere); a daemon that exits before SERVING fails at once."""
    from appliance.client import ApplianceClient

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        (models / package.name).symlink_to(package.resolve())
        config = Path(tmp) / "appliance.toml"
        config.write_text(config_toml)
        target = f"127.0.0.1:{free_port()}"
        output = log.open("w") if log else subprocess.DEVNULL
        daemon = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--config", str(config),
                                   "--models", str(models), "--listen", target, "--threads", str(threads)],
                                  stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + ready_timeout_s
            with ApplianceClient(target) as client:
                while True:
                    if daemon.poll() is not None:
                        raise RuntimeError(f"the daemon exited ({daemon.returncode}) before SERVING"
                                           + (f"; see {log}" if log else ""))
                    try:
                        client.wait_until_serving(min(2.0, max(deadline - time.monotonic(), 0.0)))
                        break
                    except TimeoutError:
                        if time.monotonic() >= deadline:
                            raise
            yield target, daemon
        finally:
            daemon.terminate()
            daemon.wait(60)
            if log:
                output.close()


def open_engine(package: Path, threads: int, scheduling=None, max_context: int = 0):
    """(engine, tokenizer, manifest) for `package` in this process, as the daemon would build them."""
    from tokenizers import Tokenizer

    from appliance.engine.engine import GenerationEngine
    from appliance.engine.providers import RuntimeOptions
    from appliance.engine.runners import open_decoder_runner
    from appliance.model_package import open_package

    manifest = open_package(package)
    tokenizer = Tokenizer.from_file(str(package / "tokenizer.json"))
    max_batch = scheduling.max_batch if scheduling is not None else 1
    runner = open_decoder_runner(package, manifest, RuntimeOptions(intra_op_threads=threads), max_batch, max_context)
    return GenerationEngine(runner, tokenizer, manifest.eos_token_ids, scheduling), tokenizer, manifest
