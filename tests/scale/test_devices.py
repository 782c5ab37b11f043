"""[runtime] devices: one engine per listed device (times [engine] replicas), each session created
on its device. On CPU: config errors, each replica's provider options at the create_session seam,
cpu entries splitting the cores, device-bound CUDA copies over a stand-in runtime; the two-GPU run
is marked gpu."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading

import numpy as np
import onnxruntime
import pytest
from prometheus_client import generate_latest

from appliance.engine import package_session
from appliance.engine.device_buffers import CpuDevice, CudaDevice
from appliance.engine.providers import RuntimeOptions, provider_list
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import SchedulerConfig
from appliance.errors import ConfigError
from appliance.registry import ModelRegistry
from appliance.registry.loading import replica_runtimes
from appliance.server.config import load_config
from appliance.server.metrics import Metrics
from tests.appliance.server.test_hot_reload import put_package

CUDA, TENSORRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


def _config(tmp_path, runtime: str, engine: str = ""):
    path = tmp_path / "appliance.toml"
    path.write_text(f"[runtime]\n{runtime}\n[engine]\n{engine}\n")
    return load_config(path)


def test_devices_are_parsed_and_bad_entries_are_one_line_errors(tmp_path):
    config = _config(tmp_path, 'providers = ["cuda", "cpu"]\ndevices = ["cuda:0", "cuda:1", "cpu"]')
    assert config.runtime.devices == ("cuda:0", "cuda:1", "cpu")
    for devices, message in ((['"gpu0"'], 'config runtime.devices: "gpu0" is not cpu or cuda:N'),
                             (['"cuda:-1"'], 'config runtime.devices: "cuda:-1" is not cpu or cuda:N'),
                             (['"cuda:"'], 'config runtime.devices: "cuda:" is not cpu or cuda:N'),
                             (['"cuda:1"', '"cuda:1"'], "config runtime.devices: cuda:1 is listed twice")):
        with pytest.raises(ConfigError) as error:
            _config(tmp_path, f'providers = ["cuda", "cpu"]\ndevices = [{", ".join(devices)}]')
        assert str(error.value) == message
    with pytest.raises(ConfigError, match=r"^config runtime.devices: cuda:0 needs providers to include cuda or "
                                          r"tensorrt$"):
        _config(tmp_path, 'providers = ["cpu"]\ndevices = ["cuda:0"]')


def test_gpu_providers_get_the_replicas_device(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    options = RuntimeOptions(("tensorrt", "cuda", "cpu"), device_id=1)
    assert provider_list(options) == [(TENSORRT, {"device_id": "1"}), (CUDA, {"device_id": "1"}), CPU]
    assert provider_list(options, cuda_graph=True)[1] == (CUDA, {"device_id": "1", "enable_cuda_graph": "1"})
    assert provider_list(RuntimeOptions(("cpu",))) == [CPU]


def test_replica_i_runs_on_device_i_and_each_device_gets_replicas_engines():
    runtime = RuntimeOptions(("cuda", "cpu"), intra_op_threads=0)
    placed = replica_runtimes(runtime, 2, ("cuda:0", "cuda:1"))
    assert [options.device_id for options in placed] == [0, 1, 0, 1]
    assert all(options.providers == ("cuda", "cpu") for options in placed)
    assert replica_runtimes(runtime, 1, ()) == [runtime]


def test_cpu_entries_are_cpu_replicas_that_split_the_cores():
    runtime = RuntimeOptions(("cuda", "cpu"), intra_op_threads=0)
    on_gpu, on_cpu = replica_runtimes(runtime, 1, ("cuda:0", "cpu"))
    assert (on_gpu.providers, on_cpu.providers) == (("cuda", "cpu"), ("cpu",))
    split = max(1, len(os.sched_getaffinity(0)) // 2)
    assert on_gpu.intra_op_threads == on_cpu.intra_op_threads == split
    both = replica_runtimes(RuntimeOptions(intra_op_threads=0), 2, ("cpu",))
    assert [options.intra_op_threads for options in both] == [split, split]


class _StandInCuda:
    """The CUDA runtime's calls, with a current device per host thread as the real one keeps."""

    def __init__(self):
        self._current = threading.local()
        self.calls: list[tuple[str, int]] = []  # (call, device current on the calling thread)

    def cudaSetDevice(self, device):
        self._current.device = device
        return 0

    def _record(self, call):
        self.calls.append((call, getattr(self._current, "device", 0)))
        return 0

    def cudaMemcpy(self, *args):
        return self._record("cudaMemcpy")

    def cudaMemcpy2D(self, *args):
        return self._record("cudaMemcpy2D")

    def cudaMemset(self, *args):
        return self._record("cudaMemset")

    def cudaDeviceSynchronize(self):
        return self._record("cudaDeviceSynchronize")


