"""This daemon as a contender: started alone on loopback with the benchmark's config, driven over
gRPC by the asyncio client (`driver.replay_streams`), chat turns sent in the `messages` field so
the daemon renders them with the package's own template."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from pathlib import Path

from benchmarks.daemons import free_port, serve_alone

from .driver import replay_streams
from .stats import summarize
from .workload import WorkloadSpec, make_workload


def daemon_config(max_batch: int, max_context: int, metrics_port: int, engine_extra: str = "") -> str:
    """The config the daemon starts with; `engine_extra` adds [engine] lines (the prefix-cache keys)."""
    return (f'[server]\nmax_queue = 256\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
            f"[engine]\nmax_batch = {max_batch}\nmax_context = {max_context}\n{engine_extra}\n")


def prefix_cache_tokens(metrics_url: str) -> tuple[float, float]:
    """(hit tokens, looked-up tokens) from the daemon's appliance_prefix_cache_* counters."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    totals = {"appliance_prefix_cache_hit_tokens_total": 0.0, "appliance_prefix_cache_looked_up_tokens_total": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals["appliance_prefix_cache_hit_tokens_total"], totals["appliance_prefix_cache_looked_up_tokens_total"]


class DaemonContender:
    def __init__(self, name: str, package: Path, prompts, max_batch: int, max_context: int, engine_extra: str,
                 threads: int, log: Path):
        self.name, self.package, self.prompts, self.threads, self.log = name, package, prompts, threads, log
        port = free_port()
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self.config_toml = daemon_config(max_batch, max_context, port, engine_extra)
        self._stack = contextlib.ExitStack()
        self.target, self.process = "", None

    def __enter__(self):
        self.target, self.process = self._stack.enter_context(
            serve_alone(self.package, self.config_toml, self.threads, log=self.log))
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def describe(self) -> str:
        return (f"appliance serve --threads {self.threads} on {self.target}, config "
                + repr(self.config_toml.strip()).replace("\\n", "; "))

    async def stream(self, client, messages, max_tokens):
        async for chunk in client.generate(self.package.name, messages=messages, max_tokens=max_tokens,
                                           ignore_eos=True, temperature=0.0):
            yield len(chunk.token_ids), chunk.text

    def replay(self, spec: WorkloadSpec) -> dict:
        from appliance.async_client import AsyncApplianceClient

        async def run():
            async with AsyncApplianceClient(self.target) as client:
                return await replay_streams(make_workload(spec, self.prompts.count),
                                            lambda messages, n: self.stream(client, messages, n))

        hits, looked_up = prefix_cache_tokens(self.metrics_url)
        records = asyncio.run(run())
        hits_after, looked_up_after = prefix_cache_tokens(self.metrics_url)
        return summarize(records, (hits_after - hits) / (looked_up_after - looked_up)
                         if looked_up_after > looked_up else None)

    def first_token_times(self, conversations) -> list[float]:
        """Each prompt alone, one after another: seconds to its first streamed token over gRPC, on
        a connected channel (a client connects once, not per request; the peers are timed in
        their own process, with no connection at all)."""
        from appliance.async_client import AsyncApplianceClient

        async def run():
            times = []
            async with AsyncApplianceClient(self.target) as client:
                await client.channel.channel_ready()
                for messages in conversations:
                    start = time.perf_counter()
                    async for _ in self.stream(client, messages, 1):
                        times.append(time.perf_counter() - start)
                        break
            return times

        return asyncio.run(run())
