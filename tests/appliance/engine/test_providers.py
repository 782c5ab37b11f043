"""What the host's GPU says through nvidia-smi (one query for the exporter and the daemon), and how
sessions and the daemon's threads treat subnormal floats."""

import os
import stat
import subprocess
import sys

import pytest

from appliance.engine.providers import (IDENTITY_MODEL, RuntimeOptions, create_session,
                                        query_gpu)
from tests.conftest import REPO


def _fake_nvidia_smi(folder, script: str):
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_the_first_gpus_answer_is_read(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, 'case "$1" in --query-gpu=compute_cap) printf "9.0\\n9.0\\n";; *) exit 9;; esac\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert query_gpu("compute_cap") == "9.0"
    assert query_gpu("name") is None  # a failing query is no answer


def test_no_driver_or_no_tool_is_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert query_gpu("name") is None
    _fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9\n")
    assert query_gpu("name") is None


# float32 subnormals: 1e-20 squared is 1e-40, below the smallest normal float32 (1.2e-38). ORT
# sets a thread's mode once per process, so each case runs in a fresh interpreter.
FLUSHES_IN_THREADS = """
import asyncio, sys, threading
import numpy as np
seen = []
async def construct_daemon(models, flush):
    from appliance.server.app import Daemon
    from appliance.server.config import load_config
    Daemon(load_config(None, {{"server": {{"models": models, "listen": "127.0.0.1:0"}},
                              "runtime": {{"flush_denormals": flush}}}}))
def child():
    seen.append(bool(np.float32(1e-20) * np.float32(1e-20) == 0))
def parent():
    {before}
    child()
    grandchild = threading.Thread(target=child)
    grandchild.start()
    grandchild.join()
thread = threading.Thread(target=parent)
thread.start()
thread.join()
print(seen)
"""


def _flushes_in_a_new_thread(before: str) -> str:
    """Whether a fresh thread flushes 1e-40 to zero after `before`, and whether a thread it starts does."""
    done = subprocess.run([sys.executable, "-c", FLUSHES_IN_THREADS.format(before=before)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_thread_that_asks_flushes_subnormals_and_so_do_the_threads_it_starts():
    assert _flushes_in_a_new_thread("pass") == "[False, False]"
    assert _flushes_in_a_new_thread("from appliance.engine.providers import flush_denormals_on_this_thread; "
                                    "flush_denormals_on_this_thread()") == "[True, True]"


def test_the_serialized_identity_model_is_the_one_onnx_builds():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "flush",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert IDENTITY_MODEL == model.SerializeToString()


def test_sessions_flush_subnormals_unless_told_not_to():
    def entry(session):
        try:
            return session.get_session_options().get_session_config_entry("session.set_denormal_as_zero")
        except RuntimeError:  # ORT's answer for a key never set
            return None

    assert entry(create_session(IDENTITY_MODEL, RuntimeOptions())) == "1"
    assert entry(create_session(IDENTITY_MODEL, RuntimeOptions(flush_denormals=False))) is None


@pytest.mark.parametrize("flush", [True, False])
def test_the_daemon_flushes_subnormals_on_its_threads_as_configured(tmp_path, flush):
    (tmp_path / "models").mkdir()
    construct = f"asyncio.run(construct_daemon({str(tmp_path / 'models')!r}, {flush}))"
    assert _flushes_in_a_new_thread(construct) == f"[{flush}, {flush}]"
