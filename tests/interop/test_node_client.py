"""A client from another gRPC implementation (Node.js grpc-js, built from the .proto files)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node_client(tmp_path_factory):
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js and npm are not installed on this host")
    work = tmp_path_factory.mktemp("node-client")
    for name in ("package.json", "generate.js"):
        shutil.copy(NODE_DIR / name, work / name)
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=work,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return work


def test_node_client_streams_a_generation(node_client, daemon):
    done = subprocess.run(["node", "generate.js", str(REPO / "proto"), daemon.target, "llama", "Hello from Node", "12"],
                          cwd=node_client, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    assert sum(len(m["token_ids"]) for m in messages) == 12
    assert messages[-1]["finish_reason"] == "FINISH_REASON_LENGTH"
    assert messages[-1]["usage"]["completion_tokens"] == 12
    assert all(m["finish_reason"] == "FINISH_REASON_UNSPECIFIED" for m in messages[:-1])


def test_node_client_gets_not_found_for_an_unknown_model(node_client, daemon):
    done = subprocess.run(["node", "generate.js", str(REPO / "proto"), daemon.target, "missing", "Hi", "3"],
                          cwd=node_client, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("5 ")  # grpc status 5 is NOT_FOUND
