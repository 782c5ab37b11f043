"""Hot reload: new and changed packages swap in while streams finish on the version they began on;
a broken package leaves the old version serving with its error visible."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from appliance.client import ApplianceClient
from appliance.server.config import load_config
from tests.conftest import DaemonProcess, InProcessDaemon, free_port, wait_for


def put_package(source: Path, models: Path, name: str) -> None:
    """Replaces models/name with a copy of source the way the exporter publishes: built aside,
    then renamed into place."""
    staging = models.parent / f"staging-{name}-{time.monotonic_ns()}"
    shutil.copytree(source, staging)
    target = models / name
    if target.exists():
        retired = models.parent / f"retired-{name}-{time.monotonic_ns()}"
        os.rename(target, retired)
    os.rename(staging, target)


def corrupt_weights(package: Path) -> str:
    """Flips one byte in the package's largest file; returns that file's name."""
    biggest = max((p for p in package.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    return biggest.name


@pytest.fixture
def served(tmp_path, models_dir) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    put_package(models_dir / "llama", models, "chat")
    return models


def in_process(models: Path, **sections) -> InProcessDaemon:
    config = load_config(None, {"server": {"models": models, "listen": f"127.0.0.1:{free_port()}"}, **sections})
    return InProcessDaemon(config)


def slow_down(engine, seconds_per_step: float) -> None:
    """Makes one engine's decode steps slow, so a stream surely spans a reload."""
    decode = engine.runner.decode

    def slow_decode(*args, **kwargs):
        time.sleep(seconds_per_step)
        return decode(*args, **kwargs)

    engine.runner.decode = slow_decode


def test_a_changed_package_swaps_in_while_a_stream_finishes_on_the_old_version(served, models_dir):
    with in_process(served) as d, ApplianceClient(d.target, timeout_s=60) as client:
        registry = d.daemon.registry
        old = registry.lookup("chat")
        slow_down(old.engine.replicas[0], 0.02)
        arrivals: list[float] = []
        chunks = []

        def stream():
            for chunk in client.generate("chat", "hello", max_tokens=200, ignore_eos=True):
                arrivals.append(time.monotonic())
                chunks.append(chunk)

        streaming = threading.Thread(target=stream)
        streaming.start()
        assert wait_for(lambda: arrivals, 30), "the stream never started"

        put_package(models_dir / "qwen2", served, "chat")
        results = client.reload_models()
        reloaded_at = time.monotonic()
        assert [(r.name, r.outcome) for r in results] == [("chat", "updated")]
        new_version = results[0].version
        assert new_version and new_version != old.version

        # New requests get the new version at once...
        info = client.get_model("chat")
        assert (info.architecture, info.version, info.reload_error) == ("qwen2", new_version, "")
        fresh = list(client.generate("chat", "hello", max_tokens=4, ignore_eos=True))
        assert fresh[-1].model_version == new_version
        # ... while the old stream is still running on the old one, which is not closed under it.
        assert streaming.is_alive() and not old.engine.closed

        streaming.join(60)
        assert arrivals[-1] > reloaded_at, "the stream did not span the reload"
        last = chunks[-1]
        assert (last.finish_reason, last.completion_tokens, last.model_version) == ("length", 200, old.version)
        assert sum(len(c.token_ids) for c in chunks) == 200
        # Once its last stream is done, the old version is closed and no row is left held.
        assert wait_for(lambda: old.engine.closed, 10)
        assert registry.lookup("chat").engine.stats().running == 0


def test_a_broken_package_leaves_the_old_version_serving(served, models_dir, caplog):
    with in_process(served) as d, ApplianceClient(d.target, timeout_s=60) as client:
        before = client.get_model("chat")
        broken = served.parent / "broken"
        shutil.copytree(models_dir / "qwen2", broken)
        damaged = corrupt_weights(broken)
        put_package(broken, served, "chat")

        with caplog.at_level(logging.ERROR):
            results = client.reload_models()
        (result,) = results
        assert (result.outcome, result.version) == ("failed", before.version)
        assert damaged in result.error
        info = client.get_model("chat")
        assert (info.state, info.version, info.architecture) == ("ready", before.version, "llama")
        assert damaged in info.reload_error
        metrics = d.daemon.metrics.registry
        assert metrics.get_sample_value("appliance_model_reload_failed", {"model": "chat"}) == 1
        assert metrics.get_sample_value("appliance_model_reloads_total", {"model": "chat", "outcome": "failed"}) == 1
        assert any("chat" in r.getMessage() and damaged in r.getMessage() for r in caplog.records)
        # Still serving, on the old version.
        chunks = list(client.generate("chat", "hello", max_tokens=3, ignore_eos=True))
        assert chunks[-1].model_version == before.version

        # The good package put back: nothing to swap, and the error is cleared.
        put_package(models_dir / "llama", served, "chat")
        (result,) = client.reload_models()
        assert (result.outcome, result.version) == ("unchanged", before.version)
        assert client.get_model("chat").reload_error == ""
        assert metrics.get_sample_value("appliance_model_reload_failed", {"model": "chat"}) == 0


