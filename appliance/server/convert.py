"""Protobuf at the edge: the only module that builds or reads appliance.v1 messages."""

from __future__ import annotations

import numpy as np

from appliance import finish_reasons
from appliance.engine.chat import ChatMessage
from appliance.engine.request import TokenEvent
from appliance.engine.sampling import SamplingParams
from appliance.errors import InvalidRequest
from appliance.redact.policies import INPUT_POLICIES, OUTPUT_POLICIES
from appliance.registry import ModelState, ReloadResult, ServedModel
from appliance.server.request_limits import MAX_PROMPT_CHARS, check_prompt, check_texts
from appliance.v1 import admin_pb2
from appliance.v1 import inference_pb2 as pb

_FINISH_REASONS = {reason: pb.FinishReason.Value(name) for reason, name in finish_reasons.WIRE_NAMES.items()}
_MODEL_STATES = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}


def chat_messages(request: pb.GenerateRequest) -> list[ChatMessage] | None:
    """The request's conversation, or None for a raw prompt; exactly one must be given."""
    check_prompt(request.prompt, request.messages)
    return [ChatMessage(m.role, m.content) for m in request.messages] if request.messages else None


def generate_params(request: pb.GenerateRequest, default_max_tokens: int) -> SamplingParams:
    """Validates a GenerateRequest's sampling fields; errors name the field."""
    return SamplingParams(
        max_tokens=request.max_tokens or default_max_tokens,
        temperature=request.temperature,
        top_k=request.top_k,
        top_p=request.top_p if request.top_p > 0 else 1.0,
        min_p=request.min_p,
        repetition_penalty=request.repetition_penalty or 1.0,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        seed=request.seed,
        stop=tuple(request.stop),
        stop_token_ids=tuple(request.stop_token_ids),
        min_tokens=request.min_tokens,
        ignore_eos=request.ignore_eos,
        logprobs=request.logprobs if request.HasField("logprobs") else None,
    )


# Wire enum -> policy name; appliance.v1 spells each name as INPUT_POLICY_<NAME> / OUTPUT_POLICY_<NAME>.
_INPUT_POLICIES = {pb.InputPolicy.Value(f"INPUT_POLICY_{name.upper()}"): name for name in INPUT_POLICIES}
_OUTPUT_POLICIES = {pb.OutputPolicy.Value(f"OUTPUT_POLICY_{name.upper()}"): name for name in OUTPUT_POLICIES}
_OPERATORS = {pb.REDACT_OPERATOR_UNSPECIFIED: "replace", pb.REDACT_OPERATOR_MASK: "mask",
              pb.REDACT_OPERATOR_PSEUDONYMIZE: "pseudonymize"}


def redaction_policies(request: pb.GenerateRequest) -> tuple[str | None, str | None]:
    """The request's (input, output) policy names; None where it leaves the server's default."""
    options = request.redaction
    for field, value, known in (("redaction.input", options.input, _INPUT_POLICIES),
                                ("redaction.output", options.output, _OUTPUT_POLICIES)):
        if value and value not in known:
            raise InvalidRequest(field, f"unknown policy {value}")
    return _INPUT_POLICIES.get(options.input), _OUTPUT_POLICIES.get(options.output)


def redact_request(request: pb.RedactRequest) -> tuple[str, str]:
    """(text, operator name) of a RedactRequest."""
    if len(request.text) > MAX_PROMPT_CHARS:
        raise InvalidRequest("text", f"is longer than {MAX_PROMPT_CHARS} characters")
    if request.operator not in _OPERATORS:
        raise InvalidRequest("operator", f"unknown operator {request.operator}")
    return request.text, _OPERATORS[request.operator]


def redact_response(result) -> pb.RedactResponse:
    return pb.RedactResponse(text=result.text, entities=[
        pb.Entity(type=e.type, start=e.start, end=e.end, score=e.score) for e in result.entities])


def generate_response(event: TokenEvent, text: str, hide_tokens: bool = False,
                      redactions: dict[tuple[str, str], int] | None = None,
                      model_version: str = "") -> pb.GenerateResponse:
    """One stream message: `text` is the event's text after the output redaction stage."""
    response = pb.GenerateResponse(text=text)
    if not hide_tokens:
        response.token_ids.extend(event.token_ids)
        for logprob, top in event.logprobs:
            response.logprobs.append(pb.GeneratedTokenLogprobs(
                logprob=logprob, top=[pb.TokenLogprob(token_id=t, logprob=lp) for t, lp in top]))
    for (direction, entity_type), count in sorted((redactions or {}).items()):
        response.redactions.append(pb.EntityCount(type=entity_type, direction=direction, count=count))
    if event.finish_reason is not None:
        response.finish_reason = _FINISH_REASONS[event.finish_reason]
        response.usage.prompt_tokens = event.prompt_tokens
        response.usage.completion_tokens = event.completion_tokens
        response.model_version = model_version
        if event.timings is not None:
            response.timings.queue_ns = event.timings.queue_ns
            response.timings.time_to_first_token_ns = event.timings.time_to_first_token_ns
            response.timings.decode_ns = event.timings.decode_ns
    return response


def classify_request(request: pb.ClassifyRequest) -> tuple[list[str], list[tuple[str, str]], int]:
    """(texts, zero-shot labels as (name, description), top_k) of a ClassifyRequest."""
    check_texts([label.name + label.description for label in request.labels], "labels")
    return check_texts(request.texts), [(label.name, label.description) for label in request.labels], request.top_k


def classify_response(ranked: list[list[tuple[str, float]]], top_k: int, prompt_tokens: int) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(prompt_tokens=prompt_tokens, results=[
        pb.Classification(labels=[pb.LabelScore(label=name, score=score) for name, score in row[: top_k or None]])
        for row in ranked])


def get_model_response(model: ServedModel) -> pb.GetModelResponse:
    return pb.GetModelResponse(model=model_info(model))


def embed_response(vectors: np.ndarray, prompt_tokens: int) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        embeddings=[pb.Embedding(values=row.tolist()) for row in vectors],
        prompt_tokens=prompt_tokens,
    )


def model_info(model: ServedModel) -> pb.ModelInfo:
    info = pb.ModelInfo(name=model.name, state=_MODEL_STATES[model.state], error=model.error,
                        execution_provider=model.provider, version=model.version,
                        reload_error=model.reload_error)
    if model.manifest is not None:
        info.task = model.manifest.task
        info.architecture = model.manifest.architecture
        info.precision = model.manifest.precision
        info.context_length = model.manifest.context_length
    if model.engine is not None:
        cache = model.engine.prefix_cache_stats()
        info.prefix_cache.CopyFrom(pb.PrefixCache(capacity_bytes=cache.capacity_bytes, held_bytes=cache.held_bytes,
                                                  hit_rate=cache.hit_rate, lookups=cache.lookups))
    report = model.batch_invariance
    if report is not None:
        info.batch_invariance.CopyFrom(pb.BatchInvariance(holds=report.holds, row_quantum=report.row_quantum,
                                                          padding_cost=report.padding_cost, note=report.note))
    return info


def list_models_response(models: list[ServedModel]) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(models=[model_info(m) for m in models])


def reload_response(results: list[ReloadResult]) -> admin_pb2.ReloadModelsResponse:
    return admin_pb2.ReloadModelsResponse(models=[
        admin_pb2.ModelReload(name=r.name, outcome=admin_pb2.ReloadOutcome.Value(f"RELOAD_OUTCOME_{r.outcome.name}"),
                              version=r.version, error=r.error)
        for r in results
    ])
