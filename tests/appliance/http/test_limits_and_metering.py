"""Rate, token quota, concurrency and queue refusals, usage rows and metrics: the same whichever
door a request comes in by; a client that disconnects mid-stream cancels its request."""

import datetime
import http.client
import json
from urllib.parse import urlsplit

import openai
import pytest

from appliance.client import ApplianceClient
from appliance.errors import QueueFull
from appliance.server.usage import read_usage
from tests.appliance.http.test_raw_http import error_of, post
from tests.conftest import wait_for

CHAT = [{"role": "user", "content": "hi"}]


def sdk(served, token):
    return openai.OpenAI(base_url=served.base_url, api_key=served.tokens[token], max_retries=0, timeout=60)


def open_stream(served, token, max_tokens=100_000):
    """A raw HTTP streaming request whose events the caller reads line by line."""
    address = urlsplit(served.base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    connection.request("POST", address.path + "/completions", json.dumps({
        "model": "llama", "prompt": "Tell me everything", "max_tokens": max_tokens, "ignore_eos": True,
        "stream": True}), {"Authorization": f"Bearer {served.tokens[token]}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    return connection, response


def usage_row(served, token):
    served.daemon.usage.flush()
    day = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    rows = [r for r in read_usage(served.state / "usage.db", day) if r[1] == served.key_id(token)]
    return rows[0] if rows else None


def test_a_spent_request_rate_is_429_with_retry_after(served):
    with sdk(served, "once") as client:
        client.completions.create(model="llama", prompt="hi", max_tokens=2)
        with pytest.raises(openai.RateLimitError) as info:
            client.completions.create(model="llama", prompt="hi", max_tokens=2)
    assert info.value.response.headers["Retry-After"].isdigit()
    assert info.value.body["type"] == "rate_limit_error"


def test_a_spent_token_quota_is_429(served):
    with sdk(served, "tiny-quota") as client:
        client.completions.create(model="llama", prompt="hi", max_tokens=4)  # admitted on credit left
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="llama", prompt="hi", max_tokens=4)


def test_a_full_engine_is_429(served, monkeypatch):
    def full():
        raise QueueFull("8 requests run and 64 wait already")

    monkeypatch.setattr(served.daemon.registry.get("qwen2").engine, "check_room", full)
    status, error = error_of(post(served, "/completions", {"model": "qwen2", "prompt": "hi"}))
    assert status == 429 and error["code"] == "rate_limit_exceeded"


def test_the_concurrency_limit_counts_streams_of_both_doors(served):
    connection, response = open_stream(served, "single", max_tokens=200)
    try:
        assert response.readline().startswith(b"data: ")
        status, _ = error_of(post(served, "/completions", {"model": "llama", "prompt": "hi"}, token="single"))
        assert status == 429
        with ApplianceClient(served.grpc_target, api_key=served.tokens["single"], timeout_s=60) as grpc_client:
            with pytest.raises(Exception, match="RESOURCE_EXHAUSTED"):
                list(grpc_client.generate("llama", "hi", max_tokens=2))
        assert response.read().endswith(b"data: [DONE]\n\n")
    finally:
        connection.close()
    with sdk(served, "single") as client:
        assert client.completions.create(model="llama", prompt="hi", max_tokens=2).usage.completion_tokens >= 1


def test_usage_rows_are_the_same_whichever_door(served):
    with ApplianceClient(served.grpc_target, api_key=served.tokens["metered"], timeout_s=60) as grpc_client:
        list(grpc_client.generate("llama", "Count me", max_tokens=4, ignore_eos=True))
    after_grpc = usage_row(served, "metered")
    with sdk(served, "metered") as client:
        client.completions.create(model="llama", prompt="Count me", max_tokens=4, temperature=0,
                                  extra_body={"ignore_eos": True})
    after_http = usage_row(served, "metered")
    # day, key, model, then requests, prompt and completion tokens, cancelled, rejected: doubled.
    assert after_http[:3] == after_grpc[:3]
    assert list(after_http[3:]) == [2 * n for n in after_grpc[3:]] and after_grpc[3:6] == (1, after_grpc[4], 4)
    with sdk(served, "metered") as client:
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="llama", prompt="hi", temperature=-1)
    assert usage_row(served, "metered")[7] == 1  # rejected, as on gRPC


def test_a_client_that_disconnects_cancels_its_request(served):
    engine = served.daemon.registry.get("llama").engine
    connection, response = open_stream(served, "cancel")
    for _ in range(3):
        assert response.readline().startswith(b"data: ")
        response.readline()
    connection.sock.shutdown(2)
    connection.close()
    core = served.daemon.service
    assert wait_for(lambda: engine.stats().running == 0 and not engine.busy and core.active_streams == 0
                    and core.auth.active(served.key_id("cancel")) == 0, 30)
    assert wait_for(lambda: (usage_row(served, "cancel") or [0] * 8)[6] == 1, 10)  # counted cancelled
    row = usage_row(served, "cancel")
    assert row[3] == 1 and row[5] >= 3


def test_metrics_and_access_logs_name_the_door(served, caplog):
    with ApplianceClient(served.grpc_target, api_key=served.tokens["full"], timeout_s=60) as grpc_client:
        list(grpc_client.generate("llama", "hi", max_tokens=2))
    with caplog.at_level("INFO", logger="appliance.access"), sdk(served, "full") as client:
        client.chat.completions.create(model="llama", messages=CHAT, max_tokens=2, user="alice@example.com")
        assert wait_for(lambda: any(getattr(r, "fields", {}).get("api") == "openai" for r in caplog.records))
    text = served.metrics()
    assert 'appliance_requests_total{api="openai",model="llama",rpc="chat.completions",status="OK"}' in text
    assert 'appliance_requests_total{api="grpc",model="llama",rpc="Generate",status="OK"}' in text
    assert 'appliance_time_to_first_token_seconds_count{api="openai",model="llama"}' in text
    logged = " ".join(r.getMessage() + json.dumps(getattr(r, "fields", {})) for r in caplog.records)
    assert "alice" not in logged and "alice" not in text  # `user` is never logged
