"""The HTTP door byte by byte: server-sent-event framing and the OpenAI error bodies and statuses."""

import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.appliance.http.conftest import MAX_BODY_BYTES


def post(served, path, body, token="full", raw=None):
    """(status, headers, body bytes) of one POST to the door."""
    address = urlsplit(served.base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {served.tokens[token]}"
    connection.request("POST", address.path + path, raw if raw is not None else json.dumps(body), headers)
    response = connection.getresponse()
    try:
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def error_of(status_headers_body):
    status, _, body = status_headers_body
    return status, json.loads(body)["error"]


def test_a_stream_is_data_events_then_the_last_chunk_usage_and_done(served):
    status, headers, body = post(served, "/chat/completions", {
        "model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    text = body.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(event.startswith("data: ") and "\n" not in event for event in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    *text_chunks, usage = chunks
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    assert [c["choices"][0]["finish_reason"] for c in text_chunks] == [None] * (len(text_chunks) - 1) + ["length"]
    assert text_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert text_chunks[-1]["redactions"] == []
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["object"] == "chat.completion.chunk"


def test_a_refusal_before_the_first_token_is_a_status_not_a_stream(served):
    status, error = error_of(post(served, "/completions", {"model": "llama", "prompt": "hi", "temperature": -1,
                                                           "stream": True}))
    assert status == 400 and error["param"] == "temperature" and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("body,raw,param", [
    (None, b"{not json", "body"),
    ({"model": "llama", "prompt": "hi", "max_tokens": "5"}, None, "max_tokens"),
    ({"model": "llama", "prompt": "hi", "stop": ["ok", 3]}, None, "stop[1]"),
    ({"model": "llama"}, None, "prompt"),
    ({"model": "llama", "prompt": ["a", "b"]}, None, "prompt"),
    ({"model": "", "prompt": "hi"}, None, "model"),
])
def test_bad_bodies_are_400_naming_the_field(served, body, raw, param):
    status, error = error_of(post(served, "/completions", body, raw=raw))
    assert status == 400 and error["param"] == param
    assert error["message"].startswith(param + ":")


def test_missing_key_body_too_large_and_unknown_path(served):
    status, error = error_of(post(served, "/completions", {"model": "llama", "prompt": "hi"}, token=None))
    assert status == 401 and error["type"] == "authentication_error" and "Bearer" in error["message"]
    status, error = error_of(post(served, "/completions", {"model": "llama", "prompt": "x" * MAX_BODY_BYTES}))
    assert status == 413 and error["code"] == "request_too_large"
    status, error = error_of(post(served, "/no-such-route", {}))
    assert status == 404 and error["type"] == "invalid_request_error"


def test_errors_never_echo_the_prompt(served):
    secret = "alice.smith@example.com " * 400  # over the model's context
    status, headers, body = post(served, "/completions", {"model": "llama", "prompt": secret})
    assert status == 400 and b"alice" not in body
    status, headers, body = post(served, "/completions", {"model": "alice.smith@example.com", "prompt": "hi"})
    assert status == 404 and b"alice" not in body


def test_too_many_messages_are_refused_by_the_chat_templates_own_check(served):
    messages = [{"role": "user", "content": "hi"}] * 513
    status, error = error_of(post(served, "/chat/completions", {"model": "llama", "messages": messages}))
    assert status == 400 and error["param"] == "messages" and "at most 512" in error["message"]