def test_a_package_corrupted_in_place_fails_its_reload_and_the_old_version_serves(served):
    package = served / "chat"
    originals = {p.name: p.read_bytes() for p in package.iterdir() if p.is_file()}
    with in_process(served) as d, ApplianceClient(d.target, timeout_s=60) as client:
        before = client.get_model("chat")
        damaged = corrupt_weights(package)  # same size, same manifest: only the bytes changed
        (result,) = client.reload_models()
        assert (result.outcome, result.version) == ("failed", before.version)
        assert damaged in result.error and "sha256" in result.error
        info = client.get_model("chat")
        assert (info.state, info.version) == ("ready", before.version)
        assert damaged in info.reload_error
        assert d.daemon.metrics.registry.get_sample_value("appliance_model_reload_failed", {"model": "chat"}) == 1
        chunks = list(client.generate("chat", "hello", max_tokens=3, ignore_eos=True))
        assert chunks[-1].model_version == before.version

        # The same bytes written back (a new mtime, nothing else): unchanged, the error cleared.
        (package / damaged).write_bytes(originals[damaged])
        (result,) = client.reload_models()
        assert (result.outcome, result.version) == ("unchanged", before.version)
        assert client.get_model("chat").reload_error == ""


def test_reload_adds_new_packages_and_removes_gone_ones(served, models_dir, capsys):
    from appliance.cli import main

    with in_process(served) as d, ApplianceClient(d.target, timeout_s=60) as client:
        put_package(models_dir / "gpt2", served, "writer")
        assert main(["reload", "--target", d.target]) == 0  # the operator's command
        printed = dict(line.split()[:2] for line in capsys.readouterr().out.splitlines())
        assert printed == {"chat": "unchanged", "writer": "added"}
        outcomes = {r.name: r.outcome for r in client.reload_models()}
        assert outcomes == {"chat": "unchanged", "writer": "unchanged"}
        assert list(client.generate("writer", "hi", max_tokens=2, ignore_eos=True))[-1].completion_tokens == 2

        old_chat = d.daemon.registry.lookup("chat")
        shutil.rmtree(served / "chat")
        outcomes = {r.name: r.outcome for r in client.reload_models()}
        assert outcomes == {"chat": "removed", "writer": "unchanged"}
        with pytest.raises(grpc.RpcError) as gone:
            list(client.generate("chat", "hi", max_tokens=2))
        assert gone.value.code() is grpc.StatusCode.NOT_FOUND
        assert [m.name for m in client.list_models()] == ["writer"]
        assert wait_for(lambda: old_chat.engine.closed, 10)


def test_only_admin_keys_may_reload(served, tmp_path):
    from appliance.server.keys import KeyRights, KeyStore

    store = KeyStore(tmp_path / "keys.db")
    _, user = store.add("user", KeyRights())
    _, admin = store.add("operator", KeyRights(admin=True))
    with in_process(served, auth={"keys_db": tmp_path / "keys.db"}) as d:
        with ApplianceClient(d.target, timeout_s=30, api_key=user) as client:
            with pytest.raises(grpc.RpcError) as refused:
                client.reload_models()
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "admin" in refused.value.details()
        with ApplianceClient(d.target, timeout_s=30) as client:
            with pytest.raises(grpc.RpcError) as anonymous:
                client.reload_models()
            assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with ApplianceClient(d.target, timeout_s=30, api_key=admin) as client:
            assert [r.outcome for r in client.reload_models()] == ["unchanged"]


def test_sighup_reloads_the_models_folder(served, models_dir):
    daemon = DaemonProcess(served).wait_serving()
    try:
        with ApplianceClient(daemon.target, timeout_s=30) as client:
            before = client.get_model("chat").version
            put_package(models_dir / "qwen2", served, "chat")
            daemon.proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: client.get_model("chat").version != before, 60), daemon.log()[-2000:]
            assert client.get_model("chat").architecture == "qwen2"
            assert list(client.generate("chat", "hi", max_tokens=2, ignore_eos=True))[-1].completion_tokens == 2
            assert client.health() == "SERVING"
    finally:
        assert daemon.stop() == 0
    assert "reload done: chat updated" in daemon.log()
