"""One daemon with both doors for the HTTP tests: gRPC and the OpenAI API over loopback, with keys,
usage metering and metrics, serving tiny llama and qwen2 decoders and the real MiniLM."""

import shutil
import urllib.request

import pytest

from appliance.server.config import load_config
from appliance.server.keys import KeyRights, KeyStore
from tests.conftest import InProcessDaemon, free_port

MAX_BODY_BYTES = 64 * 1024


class Served:
    def __init__(self, running: InProcessDaemon, tokens: dict[str, str], state, metrics_port: int):
        self.running, self.daemon, self.tokens, self.state = running, running.daemon, tokens, state
        self.grpc_target = running.target
        self.base_url = f"http://{running.daemon.http_address}/v1"
        self.metrics_port = metrics_port

    def key_id(self, name: str) -> str:
        return self.tokens[name].split("_")[1]

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()


@pytest.fixture(scope="package")
def served(models_dir, tmp_path_factory) -> Served:
    root = tmp_path_factory.mktemp("http-models")
    for name in ("llama", "qwen2", "minilm"):
        shutil.copytree(models_dir / name, root / name)
    state = tmp_path_factory.mktemp("http-state")
    store = KeyStore(state / "keys.db")
    tokens = {name: store.add(name, rights)[1] for name, rights in {
        "full": KeyRights(),
        "llama-only": KeyRights(models=("llama",)),
        "once": KeyRights(requests_per_minute=1),
        "single": KeyRights(max_concurrency=1),
        "tiny-quota": KeyRights(tokens_per_minute=1),
        "no-off": KeyRights(input_policies=("redact",)),
        "metered": KeyRights(),
        "cancel": KeyRights(),
    }.items()}
    metrics_port = free_port()
    config = load_config(None, {
        "server": {"models": root, "listen": f"127.0.0.1:{free_port()}", "usage_db": state / "usage.db",
                   "metrics_listen": f"127.0.0.1:{metrics_port}"},
        "http": {"listen": "127.0.0.1:0", "max_body_bytes": MAX_BODY_BYTES},
        "auth": {"keys_db": state / "keys.db"},
    })
    with InProcessDaemon(config) as running:
        yield Served(running, tokens, state, metrics_port)


@pytest.fixture
def openai_client(served):
    import openai

    with openai.OpenAI(base_url=served.base_url, api_key=served.tokens["full"], max_retries=0, timeout=60) as client:
        yield client
