"""Hypothesis-driven requests over every RPC of appliance.v1.Inference.

Each answer must carry the status the design maps the request to (never INTERNAL or UNKNOWN), an
INVALID_ARGUMENT must name its field, an OK answer must be well formed, and a witness stream on
another channel must keep producing exactly its reference tokens while the fuzzing runs.
"""

from __future__ import annotations

import collections
import math
import re
import threading

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.client import ApplianceClient
from appliance.v1 import inference_pb2 as pb
from appliance.v1 import inference_pb2_grpc
from tests.conftest import wait_for
from tests.reliability.conftest import SCALES, engine_clean, sized
from tests.reliability.daemons import in_process

TASKS = {"llama": "generate", "intents": "classify", "minilm": "embed"}
MAX_MESSAGE = 4 * 1024 * 1024  # gRPC's default receive limit
FIELD_NAMED = re.compile(r"^[a-z_]+(\[\d+\])?(\.[a-z_]+)?: \S")
WITNESS_PROMPT, WITNESS_TOKENS = "the witness keeps streaming", 48
C = grpc.StatusCode

# ---- strategies -----------------------------------------------------------------------------------

chars = st.characters(exclude_categories=("Cs",))  # protobuf strings cannot hold lone surrogates
small_text = st.text(chars, max_size=40)
huge_text = st.builds(lambda c, n: c * n, chars, st.sampled_from([4_000, 250_000, 1_000_001, 1_500_000]))
texts = st.one_of(st.just(""), small_text, small_text, st.text(chars, min_size=200, max_size=2_000), huge_text)
known = st.sampled_from(sorted(TASKS))



def weighted(common, rare, rare_share=0.25):
    """`common` most of the time, `rare` about `rare_share` of the time (st.one_of would pick evenly)."""
    return st.floats(0, 1).flatmap(lambda x: rare if x < rare_share else common)


models = weighted(known, st.one_of(st.sampled_from(["", "nope", "../llama", "LLAMA"]), small_text), 0.3)
floats32 = st.one_of(st.floats(width=32), st.sampled_from([0.0, -0.0, 1.0, 2.0, -2.0, 100.0, 1e38, -1e38]))
uint32 = st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 255, 256, 2**31, 2**32 - 1]))
uint64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1]))
enum_values = st.integers(-1, 6)  # every value and a few no enum has (proto3 enums are open)
stops = st.one_of(st.lists(st.text(chars, max_size=300), max_size=20),
                  st.builds(lambda s, n: [s] * n, st.text(chars, min_size=1, max_size=8),
                            st.sampled_from([17, 1_000, 5_000])))
roles = st.sampled_from(["system", "user", "assistant", "tool", "", "robot", "USER", "user\x00"])
messages = st.one_of(st.lists(st.tuples(roles, texts), max_size=4),
                     st.builds(lambda n: [("user", "hi")] * n, st.sampled_from([513, 2_000])))


def mostly(sane, wild):
    """Usually a value the server accepts (so requests get deep), sometimes anything."""
    return weighted(sane, wild)


@st.composite
def generate_requests(draw):
    request = pb.GenerateRequest(
        model=draw(models), max_tokens=draw(mostly(st.integers(0, 24), uint32)),
        temperature=draw(mostly(st.floats(0, 2), floats32)), seed=draw(uint64), ignore_eos=draw(st.booleans()),
        top_k=draw(uint32), top_p=draw(mostly(st.floats(0, 1), floats32)), min_p=draw(mostly(st.floats(0, 1), floats32)),
        repetition_penalty=draw(mostly(st.floats(0.5, 2), floats32)),
        presence_penalty=draw(mostly(st.floats(-2, 2), floats32)),
        frequency_penalty=draw(mostly(st.floats(-2, 2), floats32)),
        stop=draw(mostly(st.lists(st.text(chars, min_size=1, max_size=4), max_size=3), stops)),
        stop_token_ids=draw(mostly(st.lists(st.integers(0, 300), max_size=3), st.lists(uint32, max_size=70))),
        min_tokens=draw(mostly(st.integers(0, 2), uint32)),
        messages=[pb.ChatMessage(role=r, content=c) for r, c in draw(st.one_of(st.just([]), messages))],
    )
    if draw(st.booleans()) or not request.messages:
        request.prompt = draw(texts)
    if draw(st.booleans()):
        request.logprobs = draw(mostly(st.integers(0, 20), uint32))
    request.redaction.input = draw(mostly(st.integers(0, 3), enum_values))
    request.redaction.output = draw(mostly(st.integers(0, 3), enum_values))
    return request


