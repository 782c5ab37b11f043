"""The one place where exceptions become gRPC statuses, and where every call's end is seen.

Handlers raise typed ApplianceErrors; these wrappers abort the call with the mapped status and
the error's message (which names fields, never prompt text). Anything else is logged by class
and answered INTERNAL with no detail on the wire. Each call carries a CallInfo that the handler
fills (key, model, tokens); the servicer's `finished(call, status)` (the Metered protocol) meters
it, whatever the end.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from appliance.errors import ApplianceError

log = logging.getLogger(__name__)


@dataclass
class CallInfo:
    rpc: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    key_id: str = ""
    model: str = ""  # set only once the model is known to be served (bounded label values)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Metered(Protocol):
    """What a servicer wrapped by unary_errors or stream_errors provides: the one call that meters
    a call's end (access log, metrics, usage)."""

    def finished(self, call: CallInfo, status: grpc.StatusCode) -> None: ...


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ApplianceError):
        return getattr(grpc.StatusCode, exc.status_name), str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


def _describe(method: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        # The class only: an exception's text may quote its input.
        log.error("%s failed: %s", method, exc.__class__.__name__, exc_info=not isinstance(exc, ApplianceError))
    return code, message


def unary_errors(handler):
    @functools.wraps(handler)
    async def wrapper(self: Metered, request, context):
        call = CallInfo(handler.__name__)
        try:
            response = await handler(self, request, context, call)
        except asyncio.CancelledError:
            self.finished(call, grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            code, message = _describe(handler.__name__, exc)
            self.finished(call, code)
            await context.abort(code, message)
        self.finished(call, grpc.StatusCode.OK)
        return response

    return wrapper


def stream_errors(handler):
    @functools.wraps(handler)
    async def wrapper(self: Metered, request, context):
        call = CallInfo(handler.__name__)
        try:
            async for message in handler(self, request, context, call):
                yield message
        except (asyncio.CancelledError, GeneratorExit):
            # A client that goes away cancels the task or closes this generator.
            self.finished(call, grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            code, message = _describe(handler.__name__, exc)
            self.finished(call, code)
            await context.abort(code, message)
        self.finished(call, grpc.StatusCode.OK)

    return wrapper
