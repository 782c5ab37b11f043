"""The daemon benchmark's own measuring parts: the 1,000-token prompt and the CPU clock."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from benchmarks.redact import bench_redact_daemon as bench  # noqa: E402


def test_the_support_prompt_is_exactly_the_asked_tokens_of_names_set_text(tmp_path):
    tiny_models = pytest.importorskip("export.tiny_models")
    tokenizer = tiny_models.make_tokenizer().backend_tokenizer
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    prompt = bench.support_prompt(tmp_path, tokens=300)
    assert len(tokenizer.encode(prompt).ids) == 300
    assert "客户" in bench.support_prompt(tmp_path, tokens=2000)  # Chinese messages too, so both models run


def test_the_daemon_cpu_clock_counts_work_not_waiting():
    import os
    import time

    before = bench.daemon_cpu_s(os.getpid())
    time.sleep(0.05)
    slept = bench.daemon_cpu_s(os.getpid()) - before
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    worked = bench.daemon_cpu_s(os.getpid()) - before - slept
    assert slept < 0.02 and worked >= 0.04
