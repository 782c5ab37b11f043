"""The one place where exceptions become gRPC statuses.

Handlers raise typed ApplianceErrors; these wrappers abort the call with the mapped status and
the error's message (which names fields, never prompt text). Anything else is logged with the
request's method and answered INTERNAL with no detail on the wire.
"""

from __future__ import annotations

import functools
import logging

import grpc

from appliance.errors import ApplianceError

log = logging.getLogger(__name__)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ApplianceError):
        return getattr(grpc.StatusCode, exc.status_name), str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception):
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        # The class only: an exception's text may quote its input.
        log.error("%s failed: %s", method, exc.__class__.__name__, exc_info=not isinstance(exc, ApplianceError))
    await context.abort(code, message)


def unary_errors(handler):
    @functools.wraps(handler)
    async def wrapper(self, request, context):
        try:
            return await handler(self, request, context)
        except Exception as exc:
            await _abort(context, handler.__name__, exc)

    return wrapper


def stream_errors(handler):
    @functools.wraps(handler)
    async def wrapper(self, request, context):
        try:
            async for message in handler(self, request, context):
                yield message
        except Exception as exc:
            await _abort(context, handler.__name__, exc)

    return wrapper
