"""What the host's GPU says through nvidia-smi: one query for the exporter and the daemon."""

import os
import stat

from appliance.engine.providers import query_gpu


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
