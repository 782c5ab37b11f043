"""Prometheus metrics, served on their own port. Labels carry door, model, RPC, status, entity type
and direction only: never prompt text, key secrets or detected values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from appliance.registry import ReloadOutcome, ReloadResult

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self._http = None  # the HTTP server, while serving
        r = self.registry
        # api: the door a request came in by, "grpc" or "openai" (the OpenAI HTTP API).
        self.requests = Counter("appliance_requests", "Calls finished, by door and status",
                                ["api", "rpc", "model", "status"], registry=r)
        self.time_to_first_token = Histogram("appliance_time_to_first_token_seconds", "Arrival to first token",
                                             ["api", "model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("appliance_inter_token_seconds", "Mean gap between streamed tokens, per request",
                                     ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("appliance_queue_seconds", "Arrival to the start of prefill", ["model"],
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("appliance_tokens", "Tokens read and generated", ["model", "kind"], registry=r)
        self.batch_size = Gauge("appliance_batch_size", "Sequences in the decode batch", ["model"], registry=r)
        self.kv_slots = Gauge("appliance_kv_slots_in_use", "KV cache rows held by requests", ["model"], registry=r)
        self.waiting = Gauge("appliance_queue_depth", "Requests waiting for a KV row", ["model"], registry=r)
        self.reloads = Counter("appliance_model_reloads", "Packages dealt with by hot reloads, by outcome",
                               ["model", "outcome"], registry=r)
        self.reload_failed = Gauge("appliance_model_reload_failed",
                                   "1 while a package's last reload failed and its previous version serves",
                                   ["model"], registry=r)
        self.pii = Counter("appliance_pii_entities", "Personal-data entities redacted", ["type", "direction"],
                           registry=r)

    def serve(self, listen: str) -> int:
        """Starts the HTTP endpoint in its own thread; returns the bound port (for a port of 0)."""
        host, _, port = listen.rpartition(":")
        self._http, _ = start_http_server(int(port), addr=host.removeprefix("[").removesuffix("]"),
                                          registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        """Stops the HTTP endpoint and lets its port go."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def observe_engine(self, model: str, stats) -> None:
        self.batch_size.labels(model).set(stats.running)
        self.kv_slots.labels(model).set(stats.running + stats.prefilling)
        self.waiting.labels(model).set(stats.waiting)

    def watch_replicas(self, models) -> None:
        """Per-replica and prefix-cache figures of every served decoder (`models`: the ModelRegistry),
        read at scrape."""
        self.registry.register(_ReplicaCollector(models))
        self.registry.register(_PrefixCacheCollector(models))

    def observe_reload(self, results: list[ReloadResult]) -> None:
        for result in results:
            self.reloads.labels(result.name, result.outcome.value).inc()
            failed_but_serving = result.outcome is ReloadOutcome.FAILED and bool(result.version)
            self.reload_failed.labels(result.name).set(int(failed_but_serving))


class _ReplicaCollector:
    """appliance_replica_* with labels model, replica (0, 1, ...) and device (cpu, cuda:N, where it
    computes): what each engine of a decoder holds now and how many requests were routed to it."""

    def __init__(self, models):
        self._models = models

    def collect(self):
        labels = ["model", "replica", "device"]
        running = GaugeMetricFamily("appliance_replica_batch_size", "Sequences in the replica's decode batch",
                                    labels=labels)
        slots = GaugeMetricFamily("appliance_replica_kv_slots_in_use", "KV cache rows held by requests", labels=labels)
        waiting = GaugeMetricFamily("appliance_replica_queue_depth", "Requests waiting for a KV row", labels=labels)
        routed = CounterMetricFamily("appliance_replica_requests", "Generate requests routed to the replica",
                                     labels=labels)
        for model in self._models.entries():
            if model.engine is None:
                continue
            each = zip(model.engine.replica_stats(), model.engine.loads(), model.engine.devices)
            for index, (stats, load, device) in enumerate(each):
                replica = [model.name, str(index), device]
                running.add_metric(replica, stats.running)
                slots.add_metric(replica, stats.running + stats.prefilling)
                waiting.add_metric(replica, stats.waiting)
                routed.add_metric(replica, load.routed)
        yield from (running, slots, waiting, routed)


class _PrefixCacheCollector:
    """appliance_prefix_cache_* per model (its replicas summed): counters since the model loaded,
    and the bytes allocated and held now. Token counts only, never which tokens."""

    _COUNTERS = (("lookups", "Prompts looked up in the prefix cache"),
                 ("looked_up_tokens", "Prompt tokens looked up in the prefix cache"),
                 ("hit_tokens", "Prompt tokens copied from the prefix cache instead of prefilled"),
                 ("evictions", "Prefix-cache blocks evicted to make room"))
    _GAUGES = (("capacity_bytes", "Device memory allocated for the prefix cache"),
               ("held_bytes", "Prefix-cache memory holding cached prefixes"))

    def __init__(self, models):
        self._models = models

    def collect(self):
        counters = [(name, CounterMetricFamily(f"appliance_prefix_cache_{name}", text, labels=["model"]))
                    for name, text in self._COUNTERS]
        gauges = [(name, GaugeMetricFamily(f"appliance_prefix_cache_{name}", text, labels=["model"]))
                  for name, text in self._GAUGES]
        for model in self._models.entries():
            if model.engine is None:
                continue
            stats = model.engine.prefix_cache_stats()
            for name, family in (*counters, *gauges):
                family.add_metric([model.name], getattr(stats, name))
        yield from (family for _, family in (*counters, *gauges))
