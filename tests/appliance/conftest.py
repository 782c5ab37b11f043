"""Fixtures the daemon's doors share (gRPC under server/, HTTP under http/)."""

import shutil

import pytest

from appliance.server.config import load_config
from tests.conftest import InProcessDaemon, free_port


@pytest.fixture(scope="module")
def redacting_daemon(models_dir, tmp_path_factory):
    """The llama package served with redaction on by default (pseudonymize in, redact out) and
    restore allowed, on both doors; tests script its model (tests/appliance/scripted_model.py)."""
    served = tmp_path_factory.mktemp("redaction-models")
    shutil.copytree(models_dir / "llama", served / "llama")
    config = load_config(None, {
        "server": {"models": served, "listen": f"127.0.0.1:{free_port()}"},
        "http": {"listen": "127.0.0.1:0"},
        "redaction": {"input": "pseudonymize", "output": "redact", "allowed_input": ("redact", "pseudonymize"),
                      "allowed_output": ("redact", "restore")},
    })
    with InProcessDaemon(config) as running:
        yield running
