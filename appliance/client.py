"""A typed Python client for appliance.v1, used by the `appliance` commands."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from appliance import finish_reasons
from appliance.v1 import admin_pb2, admin_pb2_grpc
from appliance.v1 import inference_pb2 as pb
from appliance.v1 import inference_pb2_grpc

# Wire enum -> reason name (appliance.finish_reasons, which imports nothing of the engine).
FINISH_REASONS = {pb.FinishReason.Value(name): reason for reason, name in finish_reasons.WIRE_NAMES.items()}


@dataclass(frozen=True)
class GenerateChunk:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_ns: int = 0
    decode_ns: int = 0
    # Per token: (logprob, ((token_id, logprob), ...)) when logprobs were asked for.
    logprobs: tuple = ()
    # Last chunk: {(direction, type): count} of entities redacted.
    redactions: dict = field(default_factory=dict)
    # Last chunk: the package build that produced the stream.
    model_version: str = ""


@dataclass(frozen=True)
class RedactedText:
    text: str
    # (type, start, end, score) per entity, offsets in code points into the input.
    entities: tuple[tuple[str, int, int, float], ...]


@dataclass(frozen=True)
class ModelSummary:
    name: str
    task: str
    architecture: str
    precision: str
    context_length: int
    state: str
    error: str
    execution_provider: str
    version: str = ""
    reload_error: str = ""
    # Decoders: whether a request's tokens are the same alone or batched there (None: not measured).
    batch_invariant: Optional[bool] = None
    batch_invariance_note: str = ""


@dataclass(frozen=True)
class ModelReloadSummary:
    name: str
    outcome: str  # unchanged, added, updated, removed or failed
    version: str
    error: str


# Several appliances behind one target ("ipv4:10.0.0.5:50051,10.0.0.6:50051", or a DNS name with
# several addresses): spread calls round-robin over the ones whose health service says SERVING,
# and retry a call refused with UNAVAILABLE (a draining or vanished appliance) on another. gRPC
# retries only before the first response message arrives, so a stream is never replayed.
BALANCED_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": "appliance.v1.Inference"},
    "methodConfig": [{
        "name": [{"service": "appliance.v1.Inference"}],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})


def spreads(target: str) -> bool:
    """Whether a target may name several appliances."""
    return "," in target or target.startswith("dns:")


def open_channel(channels, target: str, root_certificates: Optional[bytes] = None,
                 client_certificate: Optional[bytes] = None, client_key: Optional[bytes] = None,
                 server_name: Optional[str] = None, balance: Optional[bool] = None):
    """A channel from `channels` (grpc or grpc.aio); `balance` defaults to `spreads(target)`."""
    options: list[tuple[str, object]] = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if spreads(target) if balance is None else balance:
        options += [("grpc.service_config", BALANCED_SERVICE_CONFIG), ("grpc.enable_retries", 1)]
    if root_certificates is None:
        return channels.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates, client_key, client_certificate)
    return channels.secure_channel(target, credentials, options=options)


def generate_request(model: str, prompt: str = "", max_tokens: int = 0, temperature: float = 0.0, seed: int = 0,
                     top_k: int = 0, top_p: float = 0.0, ignore_eos: bool = False,
                     messages: Optional[list[tuple[str, str]]] = None, stop: tuple[str, ...] = (),
                     logprobs: Optional[int] = None, redaction: tuple[str, str] = ("", ""),
                     **sampling) -> pb.GenerateRequest:
    """A GenerateRequest from keyword arguments (shared by the sync and asyncio clients)."""
    request = pb.GenerateRequest(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=temperature,
        seed=seed, top_k=top_k, top_p=top_p, ignore_eos=ignore_eos, stop=list(stop),
        messages=[pb.ChatMessage(role=role, content=content) for role, content in messages or ()],
        **sampling,
    )
    if logprobs is not None:
        request.logprobs = logprobs
    input_policy, output_policy = redaction
    if input_policy:
        request.redaction.input = pb.InputPolicy.Value(f"INPUT_POLICY_{input_policy.upper()}")
    if output_policy:
        request.redaction.output = pb.OutputPolicy.Value(f"OUTPUT_POLICY_{output_policy.upper()}")
    return request


def chunk_from(message: pb.GenerateResponse) -> GenerateChunk:
    return GenerateChunk(
        text=message.text,
        token_ids=tuple(message.token_ids),
        finish_reason=FINISH_REASONS.get(message.finish_reason),
        prompt_tokens=message.usage.prompt_tokens,
        completion_tokens=message.usage.completion_tokens,
        time_to_first_token_ns=message.timings.time_to_first_token_ns,
        decode_ns=message.timings.decode_ns,
        logprobs=tuple((lp.logprob, tuple((t.token_id, t.logprob) for t in lp.top)) for lp in message.logprobs),
        redactions={(r.direction, r.type): r.count for r in message.redactions},
        model_version=message.model_version,
    )


def _summary(m) -> ModelSummary:
    return ModelSummary(name=m.name, task=m.task, architecture=m.architecture, precision=m.precision,
                        context_length=m.context_length,
                        state=pb.ModelState.Name(m.state).removeprefix("MODEL_STATE_").lower(),
                        error=m.error, execution_provider=m.execution_provider, version=m.version,
                        reload_error=m.reload_error,
                        batch_invariant=m.batch_invariance.holds if m.HasField("batch_invariance") else None,
                        batch_invariance_note=m.batch_invariance.note)


class ApplianceClient:
    """`api_key` is sent as `authorization: Bearer ...`; `root_certificates` (PEM bytes) turns on
    TLS, and `client_certificate` / `client_key` (PEM bytes) mutual TLS. A target naming several
    appliances is load-balanced (see BALANCED_SERVICE_CONFIG); `balance` forces it on or off."""

    def __init__(self, target: str, timeout_s: Optional[float] = None, api_key: Optional[str] = None,
                 root_certificates: Optional[bytes] = None, client_certificate: Optional[bytes] = None,
                 client_key: Optional[bytes] = None, server_name: Optional[str] = None,
                 balance: Optional[bool] = None):
        self.channel = open_channel(grpc, target, root_certificates, client_certificate, client_key, server_name,
                                    balance)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.timeout_s = timeout_s
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "ApplianceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(
        self,
        model: str,
        prompt: str = "",
        max_tokens: int = 0,
        temperature: float = 0.0,
        seed: int = 0,
        top_k: int = 0,
        top_p: float = 0.0,
        ignore_eos: bool = False,
        messages: Optional[list[tuple[str, str]]] = None,
        stop: tuple[str, ...] = (),
        logprobs: Optional[int] = None,
        redaction: tuple[str, str] = ("", ""),
        **sampling,
    ) -> Iterator[GenerateChunk]:
        """Streams chunks as the server sends them; breaking out of the loop cancels the call.

        `messages` is a conversation of (role, content) pairs, used instead of `prompt`; `sampling`
        takes the other GenerateRequest fields (min_p, repetition_penalty, presence_penalty,
        frequency_penalty, stop_token_ids, min_tokens). `redaction` is (input, output) policy names
        ("off", "redact", "pseudonymize" / "off", "redact", "restore"); "" keeps the server's default.
        """
        request = generate_request(model, prompt, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                   top_k=top_k, top_p=top_p, ignore_eos=ignore_eos, messages=messages, stop=stop,
                                   logprobs=logprobs, redaction=redaction, **sampling)
        call = self.stub.Generate(request, timeout=self.timeout_s, metadata=self.metadata)
        try:
            for message in call:
                yield chunk_from(message)
        finally:
            call.cancel()

    def embed(self, model: str, texts: list[str], normalize: bool = True) -> np.ndarray:
        response = self.stub.Embed(pb.EmbedRequest(model=model, texts=texts, normalize=normalize),
                                   timeout=self.timeout_s, metadata=self.metadata)
        return np.asarray([list(e.values) for e in response.embeddings], np.float32)

    def redact(self, text: str, operator: str = "replace") -> RedactedText:
        """operator: "replace" ([TYPE]), "mask" or "pseudonymize" ([TYPE_n])."""
        value = {"replace": pb.REDACT_OPERATOR_UNSPECIFIED, "mask": pb.REDACT_OPERATOR_MASK,
                 "pseudonymize": pb.REDACT_OPERATOR_PSEUDONYMIZE}[operator]
        response = self.stub.Redact(pb.RedactRequest(text=text, operator=value), timeout=self.timeout_s,
                                    metadata=self.metadata)
        return RedactedText(response.text, tuple((e.type, e.start, e.end, e.score) for e in response.entities))

    def classify(self, model: str, texts: list[str], labels: Optional[dict[str, str]] = None,
                 top_k: int = 0) -> list[list[tuple[str, float]]]:
        """Per text, (label, score) best first. `labels` ({name: description}) makes an embedding
        package classify zero-shot; a text-classification package uses its own labels."""
        request = pb.ClassifyRequest(model=model, texts=texts, top_k=top_k, labels=[
            pb.Label(name=name, description=description) for name, description in (labels or {}).items()])
        response = self.stub.Classify(request, timeout=self.timeout_s, metadata=self.metadata)
        return [[(s.label, s.score) for s in result.labels] for result in response.results]

    def get_model(self, name: str) -> ModelSummary:
        response = self.stub.GetModel(pb.GetModelRequest(name=name), timeout=self.timeout_s, metadata=self.metadata)
        return _summary(response.model)

    def reload_models(self) -> list[ModelReloadSummary]:
        """Asks the appliance to rescan its models folder; needs an admin key. Returns when done."""
        response = self.admin.ReloadModels(admin_pb2.ReloadModelsRequest(), timeout=self.timeout_s,
                                           metadata=self.metadata)
        return [ModelReloadSummary(m.name, admin_pb2.ReloadOutcome.Name(m.outcome).removeprefix("RELOAD_OUTCOME_").lower(),
                                   m.version, m.error) for m in response.models]

    def list_models(self) -> list[ModelSummary]:
        response = self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout_s, metadata=self.metadata)
        return [_summary(m) for m in response.models]

    def health(self, service: str = "") -> str:
        """'SERVING', 'NOT_SERVING' or 'SERVICE_UNKNOWN'."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_serving(self, timeout_s: float) -> None:
        """Polls health until SERVING; raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.health() == "SERVING":
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"appliance not SERVING after {timeout_s:.0f}s")