@st.composite
def embed_requests(draw):
    count = draw(st.sampled_from([0, 1, 2, 3, 256, 257]))
    return pb.EmbedRequest(model=draw(models), texts=[draw(texts) for _ in range(min(count, 3))] * (count // 3 or 1)
                           if count else [], normalize=draw(st.booleans()))


@st.composite
def classify_requests(draw):
    n_texts = draw(st.sampled_from([0, 1, 2, 3, 300]))
    labels = draw(st.one_of(st.just([]), st.lists(st.tuples(small_text, texts), max_size=4),
                            st.lists(st.tuples(st.text(chars, min_size=1, max_size=10), small_text), min_size=2,
                                     max_size=4),
                            st.builds(lambda n: [("l", "d")] * n, st.sampled_from([257]))))
    return pb.ClassifyRequest(model=draw(models), texts=[draw(texts)] * n_texts, top_k=draw(mostly(st.integers(0, 3), uint32)),
                              labels=[pb.Label(name=n, description=d) for n, d in labels])


redact_requests = st.builds(pb.RedactRequest, text=texts, operator=enum_values)
get_model_requests = st.builds(pb.GetModelRequest, name=models)

# ---- the oracle -----------------------------------------------------------------------------------


def model_status(name: str, rpc: str):
    """The status the model field alone decides, or None where the model can take this RPC."""
    if not name:
        return C.INVALID_ARGUMENT
    if name not in TASKS:
        return C.NOT_FOUND
    fits = {"Generate": {"generate"}, "Embed": {"embed"}, "Classify": {"classify", "embed"}}[rpc]
    return None if TASKS[name] in fits else C.FAILED_PRECONDITION


def check_answer(rpc: str, request, code: grpc.StatusCode, details: str, model: str | None) -> None:
    assert code not in (C.INTERNAL, C.UNKNOWN), f"{rpc}: {code.name} {details!r}"
    if request.ByteSize() > MAX_MESSAGE:
        assert code is C.RESOURCE_EXHAUSTED, (rpc, code)
        return
    decided = model_status(model, rpc) if model is not None else None
    if decided is not None:
        assert code is decided, (rpc, model, code, details)
    else:
        assert code in (C.OK, C.INVALID_ARGUMENT), (rpc, code, details)
    if code is C.INVALID_ARGUMENT:
        assert FIELD_NAMED.match(details), f"{rpc}: INVALID_ARGUMENT does not name a field: {details!r}"


class Fuzzer:
    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.seen: collections.Counter = collections.Counter()

    def call(self, rpc: str, request):
        try:
            if rpc == "Generate":
                answer = list(self.stub.Generate(request, timeout=120))
            else:
                answer = getattr(self.stub, rpc)(request, timeout=120)
            code, details = C.OK, ""
        except grpc.RpcError as exc:
            answer, code, details = None, exc.code(), exc.details() or ""
        self.seen[(rpc, code.name)] += 1
        return answer, code, details


def check_generate(messages: list, request) -> None:
    assert messages and messages[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in messages[:-1])
    usage = messages[-1].usage
    ids = [t for m in messages for t in m.token_ids]
    if request.redaction.output in (0, pb.OUTPUT_POLICY_OFF):
        assert len(ids) == usage.completion_tokens
    assert usage.prompt_tokens >= 1 and usage.completion_tokens >= 1
    if request.max_tokens:
        assert usage.completion_tokens <= request.max_tokens


def check_embed(response, request) -> None:
    assert len(response.embeddings) == len(request.texts)
    for e in response.embeddings:
        values = list(e.values)
        assert values and all(math.isfinite(v) for v in values)
        if request.normalize:
            assert abs(math.sqrt(sum(v * v for v in values)) - 1) < 1e-3


def check_classify(response, request) -> None:
    assert len(response.results) == len(request.texts)
    for result in response.results:
        scores = [s.score for s in result.labels]
        assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)
        if request.top_k:
            assert len(scores) <= request.top_k


def check_redact(response, request) -> None:
    previous = 0
    for e in response.entities:
        assert previous <= e.start < e.end <= len(request.text)
        previous = e.start


class Witness(threading.Thread):
    """Streams one greedy request over and over on its own channel; every run must match."""

    def __init__(self, target: str, reference: tuple[int, ...]):
        super().__init__(daemon=True)
        self.target, self.reference = target, reference
        self.stop, self.runs, self.failures = threading.Event(), 0, []

    def run(self) -> None:
        with ApplianceClient(self.target, timeout_s=120) as client:
            while not self.stop.is_set():
                try:
                    chunks = list(client.generate("llama", WITNESS_PROMPT, max_tokens=WITNESS_TOKENS, ignore_eos=True))
                    tokens = tuple(t for c in chunks for t in c.token_ids)
                    if tokens != self.reference or chunks[-1].finish_reason != "length":
                        self.failures.append(f"run {self.runs}: tokens differ")
                except grpc.RpcError as exc:
                    self.failures.append(f"run {self.runs}: {exc.code().name}")
                self.runs += 1


