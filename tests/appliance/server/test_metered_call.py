"""MeteredCall, which every RPC's body runs in: each end is metered once with its status, and an
exception aborts the call with the mapped status, never with an unexpected exception's text."""

import asyncio

import grpc
import pytest

from appliance.errors import InvalidRequest
from appliance.server.errors import MeteredCall


class Aborted(Exception):
    """What grpc.aio's abort raises: it never returns."""


class FakeContext:
    def __init__(self):
        self.aborted = None

    async def abort(self, code, message):
        self.aborted = (code, message)
        raise Aborted


async def answer(call):
    call.prompt_tokens = 3
    return "answer"


async def refuse(call):
    raise InvalidRequest("max_tokens", "must be positive")


async def crash(call):
    raise RuntimeError("a secret prompt quoted in the message")


async def cancelled(call):
    raise asyncio.CancelledError


def run(body, streaming: bool):
    """`body` in a MeteredCall as a unary RPC, or as a streaming one read to its end."""
    ended, context = [], FakeContext()

    def metered():
        return MeteredCall("Rpc", context, lambda call, status: ended.append((call.prompt_tokens, status)))

    async def unary():
        async with metered() as call:
            return await body(call)

    async def stream():
        async with metered() as call:
            yield await body(call)

    async def drive():
        return [item async for item in stream()] if streaming else await unary()

    try:
        result = asyncio.run(drive())
    except (Aborted, asyncio.CancelledError) as exc:
        result = exc.__class__
    return result, ended, context.aborted


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("body,result,status,aborted", [
    (answer, "answer", grpc.StatusCode.OK, None),
    (refuse, Aborted, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens: must be positive"),
    (crash, Aborted, grpc.StatusCode.INTERNAL, "internal error"),
    (cancelled, asyncio.CancelledError, grpc.StatusCode.CANCELLED, None),
])
def test_each_end_is_metered_once_with_its_status(streaming, body, result, status, aborted):
    got, ended, abort = run(body, streaming)
    assert got == ([result] if streaming and result == "answer" else result)
    assert [s for _, s in ended] == [status]
    assert abort == (None if aborted is None else (status, aborted))
    if body is answer:
        assert ended[0][0] == 3, "the body's figures reach the metering"


def test_a_stream_closed_by_its_client_is_metered_cancelled():
    ended = []

    async def stream():
        async with MeteredCall("Rpc", FakeContext(), lambda call, status: ended.append(status)):
            yield 1
            yield 2

    async def read_one_then_leave():
        pieces = stream()
        await pieces.__anext__()
        await pieces.aclose()  # GeneratorExit at the yield

    asyncio.run(read_one_then_leave())
    assert ended == [grpc.StatusCode.CANCELLED]
