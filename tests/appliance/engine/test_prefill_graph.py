"""A package's prefill graph: prefill runs on its session, decode on the main one, over the same KV buffers."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from appliance.engine.providers import RuntimeOptions
from appliance.engine.runners import open_decoder_runner
from appliance.errors import ConfigError, PackageError
from appliance.model_package import MANIFEST_NAME, open_package, record_files
from appliance.server.config import load_config
from export.prefill_graph import weight_bytes
from tests.appliance.engine.greedy import greedy_path

PROMPT = [5, 9, 13, 2, 7, 11, 3, 8, 6, 4]
STEPS = 8


class CountingSession:
    """Counts a session's runs; everything else goes to the session."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run_with_iobinding(self, binding, options=None):
        self.runs += 1
        return self.session.run_with_iobinding(binding, options)

    def __getattr__(self, name):
        return getattr(self.session, name)


def with_prefill_graph(package, into, listed: bool = True):
    """A copy of the fp32 `package` that carries its own graph again as prefill.onnx: two identical
    graphs, so every logit must come out as without it."""
    shutil.copytree(package, into)
    shutil.copy(into / "model.onnx", into / "prefill.onnx")
    manifest = json.loads((into / MANIFEST_NAME).read_text())
    manifest["prefill_graph"] = {"file": "prefill.onnx", "quantization": {},
                                 "weight_bytes": weight_bytes(into, "prefill.onnx")}
    manifest["files"] = {name: record.model_dump() for name, record in record_files(into).items()
                         if listed or name != "prefill.onnx"}
    (into / MANIFEST_NAME).write_text(json.dumps(manifest))
    return into


def open_runner(package, prefill_graph="auto"):
    return open_decoder_runner(package, open_package(package), RuntimeOptions(("cpu",), prefill_graph=prefill_graph),
                               max_context=len(PROMPT) + STEPS + 1)


def test_prefill_runs_on_the_prefill_graph_and_decode_reads_the_kv_it_wrote(models_dir, tmp_path):
    package = with_prefill_graph(models_dir / "llama", tmp_path / "llama-split")
    runner = open_runner(package)
    assert runner.prefill_session is not None
    runner.prefill_session, runner.session = CountingSession(runner.prefill_session), CountingSession(runner.session)
    tokens, logits = greedy_path(runner, PROMPT, STEPS)
    assert runner.prefill_session.runs == 3 and runner.session.runs == STEPS - 1  # 3 prompt chunks, 7 steps
    # The decode graph never saw the prompt: its logits are right only if the prefill graph's KV is its KV.
    single_tokens, single_logits = greedy_path(open_runner(models_dir / "llama"), PROMPT, STEPS)
    assert tokens == single_tokens
    assert np.abs(logits - single_logits).max() < 1e-5


def test_beside_a_prefill_session_both_sessions_threads_spin_within_runs_only(models_dir, tmp_path):
    # Spinning after a run, either session's threads would take the cores the other's run needs.
    def entry(session, key, default):
        try:
            return session.get_session_options().get_session_config_entry(key)
        except RuntimeError:  # never set: ORT's default
            return default

    def spinning(session):
        return (entry(session, "session.intra_op.allow_spinning", "1"),
                entry(session, "session.force_spinning_stop", "0"))

    runner = open_runner(with_prefill_graph(models_dir / "llama", tmp_path / "llama-split"))
    assert spinning(runner.prefill_session) == ("1", "1") and spinning(runner.session) == ("1", "1")
    # Alone (no prefill graph, or one turned off), the decode session spins between steps too.
    assert spinning(open_runner(models_dir / "llama").session) == ("1", "0")
    assert spinning(open_runner(tmp_path / "llama-split", prefill_graph="off").session) == ("1", "0")


def test_prefill_graph_off_never_loads_it(models_dir, tmp_path):
    package = with_prefill_graph(models_dir / "llama", tmp_path / "llama-split")
    assert open_runner(package, prefill_graph="off").prefill_session is None
    assert load_config(None, {"runtime": {"prefill_graph": "off"}}).runtime.prefill_graph == "off"
    with pytest.raises(ConfigError, match="runtime.prefill_graph"):
        load_config(None, {"runtime": {"prefill_graph": "sometimes"}})


def test_a_prefill_graph_the_manifest_does_not_list_is_refused(models_dir, tmp_path):
    package = with_prefill_graph(models_dir / "llama", tmp_path / "llama-split", listed=False)
    with pytest.raises(PackageError, match="prefill graph prefill.onnx is not listed in the manifest"):
        open_package(package)


def test_the_load_log_states_the_memory_the_prefill_graph_adds(models_dir, tmp_path, caplog):
    package = with_prefill_graph(models_dir / "llama", tmp_path / "llama-split")
    with caplog.at_level(logging.INFO, logger="appliance.engine.package_session"):
        open_runner(package)
    megabytes = open_package(package).prefill_graph.weight_bytes / 1e6
    assert f"prefill runs on prefill.onnx, up to {megabytes:.0f} MB more memory" in caplog.text
