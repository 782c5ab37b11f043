"""The asyncio flavour of the Python client, for callers that live on an event loop."""

from __future__ import annotations

from typing import AsyncIterator, Optional

import grpc
import numpy as np

from appliance.client import GenerateChunk, chunk_from, generate_request, open_channel
from appliance.v1 import inference_pb2 as pb
from appliance.v1 import inference_pb2_grpc


class AsyncApplianceClient:
    """Same arguments as ApplianceClient; use `async with`."""

    def __init__(self, target: str, timeout_s: Optional[float] = None, api_key: Optional[str] = None,
                 root_certificates: Optional[bytes] = None, client_certificate: Optional[bytes] = None,
                 client_key: Optional[bytes] = None, server_name: Optional[str] = None,
                 balance: Optional[bool] = None):
        self.channel = open_channel(grpc.aio, target, root_certificates, client_certificate, client_key,
                                    server_name, balance)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.timeout_s = timeout_s
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    async def __aenter__(self) -> "AsyncApplianceClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()

    async def generate(self, model: str, prompt: str = "", **options) -> AsyncIterator[GenerateChunk]:
        """Streams chunks; leaving the loop early cancels the call. Options as ApplianceClient.generate."""
        call = self.stub.Generate(generate_request(model, prompt, **options), timeout=self.timeout_s,
                                  metadata=self.metadata)
        try:
            async for message in call:
                yield chunk_from(message)
        finally:
            call.cancel()

    async def embed(self, model: str, texts: list[str], normalize: bool = True) -> np.ndarray:
        response = await self.stub.Embed(pb.EmbedRequest(model=model, texts=texts, normalize=normalize),
                                         timeout=self.timeout_s, metadata=self.metadata)
        return np.asarray([list(e.values) for e in response.embeddings], np.float32)
