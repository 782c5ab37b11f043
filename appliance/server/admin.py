"""The appliance.v1.Admin service: operator actions on a running daemon (hot reload).

Only keys with the admin right get through; the work itself belongs to the daemon, which also
runs it on SIGHUP, so both paths reload the same way.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import grpc

from appliance.registry import ReloadResult
from appliance.server import convert
from appliance.server.auth import Authenticator
from appliance.server.errors import CallInfo, MeteredCall
from appliance.v1 import admin_pb2_grpc


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, auth: Authenticator, reload: Callable[[], Awaitable[list[ReloadResult]]],
                 finished: Callable[[CallInfo, grpc.StatusCode], None]):
        self.auth = auth
        self.reload = reload
        self.finished = finished  # the Inference service's metering, so admin calls are logged alike

    async def ReloadModels(self, request, context: grpc.aio.ServicerContext):
        async with MeteredCall("ReloadModels", context, self.finished) as call:
            key = self.auth.identify(context)
            call.key_id = key.id
            self.auth.check_admin(key)
            return convert.reload_response(await self.reload())
