"""Embed and Classify over gRPC: over-long texts refused, size limits, work stopped with the call."""

import shutil
import time

import grpc
import pytest

from appliance.client import ApplianceClient
from appliance.server.config import load_config
from appliance.v1 import inference_pb2 as pb
from appliance.v1 import inference_pb2_grpc
from tests.conftest import InProcessDaemon, free_port, wait_for

BATCH_TOKENS = 64  # a few short texts per sub-batch, so a call has many
RUN_DELAY_S = 0.05


@pytest.fixture(scope="module")
def running(models_dir, tmp_path_factory):
    served = tmp_path_factory.mktemp("encoder-models")
    shutil.copytree(models_dir / "minilm", served / "minilm")  # the session's real MiniLM, not a fresh export
    config = load_config(None, {"server": {"models": served, "listen": f"127.0.0.1:{free_port()}"},
                                "engine": {"encoder_batch_tokens": BATCH_TOKENS}})
    with InProcessDaemon(config) as daemon:
        yield daemon


@pytest.fixture
def runs(running):
    """Counts the encoder's sub-batch runs, each slowed so a call lasts seconds."""
    encoder = running.daemon.registry.get("minilm").embedder.encoder
    run, counted = encoder.run, []

    def slow_run(*args, **kwargs):
        counted.append(time.monotonic())
        time.sleep(RUN_DELAY_S)
        return run(*args, **kwargs)

    encoder.run = slow_run
    yield counted
    encoder.run = run


def code_and_details(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


def embed_request(count: int) -> pb.EmbedRequest:
    return pb.EmbedRequest(model="minilm", texts=[f"where is parcel {i} of my order" for i in range(count)])


def test_a_text_longer_than_the_model_reads_is_refused_not_cut(running):
    with ApplianceClient(running.target, timeout_s=60) as client:
        code, details = code_and_details(lambda: client.embed("minilm", ["fits", "order " * 600]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("texts[1]:") and "512" in details and "order" not in details
        code, details = code_and_details(lambda: client.classify("minilm", ["fits"], {"a": "order " * 600, "b": "x"}))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("labels[0]:")


def test_texts_over_the_size_limit_are_refused_before_tokenizing(running):
    with ApplianceClient(running.target, timeout_s=60) as client:
        code, details = code_and_details(lambda: client.embed("minilm", ["a" * 600_000, "b" * 600_000]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("texts:")
        code, details = code_and_details(lambda: client.embed("minilm", ["x"] * 257))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("texts:") and "256" in details


def stops_early(runs: list, total: int) -> bool:
    """The runs stopped growing, well short of the call's `total` sub-batches."""
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        settled = len(runs)
        time.sleep(10 * RUN_DELAY_S)
        if len(runs) == settled:
            return settled < total // 2
    return False


def test_an_embed_past_its_deadline_stops_between_sub_batches(running, runs):
    request = embed_request(128)  # 9 tokens each: 7 texts per sub-batch, 19 sub-batches
    with grpc.insecure_channel(running.target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        code, _ = code_and_details(lambda: stub.Embed(request, timeout=0.3))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stops_early(runs, 19), len(runs)


def test_an_embed_whose_client_goes_away_stops_between_sub_batches(running, runs):
    with grpc.insecure_channel(running.target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        future = stub.Embed.future(embed_request(128), timeout=60)
        assert wait_for(lambda: len(runs) >= 2, timeout_s=30)
        future.cancel()
    assert stops_early(runs, 19), len(runs)
    with ApplianceClient(running.target, timeout_s=60) as client:  # and the model still serves
        assert client.embed("minilm", ["still here"]).shape == (1, 384)


def test_the_config_names_a_bad_encoder_budget(tmp_path):
    from appliance.errors import ConfigError

    with pytest.raises(ConfigError, match="engine.encoder_batch_tokens"):
        load_config(None, {"server": {"models": tmp_path}, "engine": {"encoder_batch_tokens": 4}})