def test_copies_for_device_1_are_issued_on_device_1_from_any_thread():
    cuda = _StandInCuda()
    second = CudaDevice(1, cuda)
    CudaDevice(0, cuda)  # made later on this thread: device 0 is current here now
    buffer = CpuDevice().allocate("ids", (2, 4), np.int64)  # host memory stands in for device memory

    def one_step():
        second.write(buffer, 0, np.arange(4))
        second.read(buffer, 0, 4)
        second.copy_block(buffer, 0, 4, 2, 1, 4)
        second.clear(buffer, 0, 2)
        second.before_run()

    one_step()
    engine_thread = threading.Thread(target=one_step)  # an engine's own thread, where nothing was set
    engine_thread.start()
    engine_thread.join()
    assert len(cuda.calls) == 10 and {device for _, device in cuda.calls} == {1}


def _spy_on_sessions(monkeypatch) -> list:
    created = []
    real = package_session.create_session

    def create_session(path, options, cuda_graph=False):
        created.append(provider_list(options, cuda_graph))
        return real(path, options, cuda_graph)
    monkeypatch.setattr(package_session, "create_session", create_session)
    return created


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_each_listed_device_gets_its_own_replica_session(tmp_path, models_dir, monkeypatch):
    """The CPU build of onnxruntime is told it has CUDA: each replica's session is asked for its own
    device (then runs on the CPU, which its device label says)."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    created = _spy_on_sessions(monkeypatch)
    models = tmp_path / "models"
    models.mkdir()
    put_package(models_dir / "llama", models, "chat")
    registry = ModelRegistry(models, RuntimeOptions(("cuda", "cpu"), intra_op_threads=1, cuda_graph="off"),
                             SchedulerConfig(max_batch=1, max_queue=4), devices=("cuda:0", "cuda:1", "cpu"))
    try:
        registry.load_all()
        model = registry.get("chat")
        assert [providers[0] for providers in created] == [(CUDA, {"device_id": "0"}), (CUDA, {"device_id": "1"}),
                                                            CPU]
        assert model.engine.devices == ("cpu", "cpu", "cpu")  # where each replica actually computes
        metrics = Metrics()
        metrics.watch_replicas(registry)
        text = generate_latest(metrics.registry).decode()
        assert 'appliance_replica_requests_total{device="cpu",model="chat",replica="2"} 0.0' in text
    finally:
        registry.close()


def _gpu_count() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    done = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=30)
    return len(done.stdout.splitlines()) if done.returncode == 0 else 0


@pytest.mark.gpu
def test_two_cuda_devices_each_run_a_replica(tmp_path, models_dir):
    if _gpu_count() < 2:
        pytest.skip("fewer than two GPUs on this host")
    models = tmp_path / "models"
    models.mkdir()
    put_package(models_dir / "llama", models, "chat")
    registry = ModelRegistry(models, RuntimeOptions(("cuda",)), SchedulerConfig(max_batch=2),
                             devices=("cuda:0", "cuda:1"))
    try:
        registry.load_all()
        model = registry.get("chat")
        assert model.engine.devices == ("cuda:0", "cuda:1")
        for index, engine in enumerate(model.engine.replicas):
            options = engine.runner.session.get_provider_options()[CUDA]
            assert int(options["device_id"]) == index

        async def both():
            async def one(i):
                events = [e async for e in model.engine.generate([5 + i, 6, 7], SamplingParams(max_tokens=8,
                                                                                               ignore_eos=True))]
                return events[-1].completion_tokens
            return await asyncio.gather(one(0), one(1))
        assert asyncio.run(both()) == [8, 8]
        assert [load.routed for load in model.engine.loads()] == [1, 1]
    finally:
        registry.close()
