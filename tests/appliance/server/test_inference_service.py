"""The daemon over a real loopback gRPC connection (`appliance serve` in a subprocess)."""

import grpc
import numpy as np
import pytest
import torch
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from appliance.v1 import inference_pb2 as pb
from appliance.v1 import inference_pb2_grpc


def greedy_reference(sources, models_dir, name: str, prompt: str, count: int) -> list[int]:
    """The source model's own greedy tokens in PyTorch, from the package's tokenization."""
    prompt_ids = Tokenizer.from_file(str(models_dir / name / "tokenizer.json")).encode(prompt).ids
    model = AutoModelForCausalLM.from_pretrained(sources[name]).eval()
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=count, min_new_tokens=count,
                             do_sample=False, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


def test_generate_streams_tokens_in_order_with_usage_last(client, models_dir, sources):
    chunks = list(client.generate("qwen2", "Where is my order? 我的订单", max_tokens=24, ignore_eos=True))
    assert len(chunks) >= 24  # one message per token, then the summary
    assert all(c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == "length"
    assert last.completion_tokens == 24
    ids = [t for c in chunks for t in c.token_ids]
    assert ids == greedy_reference(sources, models_dir, "qwen2", "Where is my order? 我的订单", 24)
    tokenizer = Tokenizer.from_file(str(models_dir / "qwen2" / "tokenizer.json"))
    assert last.prompt_tokens == len(tokenizer.encode("Where is my order? 我的订单").ids)
    assert "".join(c.text for c in chunks) == tokenizer.decode(ids)
    assert last.time_to_first_token_ns > 0


def test_an_optimum_decoder_streams_like_a_builder_one(client, models_dir, sources):
    chunks = list(client.generate("gpt2", "Where is my order?", max_tokens=20, ignore_eos=True))
    assert chunks[-1].completion_tokens == 20 and chunks[-1].finish_reason == "length"
    assert [t for c in chunks for t in c.token_ids] == greedy_reference(sources, models_dir, "gpt2",
                                                                        "Where is my order?", 20)


def test_greedy_is_deterministic_and_seeded_sampling_repeats(client):
    def tokens(**kw):
        return [t for c in client.generate("llama", "Refund please", max_tokens=16, ignore_eos=True, **kw)
                for t in c.token_ids]

    assert tokens() == tokens()
    assert tokens(temperature=0.9, seed=5) == tokens(temperature=0.9, seed=5)
    assert tokens(temperature=0.9, seed=5) != tokens(temperature=0.9, seed=6)


def test_unknown_model_is_not_found(client):
    with pytest.raises(grpc.RpcError) as info:
        list(client.generate("no-such-model", "hello"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in info.value.details()


@pytest.mark.parametrize("kwargs,field", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "hi", "temperature": -1.0}, "temperature"),
    ({"prompt": "hi", "top_p": 2.0}, "top_p"),
    ({"prompt": "hi", "model": ""}, "model"),
])
def test_bad_requests_are_invalid_argument_naming_the_field(daemon, kwargs, field):
    with grpc.insecure_channel(daemon.target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        request = pb.GenerateRequest(**{"model": "llama", **kwargs})
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(request, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field + ":")


def test_error_messages_never_echo_the_prompt(client):
    secret = "alice.smith@example.com " * 400  # over the context length
    with pytest.raises(grpc.RpcError) as info:
        list(client.generate("llama", secret))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "alice" not in info.value.details()


def test_wrong_task_is_failed_precondition(client):
    with pytest.raises(grpc.RpcError) as info:
        list(client.generate("minilm", "hello"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        client.embed("llama", ["hello"])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_embed_matches_questions_to_intents(client):
    intents = ["track a delivery or shipping status", "get money back for a purchase", "reset a forgotten password"]
    questions = ["Where is my parcel? It has not arrived.", "I want a refund for these shoes.",
                 "I can't log in, I forgot my password."]
    vectors = client.embed("minilm", intents + questions)
    assert vectors.shape == (6, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similarity = vectors[3:] @ vectors[:3].T
    assert similarity.argmax(axis=1).tolist() == [0, 1, 2]


def test_embed_rejects_an_empty_text_naming_its_index(client):
    with pytest.raises(grpc.RpcError) as info:
        client.embed("minilm", ["fine", ""])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("texts[1]:")


def test_list_models_reports_each_package(client):
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {"llama", "qwen2", "gpt2", "intents", "minilm"}
    assert models["intents"].task == "text-classification" and models["intents"].state == "ready"
    assert models["minilm"].task == "feature-extraction" and models["minilm"].precision == "int8"
    assert models["llama"].state == "ready" and models["llama"].context_length == 256
    assert models["llama"].execution_provider == "CPUExecutionProvider"


def test_health_is_serving_for_the_server_and_the_service(client):
    assert client.health() == "SERVING"
    assert client.health("appliance.v1.Inference") == "SERVING"


def test_reflection_lists_the_services(daemon):
    with grpc.insecure_channel(daemon.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"appliance.v1.Inference", "grpc.health.v1.Health"} <= names


def test_a_cancelled_stream_does_not_disturb_the_next(client):
    stream = client.generate("llama", "Long story", max_tokens=200, ignore_eos=True)
    for _, _chunk in zip(range(3), stream):
        pass
    stream.close()  # cancels the call
    chunks = list(client.generate("llama", "Short", max_tokens=4, ignore_eos=True))
    assert chunks[-1].completion_tokens == 4


def test_chat_messages_use_the_packages_template(client, models_dir):
    from appliance.engine.chat import ChatMessage, ChatTemplate
    from appliance.model_package import open_package

    conversation = [("system", "Be brief."), ("user", "Where is my order?")]
    chunks = list(client.generate("llama", messages=conversation, max_tokens=4, ignore_eos=True))
    manifest = open_package(models_dir / "llama")
    tokenizer = Tokenizer.from_file(str(models_dir / "llama" / "tokenizer.json"))
    rendered = ChatTemplate(manifest.chat_template).render([ChatMessage(r, c) for r, c in conversation])
    assert "<|user|>Where is my order?" in rendered and rendered.endswith("<|assistant|>")
    assert chunks[-1].prompt_tokens == len(tokenizer.encode(rendered).ids)
    same = list(client.generate("llama", rendered, max_tokens=4, ignore_eos=True))
    assert [t for c in chunks for t in c.token_ids] == [t for c in same for t in c.token_ids]


@pytest.mark.parametrize("kwargs,field", [
    ({"prompt": "hi", "messages": [("user", "hi")]}, "prompt"),
    ({"messages": [("pirate", "arr")]}, "messages[0].role"),
    ({"messages": [("user", "")]}, "messages[0].content"),
    ({"prompt": "hi", "stop": ("",)}, "stop[0]"),
    ({"prompt": "hi", "logprobs": 50}, "logprobs"),
    ({"prompt": "hi", "max_tokens": 3, "min_tokens": 5}, "min_tokens"),
])
def test_bad_chat_and_sampling_fields_are_named(client, kwargs, field):
    with pytest.raises(grpc.RpcError) as info:
        list(client.generate("llama", **kwargs))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field + ":")


def test_stop_strings_and_logprobs_over_the_wire(client):
    free = "".join(c.text for c in client.generate("qwen2", "Tell me", max_tokens=30, ignore_eos=True))
    stop = free[10:13]
    chunks = list(client.generate("qwen2", "Tell me", max_tokens=30, ignore_eos=True, stop=(stop,), logprobs=2))
    streamed = "".join(c.text for c in chunks)
    assert streamed == free[: free.find(stop)] and chunks[-1].finish_reason == "stop"
    per_token = [lp for c in chunks for lp in c.logprobs]
    assert len(per_token) == sum(len(c.token_ids) for c in chunks)
    assert all(len(top) == 2 and top[0][1] >= top[1][1] for _, top in per_token)


def test_concurrent_streams_are_batched_and_each_gets_its_own_tokens(client, daemon):
    import concurrent.futures

    from appliance.client import ApplianceClient

    prompts = [f"Question number {i}: where is parcel {i * 7}?" for i in range(8)]
    alone = [[t for c in client.generate("llama", p, max_tokens=20, ignore_eos=True) for t in c.token_ids]
             for p in prompts]

    def stream(prompt):
        with ApplianceClient(daemon.target) as own:
            return [t for c in own.generate("llama", prompt, max_tokens=20, ignore_eos=True) for t in c.token_ids]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(stream, prompts))
    assert together == alone



def test_classify_zero_shot_routes_support_questions(client):
    labels = {"delivery": "where is my parcel, shipping and tracking", "refund": "money back for a purchase",
              "account": "password reset and login problems"}
    results = client.classify("minilm", ["My package never arrived", "I want a refund for the shoes",
                                         "I cannot log in to my account"], labels)
    assert [ranked[0][0] for ranked in results] == ["delivery", "refund", "account"]
    assert all(len(ranked) == 3 and ranked[0][1] >= ranked[1][1] for ranked in results)
    top1 = client.classify("minilm", ["My package never arrived"], labels, top_k=1)
    assert len(top1[0]) == 1 and top1[0][0][0] == "delivery"


def test_classify_with_a_classifier_package_gives_its_models_probabilities(client, models_dir, sources):
    texts = ["refund please", "where is it", "I cannot log in to my account"]
    results = client.classify("intents", texts)
    tokenizer = Tokenizer.from_file(str(models_dir / "intents" / "tokenizer.json"))
    model = AutoModelForSequenceClassification.from_pretrained(sources["bert-classifier"]).eval()
    for text, ranked in zip(texts, results):
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([tokenizer.encode(text).ids])).logits[0], -1).tolist()
        expected = sorted(((model.config.id2label[i], p) for i, p in enumerate(probs)), key=lambda lp: -lp[1])
        assert [n for n, _ in ranked] == [n for n, _ in expected]  # the right label wins, and the order holds
        assert np.allclose([s for _, s in ranked], [p for _, p in expected], atol=1e-4)


@pytest.mark.parametrize("model,labels,field,code", [
    ("intents", {"a": "", "b": ""}, "labels", grpc.StatusCode.INVALID_ARGUMENT),
    ("minilm", {"only": "one"}, "labels", grpc.StatusCode.INVALID_ARGUMENT),
    ("llama", {"a": "", "b": ""}, None, grpc.StatusCode.FAILED_PRECONDITION),
])
def test_classify_refuses_what_does_not_fit(client, model, labels, field, code):
    with pytest.raises(grpc.RpcError) as info:
        client.classify(model, ["text"], labels)
    assert info.value.code() == code
    if field:
        assert info.value.details().startswith(field + ":")


def test_get_model_describes_one_package(client):
    summary = client.get_model("minilm")
    assert summary.task == "feature-extraction" and summary.state == "ready" and summary.precision == "int8"
    with pytest.raises(grpc.RpcError) as info:
        client.get_model("ghost")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
