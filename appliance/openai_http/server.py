"""The OpenAI-compatible HTTP door: an aiohttp server on the daemon's own asyncio loop.

aiohttp rather than an ASGI stack on uvicorn: its AppRunner / TCPSite are made to be started and
stopped inside a loop someone else owns, and leave the process's signals alone (uvicorn's
Server.serve takes SIGTERM and SIGINT over, which here belong to the daemon's drain). It also
cancels a handler whose client disconnects (handler_cancellation), which is how a dropped stream
frees its engine row, and bounds the request body itself (client_max_size).
"""

from __future__ import annotations

import logging
import ssl

from aiohttp import web

from appliance.openai_http.routes import OpenAIRoutes, error_response
from appliance.server.config import HttpConfig, TLSConfig
from appliance.server.core import InferenceCore
from appliance.server.errors import HttpError

log = logging.getLogger(__name__)

# Seconds the server waits at close for handlers still running; the daemon's drain has already
# given streams their grace period by then.
CLOSE_TIMEOUT_S = 1.0


def ssl_context(tls: TLSConfig) -> ssl.SSLContext | None:
    """The gRPC port's TLS, and mutual TLS with a client CA, for the HTTP port too."""
    if tls.cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@web.middleware
async def _json_errors(request: web.Request, handler):
    """aiohttp's own refusals (unknown path, wrong method) in the OpenAI error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(HttpError(exc.status, "invalid_request_error", exc.reason))


class HttpDoor:
    def __init__(self, core: InferenceCore, config: HttpConfig, tls: TLSConfig):
        self.config = config
        self.tls = tls
        app = web.Application(client_max_size=config.max_body_bytes, middlewares=[_json_errors])
        OpenAIRoutes(core, config.max_body_bytes).add_to(app)
        self._runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=CLOSE_TIMEOUT_S)

    async def start(self) -> int:
        """Binds `[http] listen`; returns the bound port (for a port of 0). OSError if it cannot."""
        host, _, port = self.config.listen.rpartition(":")
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.removeprefix("[").removesuffix("]"), int(port),
                           ssl_context=ssl_context(self.tls))
        await site.start()
        return self._runner.addresses[0][1]

    async def close(self) -> None:
        await self._runner.cleanup()
