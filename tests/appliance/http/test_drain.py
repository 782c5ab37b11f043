"""SIGTERM's drain covers the HTTP door: a running SSE stream finishes, new requests get 503, and
`appliance serve --http-listen` refuses a busy port like the gRPC one."""

import asyncio
import shutil
import socket
import subprocess
import sys
import threading

import aiohttp
import pytest

from appliance.errors import ConfigError
from appliance.server.app import Daemon
from appliance.server.config import load_config
from tests.conftest import free_port


def test_drain_lets_a_stream_in_flight_finish_and_refuses_new_requests(models_dir, tmp_path):
    served = tmp_path / "models"
    shutil.copytree(models_dir / "llama", served / "llama")
    config = load_config(None, {"server": {"models": served, "listen": f"127.0.0.1:{free_port()}"},
                                "http": {"listen": "127.0.0.1:0"}})
    body = {"model": "llama", "prompt": "story", "max_tokens": 200, "ignore_eos": True, "stream": True}

    async def scenario():
        daemon = Daemon(config)
        await daemon.start()
        runner = daemon.registry.get("llama").engine.replicas[0].runner
        # Decode runs freely until the stream's first event is out (the detokenizer may need a
        # few tokens for it), then stops at the gate: the stream is in flight across the drain.
        hold, gate, held = threading.Event(), threading.Event(), threading.Event()
        real_decode = runner.decode

        def gated_decode(*args, **kwargs):
            if hold.is_set():
                held.set()
                gate.wait(30)
            return real_decode(*args, **kwargs)

        runner.decode = gated_decode
        url = f"http://{daemon.http_address}/v1/completions"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=body) as running:
                first = await running.content.readline()
                hold.set()
                drain = asyncio.create_task(daemon.drain())
                while not daemon.service.draining:
                    await asyncio.sleep(0.01)
                async with session.post(url, json=body) as refused:
                    late = refused.status, refused.headers.get("Retry-After"), await refused.json()
                stream_was_held = held.wait(10)
                gate.set()
                rest = await running.read()
            await drain
        return first, late, rest, stream_was_held

    first, (status, retry_after, refusal), rest, stream_was_held = asyncio.run(scenario())
    assert stream_was_held
    assert first.startswith(b"data: {")
    assert status == 503 and retry_after and refusal["error"]["type"] == "service_unavailable"
    assert b'"finish_reason":"length"' in rest and rest.endswith(b"data: [DONE]\n\n")


def test_http_listen_must_be_host_port():
    with pytest.raises(ConfigError, match="^config http.listen: must be HOST:PORT$"):
        load_config(None, {"http": {"listen": "8000"}})


def test_a_busy_http_port_stops_the_start_with_exit_2(models_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "appliance.cli", "serve", "--models", str(models_dir),
                               "--listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"appliance serve: config http.listen: 127.0.0.1:{port}: address already in use (something else listens there)"]
