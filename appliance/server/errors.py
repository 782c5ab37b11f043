"""The one place where exceptions become gRPC statuses (and, beside them, the OpenAI HTTP API's
statuses), and where every gRPC call's end is seen.

Handlers raise typed ApplianceErrors; MeteredCall, which every RPC's body runs in, aborts the call
with the mapped status and the error's message (which names fields, never prompt text). Anything
else is logged by class and answered INTERNAL with no detail on the wire. Each call carries a
CallInfo that the handler fills (key, model, tokens); the `finished(call, status)` the RPC hands
to MeteredCall meters it, whatever the end.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Callable

import grpc

from appliance.errors import ApplianceError, InvalidRequest, ModelNotFound

log = logging.getLogger(__name__)


@dataclass
class CallInfo:
    rpc: str
    api: str = "grpc"  # the door: "grpc" or "openai"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    key_id: str = ""
    model: str = ""  # set only once the model is known to be served (bounded label values)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RequestTooLarge(ApplianceError):
    """An HTTP body over the configured limit (gRPC enforces its own message size)."""

    status_name = "RESOURCE_EXHAUSTED"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ApplianceError):
        return getattr(grpc.StatusCode, exc.status_name), str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


@dataclass(frozen=True)
class HttpError:
    """An exception as the OpenAI HTTP API answers it: `{"error": {message, type, param, code}}`."""

    status: int
    type: str
    message: str
    param: str | None = None
    code: str | None = None


# gRPC status -> (HTTP status, OpenAI error type, code): the statuses the OpenAI client libraries
# map to their exceptions (BadRequestError, AuthenticationError, ... RateLimitError).
_HTTP_STATUSES = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", "wrong_task"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", None),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable", "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error", "timeout"),
}


def http_error_for(exc: BaseException) -> HttpError:
    if isinstance(exc, RequestTooLarge):
        return HttpError(413, "invalid_request_error", str(exc), code="request_too_large")
    code, message = status_for(exc)
    if code not in _HTTP_STATUSES:
        return HttpError(500, "server_error", "internal error")
    status, kind, error_code = _HTTP_STATUSES[code]
    param = exc.field if isinstance(exc, InvalidRequest) else "model" if isinstance(exc, ModelNotFound) else None
    return HttpError(status, kind, message, param, error_code)


def describe(method: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        # The class only: an exception's text may quote its input.
        log.error("%s failed: %s", method, exc.__class__.__name__, exc_info=not isinstance(exc, ApplianceError))
    return code, message


class MeteredCall:
    """`async with MeteredCall(rpc, context, finished) as call:` around an RPC's whole body, unary
    or streaming: the body fills `call`; its end, whatever it is, is metered once by `finished`,
    and an exception aborts the call with its mapped status."""

    def __init__(self, rpc: str, context: grpc.aio.ServicerContext,
                 finished: Callable[[CallInfo, grpc.StatusCode], None]):
        self.call = CallInfo(rpc)
        self._context = context
        self._finished = finished

    async def __aenter__(self) -> CallInfo:
        return self.call

    async def __aexit__(self, kind, exc, traceback) -> bool:
        if kind is None:
            self._finished(self.call, grpc.StatusCode.OK)
        elif issubclass(kind, (asyncio.CancelledError, GeneratorExit)):
            # A client that goes away cancels the task, or closes a streaming handler's generator.
            self._finished(self.call, grpc.StatusCode.CANCELLED)
        elif issubclass(kind, Exception):
            code, message = describe(self.call.rpc, exc)
            self._finished(self.call, code)
            await self._context.abort(code, message)
        return False