@pytest.fixture(scope="module")
def fuzzed(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    with in_process(models_dir, root, server={"default_max_tokens": 16, "max_queue": 8},
                    engine={"max_batch": 4}) as running:
        yield running


@pytest.mark.parametrize("scale", SCALES)
def test_fuzz_every_rpc_answers_the_mapped_status(fuzzed, figures, scale):
    per_rpc = sized(scale, 40, 300)
    with ApplianceClient(fuzzed.target, timeout_s=120) as client:
        reference = tuple(t for c in client.generate("llama", WITNESS_PROMPT, max_tokens=WITNESS_TOKENS,
                                                      ignore_eos=True) for t in c.token_ids)
    assert len(reference) == WITNESS_TOKENS
    fuzzer, witness = Fuzzer(fuzzed.target), Witness(fuzzed.target, reference)
    witness.start()
    examples = collections.Counter()
    checks = {"Generate": check_generate, "Embed": check_embed, "Classify": check_classify,
              "Redact": check_redact, "GetModel": lambda r, q: None, "ListModels": lambda r, q: None}
    model_of = {"Generate": lambda r: r.model, "Embed": lambda r: r.model, "Classify": lambda r: r.model,
                "Redact": lambda r: None, "ListModels": lambda r: None, "GetModel": lambda r: r.name}

    def fuzz(rpc, strategy, count):
        @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(strategy)
        def one(request):
            examples[rpc] += 1
            answer, code, details = fuzzer.call(rpc, request)
            model = model_of[rpc](request)
            if rpc == "GetModel":
                expected = C.INVALID_ARGUMENT if not model else (C.OK if model in TASKS else C.NOT_FOUND)
                assert code is expected, (model, code, details)
            else:
                check_answer(rpc, request, code, details, model)
            if code is C.OK:
                checks[rpc](answer, request)
                if rpc == "GetModel":
                    assert answer.model.name == model and answer.model.state == pb.MODEL_STATE_READY
                if rpc == "ListModels":
                    assert sorted(m.name for m in answer.models) == sorted(TASKS)

        one()

    try:
        fuzz("Generate", generate_requests(), 2 * per_rpc)
        fuzz("Embed", embed_requests(), per_rpc)
        fuzz("Classify", classify_requests(), per_rpc)
        fuzz("Redact", redact_requests, per_rpc)
        fuzz("GetModel", get_model_requests, per_rpc)
        fuzz("ListModels", st.just(pb.ListModelsRequest()), 1)
    finally:
        witness.stop.set()
        witness.join(120)

    registry, service = fuzzed.daemon.registry, fuzzed.daemon.service
    clean = wait_for(lambda: engine_clean(registry.get("llama"))[0] and service.active_streams == 0, 30)
    with ApplianceClient(fuzzed.target, timeout_s=60) as client:
        healthy = client.health() == "SERVING" and bool(list(client.generate("llama", "still here", max_tokens=2)))
    statuses = collections.Counter(code for (_, code) in fuzzer.seen.elements())
    bad = statuses["INTERNAL"] + statuses["UNKNOWN"]
    least = {rpc: n for rpc, n in examples.items()}
    enough = all(least.get(rpc, 0) >= (1 if rpc == "ListModels" else per_rpc // 2) for rpc in checks)
    figures.record("fuzz examples per RPC", " ".join(f"{k}={v}" for k, v in sorted(examples.items())),
                   f">= {per_rpc // 2} each", enough)
    figures.record("statuses seen", " ".join(f"{k}={v}" for k, v in sorted(statuses.items())), "", True)
    figures.record("INTERNAL/UNKNOWN answers", bad, "0", bad == 0)
    figures.record("witness runs / failures", f"{witness.runs}/{len(witness.failures)}", ">=1 run, 0 failures",
                   witness.runs >= 1 and not witness.failures)
    figures.record("daemon healthy and engine clean after", healthy and clean, "True", healthy and clean)
    fuzzer.channel.close()
    assert witness.runs >= 1 and not witness.failures, witness.failures[:5]
    assert enough and statuses["OK"] > 0
    assert bad == 0 and healthy and clean, engine_clean(registry.get("llama"))[1]
