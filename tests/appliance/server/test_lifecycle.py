"""Health transitions, SIGTERM drain and config errors of the daemon."""

import asyncio
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from appliance.server.app import Daemon
from appliance.server.config import load_config
from appliance.v1 import inference_pb2 as pb
from appliance.v1 import inference_pb2_grpc
from tests.conftest import DaemonProcess, free_port, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_goes_not_serving_loading_serving_draining(models_dir, tmp_path):
    served = tmp_path / "models"
    served.mkdir()
    shutil.copytree(models_dir / "llama", served / "llama")
    config = load_config(None, {"server": {"models": served, "listen": f"127.0.0.1:{free_port()}"}})

    async def scenario():
        daemon = Daemon(config)
        release = threading.Event()
        real_load = daemon.registry.load_all
        daemon.registry.load_all = lambda: (release.wait(30), real_load())
        starting = asyncio.create_task(daemon.start())
        seen = []
        async with grpc.aio.insecure_channel(config.server.listen) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status():
                return (await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status

            for _ in range(100):
                try:
                    seen.append(await status())
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
            release.set()
            await starting
            seen.append(await status())
            # Drain with a stream in flight: health flips at once, new calls are refused,
            # and the running stream still completes.
            inference = inference_pb2_grpc.InferenceStub(channel)
            runner = daemon.registry.get("llama").engine.replicas[0].runner
            gate = threading.Event()
            real_decode = runner.decode
            runner.decode = lambda *args, **kwargs: (gate.wait(30), real_decode(*args, **kwargs))[1]
            running = inference.Generate(pb.GenerateRequest(model="llama", prompt="story", max_tokens=200, ignore_eos=True))
            first = await running.read()
            drain = asyncio.create_task(daemon.drain())
            await asyncio.sleep(0.05)
            seen.append(await status())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await inference.Generate(pb.GenerateRequest(model="llama", prompt="late")).read()
            seen.append(refused.value.code())
            gate.set()
            rest = []
            while (message := await running.read()) is not grpc.aio.EOF:
                rest.append(message)
            await drain
        return seen, [first, *rest]

    seen, messages = asyncio.run(scenario())
    assert seen == [NOT_SERVING, SERVING, NOT_SERVING, grpc.StatusCode.UNAVAILABLE]
    assert messages[-1].usage.completion_tokens == 200


def test_sigterm_lets_admitted_streams_finish_then_exits_zero(models_dir):
    from appliance.client import ApplianceClient

    daemon = DaemonProcess(models_dir, "--grace-period", "60").wait_serving()
    finished_at, refused, broken, first_chunk = [], [], [], threading.Event()

    def stream():
        chunks = []
        try:
            with ApplianceClient(daemon.target) as client:
                for chunk in client.generate("llama", "Tell me everything", max_tokens=240, ignore_eos=True):
                    chunks.append(chunk)
                    first_chunk.set()
        except grpc.RpcError as exc:
            # Refusal is allowed only before a stream starts, never in the middle of one.
            (refused if not chunks and exc.code() == grpc.StatusCode.UNAVAILABLE else broken).append(exc)
            return
        if chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 240:
            finished_at.append(time.monotonic())
        else:
            broken.append(chunks[-1])

    # The foundation engine runs one request at a time, so 24 streams keep it busy for a while.
    workers = [threading.Thread(target=stream) for _ in range(24)]
    for worker in workers:
        worker.start()
    assert first_chunk.wait(30)
    signalled_at = time.monotonic()
    daemon.proc.terminate()
    with ApplianceClient(daemon.target) as client:
        assert wait_for(lambda: _health_or_gone(client) != "SERVING", 10)
    for worker in workers:
        worker.join(120)
    assert daemon.stop() == 0
    assert not broken
    assert len(finished_at) + len(refused) == 24
    assert max(finished_at) > signalled_at  # streams really were in flight during the drain
    assert "draining" in daemon.log()


def _health_or_gone(client):
    try:
        return client.health()
    except grpc.RpcError:
        return "gone"


def test_a_broken_package_fails_alone(models_dir, tmp_path):
    from appliance.client import ApplianceClient

    served = tmp_path / "models"
    served.mkdir()
    shutil.copytree(models_dir / "llama", served / "llama")
    shutil.copytree(models_dir / "llama", served / "tampered")
    with (served / "tampered" / "model.onnx.data").open("r+b") as handle:
        handle.seek(64)
        handle.write(b"\x00\x01\x02\x03")
    daemon = DaemonProcess(served).wait_serving()
    try:
        with ApplianceClient(daemon.target) as client:
            models = {m.name: m for m in client.list_models()}
            assert models["llama"].state == "ready"
            assert models["tampered"].state == "failed"
            assert "model.onnx.data does not match its sha256" in models["tampered"].error
            with pytest.raises(grpc.RpcError) as info:
                list(client.generate("tampered", "hi"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert list(client.generate("llama", "hi", max_tokens=2))[-1].completion_tokens >= 1
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("toml,field", [
    ('[server]\nlisten = "nowhere"\n', "server.listen"),
    ('[server]\nmax_queue = 0\n', "server.max_queue"),
    ('[runtime]\nproviders = ["quantum"]\n', "runtime.providers"),
    ('[serverr]\nlisten = "127.0.0.1:1"\n', "serverr"),
])
def test_bad_config_exits_2_naming_the_field(tmp_path, toml, field):
    path = tmp_path / "appliance.toml"
    path.write_text(toml)
    done = subprocess.run([sys.executable, "-m", "appliance.cli", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert field in done.stderr


def test_example_config_is_valid():
    from tests.conftest import REPO

    config = load_config(REPO / "systemd" / "appliance.toml")
    assert config.server.listen == "0.0.0.0:50051" and config.runtime.providers == ("cuda", "cpu")


def test_daemon_logs_are_json_lines_with_request_ids_and_no_prompt_text(models_dir):
    import json

    from appliance.client import ApplianceClient

    daemon = DaemonProcess(models_dir).wait_serving()
    secret_prompt = "my card is 4111 1111 1111 1111 and mail bob@example.org"
    with ApplianceClient(daemon.target) as client:
        list(client.generate("llama", secret_prompt, max_tokens=3, ignore_eos=True))
        with pytest.raises(grpc.RpcError):
            list(client.generate("llama", secret_prompt, temperature=-3))
    assert daemon.stop() == 0
    lines = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "appliance.access" and line["rpc"] == "Generate"]
    assert {line["status"] for line in access} >= {"OK", "INVALID_ARGUMENT"}
    assert all(len(line["request_id"]) == 32 for line in access)
    text = daemon.log()
    assert "4111" not in text and "bob@example.org" not in text and "my card" not in text


def test_a_repeated_sigterm_does_not_turn_a_clean_drain_into_a_kill(models_dir):
    # An impatient operator or a supervisor may signal again while the daemon is already stopping;
    # the exit status must stay the drain's, not the default handler's -15.
    daemon = DaemonProcess(models_dir).wait_serving()
    while daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    assert daemon.stop() == 0
