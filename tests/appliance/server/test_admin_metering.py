"""Admin calls are metered through MeteredCall, like Inference calls."""

import asyncio

import grpc

from appliance.server.admin import AdminService
from appliance.server.auth import Authenticator
from appliance.v1 import admin_pb2


def test_a_reload_call_is_metered_once_with_its_status():
    ended = []

    async def reload():
        return []

    service = AdminService(Authenticator(store=None), reload, lambda call, status: ended.append((call.rpc, call.key_id, status)))
    asyncio.run(service.ReloadModels(admin_pb2.ReloadModelsRequest(), context=None))
    assert ended == [("ReloadModels", "anonymous", grpc.StatusCode.OK)]
