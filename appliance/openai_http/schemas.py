"""The OpenAI API's request bodies, read into the daemon's own request types.

Pydantic checks the JSON's shape and types; the values go through the same checks as gRPC's
(SamplingParams, request_limits, the chat template's message checks), so both doors refuse the
same requests with the same field named. Fields the OpenAI API has and the appliance does not
act on are ignored, except those whose silent loss would change the answer (n, tools ...).
"""

from __future__ import annotations

import re
from typing import Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.engine.chat import ChatMessage, check_messages
from appliance.engine.sampling import SamplingParams
from appliance.errors import InvalidRequest
from appliance.redact.policies import INPUT_POLICIES, OUTPUT_POLICIES
from appliance.server.core import TextRequest
from appliance.server.request_limits import check_prompt

# OpenAI's newer name for the system role.
_ROLE_ALIASES = {"developer": "system"}
# Pydantic names union members in an error's location ("stop.list[str].0"); only fields are kept.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}
_FIELD_PART = re.compile(r"[a-z_]+")


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class RedactionOptions(_Body):
    """The extension field `redaction`: policies within what the server and the key allow."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    input: Optional[Literal[INPUT_POLICIES]] = None
    output: Optional[Literal[OUTPUT_POLICIES]] = None


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    model: str
    max_tokens: Optional[int] = None
    # Omitted, OpenAI samples at 1.0 (gRPC's default of 0 is greedy): clients expect OpenAI's.
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    n: int = 1
    user: Optional[str] = None  # accepted as the API defines it; never logged or stored
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    # The appliance's own sampling fields, at the top level as vLLM takes them (the SDKs' extra_body).
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    redaction: Optional[RedactionOptions] = None

    def params(self, max_tokens: Optional[int], default_max_tokens: int, logprobs: Optional[int]) -> SamplingParams:
        if self.n != 1:
            raise InvalidRequest("n", "only 1 choice per request is supported")
        if max_tokens is not None and max_tokens < 1:
            raise InvalidRequest("max_tokens", "must be at least 1")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=max(self.top_k, 0),  # vLLM's -1 for "off" is our 0
            top_p=1.0 if self.top_p is None else self.top_p,
            min_p=self.min_p, repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            seed=self.seed or 0, stop=stop, min_tokens=self.min_tokens, ignore_eos=self.ignore_eos,
            logprobs=logprobs,
        )

    @property
    def policies(self) -> tuple[Optional[str], Optional[str]]:
        options = self.redaction or RedactionOptions()
        return options.input, options.output

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ContentPart(_Body):
    type: str
    text: str = ""


class Message(_Body):
    role: str
    content: Union[str, list[ContentPart], None] = None

    def chat_message(self, index: int) -> ChatMessage:
        content = self.content or ""
        if isinstance(content, list):
            for number, part in enumerate(content):
                if part.type != "text":
                    raise InvalidRequest(f"messages[{index}].content[{number}].type", "only text parts are supported")
            content = "".join(part.text for part in content)
        return ChatMessage(_ROLE_ALIASES.get(self.role, self.role), content)


class ChatRequest(_Generation):
    messages: list[Message]
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    tools: Optional[list] = None
    response_format: Optional[dict] = None

    def text_request(self, default_max_tokens: int) -> TextRequest:
        if self.tools:
            raise InvalidRequest("tools", "tool calls are not supported")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise InvalidRequest("response_format", "only type 'text' is supported")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs", "needs logprobs: true")
        messages = [m.chat_message(i) for i, m in enumerate(self.messages)]
        check_messages(messages)
        check_prompt("", messages)
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return TextRequest("", messages, self.params(max_tokens, default_max_tokens, logprobs), *self.policies)


class CompletionRequest(_Generation):
    prompt: Union[str, list[str]]
    logprobs: Optional[int] = None
    echo: bool = False

    def text_request(self, default_max_tokens: int) -> TextRequest:
        if self.echo:
            raise InvalidRequest("echo", "is not supported")
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise InvalidRequest("prompt", "a list must hold exactly one prompt")
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        check_prompt(prompt, None)
        params = self.params(self.max_tokens, default_max_tokens, self.logprobs)
        return TextRequest(prompt, None, params, *self.policies)


class EmbeddingRequest(_Body):
    model: str
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None

    @property
    def texts(self) -> list[str]:
        if self.dimensions is not None:
            raise InvalidRequest("dimensions", "is not supported; the model's own size is returned")
        return [self.input] if isinstance(self.input, str) else self.input


Body = TypeVar("Body", bound=_Body)


def parse(kind: type[Body], raw: bytes) -> Body:
    """The body as `kind`; InvalidRequest naming the first field at fault (never its value)."""
    try:
        return kind.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        if errors[0]["type"] == "json_invalid":
            raise InvalidRequest("body", "is not valid JSON") from None
        # A union field fails once per member ("stop" as a string, "stop[1]" in a list): the
        # deepest of the first field's errors says most.
        field = errors[0]["loc"][:1]
        worst = max((e for e in errors if e["loc"][:1] == field), key=lambda e: len(e["loc"]))
        raise InvalidRequest(_field_name(worst["loc"]), worst["msg"].lower()) from None


def _field_name(loc: tuple) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif _FIELD_PART.fullmatch(part) and part not in _TYPE_TAGS:
            name += f".{part}" if name else part
    return name or "body"
