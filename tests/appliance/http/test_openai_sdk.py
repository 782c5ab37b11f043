"""Every route of the HTTP door driven by the official `openai` SDK, sync and async, streaming and not."""

import asyncio

import numpy as np
import openai
import pytest

from appliance.client import ApplianceClient

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my order?"}]
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


def test_models_lists_and_retrieves_the_served_packages(openai_client):
    listed = {m.id: m for m in openai_client.models.list()}
    assert set(listed) == {"llama", "qwen2", "minilm"}
    assert listed["minilm"].model_extra["task"] == "feature-extraction"
    assert openai_client.models.retrieve("llama").id == "llama"
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("no-such-model")


def test_chat_streams_the_same_greedy_text_it_returns_whole(openai_client):
    whole = openai_client.chat.completions.create(model="llama", messages=CHAT, max_tokens=12, **GREEDY)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 12
    chunks = list(openai_client.chat.completions.create(model="llama", messages=CHAT, max_completion_tokens=12,
                                                        stream=True, stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_greedy_text_over_http_equals_greedy_text_over_grpc(openai_client, served):
    with ApplianceClient(served.grpc_target, api_key=served.tokens["full"], timeout_s=60) as grpc_client:
        by_grpc = "".join(c.text for c in grpc_client.generate("qwen2", "Where is my order? 我的订单",
                                                               max_tokens=16, ignore_eos=True))
        chat_by_grpc = "".join(c.text for c in grpc_client.generate(
            "llama", messages=[(m["role"], m["content"]) for m in CHAT], max_tokens=10, ignore_eos=True))
    by_http = openai_client.completions.create(model="qwen2", prompt="Where is my order? 我的订单", max_tokens=16,
                                               **GREEDY)
    assert by_http.choices[0].text == by_grpc
    chat = openai_client.chat.completions.create(model="llama", messages=CHAT, max_tokens=10, **GREEDY)
    assert chat.choices[0].message.content == chat_by_grpc


def test_completions_stream_and_whole_agree_and_take_a_list_of_one(openai_client):
    whole = openai_client.completions.create(model="qwen2", prompt=["Tell me"], max_tokens=10, **GREEDY)
    streamed = list(openai_client.completions.create(model="qwen2", prompt="Tell me", max_tokens=10, stream=True,
                                                     **GREEDY))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_stop_seeds_and_extra_sampling_fields(openai_client):
    free = openai_client.completions.create(model="qwen2", prompt="Tell me", max_tokens=30, **GREEDY).choices[0].text
    stop = free[10:13]
    stopped = openai_client.completions.create(model="qwen2", prompt="Tell me", max_tokens=30, stop=[stop], **GREEDY)
    assert stopped.choices[0].text == free[: free.find(stop)] and stopped.choices[0].finish_reason == "stop"

    def sampled(seed):
        return openai_client.completions.create(model="qwen2", prompt="Tell me", max_tokens=12, temperature=0.9,
                                                seed=seed, extra_body={"top_k": 20, "min_p": 0.01,
                                                                       "repetition_penalty": 1.1}).choices[0].text

    assert sampled(5) == sampled(5) != sampled(6)


def test_logprobs_come_per_token_with_their_alternatives(openai_client):
    chat = openai_client.chat.completions.create(model="llama", messages=CHAT, max_tokens=6, logprobs=True,
                                                 top_logprobs=2, **GREEDY)
    content = chat.choices[0].logprobs.content
    assert len(content) == 6 and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)
    text = openai_client.completions.create(model="qwen2", prompt="Tell me", max_tokens=5, logprobs=3, **GREEDY)
    assert len(text.choices[0].logprobs.token_logprobs) == 5
    assert all(len(top) >= 1 for top in text.choices[0].logprobs.top_logprobs)


def test_embeddings_as_floats_and_base64_match_grpc(openai_client, served):
    texts = ["track a delivery", "get money back"]
    as_floats = openai_client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    as_base64 = openai_client.embeddings.create(model="minilm", input=texts)  # the SDK asks for base64
    floats = np.array([d.embedding for d in as_floats.data])
    assert floats.shape == (2, 384) and as_floats.usage.prompt_tokens > 0
    assert np.allclose(floats, np.array([d.embedding for d in as_base64.data]), atol=1e-6)
    single = openai_client.embeddings.create(model="minilm", input="track a delivery", encoding_format="float")
    with ApplianceClient(served.grpc_target, api_key=served.tokens["full"], timeout_s=60) as grpc_client:
        assert np.allclose(floats, grpc_client.embed("minilm", texts), atol=1e-5)
        # (alone, not beside the batch: int8 activations are scaled per batch)
        assert np.allclose(single.data[0].embedding, grpc_client.embed("minilm", texts[:1])[0], atol=1e-5)


def test_async_client_streams_and_answers_whole(served):
    async def scenario():
        async with openai.AsyncOpenAI(base_url=served.base_url, api_key=served.tokens["full"], max_retries=0) as client:
            whole = await client.chat.completions.create(model="llama", messages=CHAT, max_tokens=8, **GREEDY)
            stream = await client.chat.completions.create(model="llama", messages=CHAT, max_tokens=8, stream=True,
                                                          **GREEDY)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
            text = await client.completions.create(model="qwen2", prompt="Tell me", max_tokens=4, stream=True, **GREEDY)
            pieces = [c async for c in text]
            vectors = await client.embeddings.create(model="minilm", input=["hello"])
            return whole.choices[0].message.content, streamed, pieces, vectors

    whole, streamed, pieces, vectors = asyncio.run(scenario())
    assert streamed == whole
    assert pieces[-1].choices[0].finish_reason == "length"
    assert len(vectors.data[0].embedding) == 384


@pytest.mark.parametrize("call,error,param", [
    (dict(temperature=-1.0), openai.BadRequestError, "temperature"),
    (dict(n=2), openai.BadRequestError, "n"),
    (dict(extra_body={"min_tokens": 50}), openai.BadRequestError, "min_tokens"),
    (dict(messages=[{"role": "pirate", "content": "arr"}]), openai.BadRequestError, "messages[0].role"),
    (dict(model="minilm"), openai.BadRequestError, None),
    (dict(model="no-such-model"), openai.NotFoundError, "model"),
    (dict(extra_body={"redaction": {"input": "sometimes"}}), openai.BadRequestError, "redaction.input"),
])
def test_refusals_raise_the_sdk_exception_naming_the_field(openai_client, call, error, param):
    with pytest.raises(error) as info:
        openai_client.chat.completions.create(**{"model": "llama", "messages": CHAT, "max_tokens": 4, **call})
    assert info.value.body["param"] == param
    if param and error is openai.BadRequestError:
        assert info.value.body["message"].startswith(param + ":")


def test_keys_are_checked_as_on_grpc(served):
    def chat(token, model="llama"):
        with openai.OpenAI(base_url=served.base_url, api_key=token, max_retries=0) as client:
            return client.chat.completions.create(model=model, messages=CHAT, max_tokens=2)

    with pytest.raises(openai.AuthenticationError):
        chat("apk_nope_wrong")
    with pytest.raises(openai.AuthenticationError):
        chat(served.tokens["full"] + "x")
    with pytest.raises(openai.PermissionDeniedError):
        chat(served.tokens["llama-only"], "qwen2")
    with pytest.raises(openai.PermissionDeniedError):
        with openai.OpenAI(base_url=served.base_url, api_key=served.tokens["no-off"], max_retries=0) as client:
            client.chat.completions.create(model="llama", messages=CHAT, max_tokens=2,
                                           extra_body={"redaction": {"input": "off"}})
    assert chat(served.tokens["llama-only"]).usage.completion_tokens >= 1
    with openai.OpenAI(base_url=served.base_url, api_key=served.tokens["llama-only"], max_retries=0) as client:
        assert [m.id for m in client.models.list()] == ["llama"]
        with pytest.raises(openai.PermissionDeniedError):
            client.models.retrieve("minilm")
