"""The daemon's main loop: build the server, load models in the background, drain on SIGTERM.

Health (`grpc.health.v1`) says NOT_SERVING until the models are loaded and warmed, SERVING while
at least one is ready, and NOT_SERVING again from the moment a drain starts. SIGHUP (or the Admin
service) reloads the models folder; under systemd the daemon feeds the watchdog only while every
engine thread keeps stepping.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from appliance.engine.providers import RuntimeOptions, flush_denormals_on_this_thread
from appliance.engine.scheduler import SchedulerConfig
from appliance.errors import ApplianceError, ConfigError, Draining
from appliance.openai_http.server import HttpDoor
from appliance.registry import ModelRegistry, ReloadOutcome, ReloadResult
from appliance.server.admin import AdminService
from appliance.server.auth import Authenticator
from appliance.server.config import Config, check_host_paths
from appliance.server.core import InferenceCore
from appliance.server.keys import KeyStore
from appliance.server.metrics import Metrics
from appliance.server.redaction import RedactionStage
from appliance.server.sd_notify import Notifier
from appliance.server.service import InferenceService
from appliance.server.usage import UsageLog
from appliance.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
DRAIN_POLL_S = 0.05
# What calls still open when the drain ends (refusals on their way out, health watches) get before
# the server stops: with none, a call that a proxy sent just then was cut with CANCELLED, which
# clients do not retry, instead of being answered UNAVAILABLE (tests/deploy/test_proxies.py).
CLOSE_GRACE_S = 0.5
# gRPC sets SO_REUSEPORT by default: a second daemon on a serving port would then listen beside
# the first and the kernel would split clients between them. Off, the second bind fails.
SERVER_OPTIONS = (("grpc.so_reuseport", 0),)


def server_credentials(tls) -> grpc.ServerCredentials | None:
    """TLS from the config's PEM files; mutual TLS when a client CA is given."""
    if tls.cert_file is None:
        return None
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials([(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


def _bind_problem(listen: str) -> str | None:
    """Why `listen` cannot be bound, found by binding a plain socket there as gRPC would; None if it can.

    gRPC reports every failed bind as "Failed to bind", which blames the port for what may be an
    address of another host; the socket's errno tells them apart.
    """
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        addresses = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return f"host {host} does not resolve to an address"
    failures: list[OSError] = []
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC and http.server do, so a port left in TIME_WAIT by a restart still binds.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                return None
            except OSError as exc:
                failures.append(exc)
    return _bind_error_reason(host, failures[0]) if failures else f"host {host} has no address"


def _bind_error_reason(host: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (something else listens there)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this host, so it cannot be bound here"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return (exc.strerror or str(exc)).lower()


def _cannot_bind(field: str, listen: str, reason: str) -> ConfigError:
    return ConfigError(f"config {field}: {listen}: {reason}")


def _with_port(listen: str, port: int) -> str:
    return f"{listen.rpartition(':')[0]}:{port}"


def _report_start_failure(notifier: Notifier, exc: BaseException) -> None:
    # Our errors name the field or file; anything else is a bug, logged with its class.
    expected = isinstance(exc, (ApplianceError, OSError))
    log.error("start failed: %s", exc, exc_info=None if expected else exc)
    notifier.status(f"failed to start: {exc}")


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None, watchdog_s: float | None = None):
        check_host_paths(config)
        self.config = config
        self.notifier = notifier or Notifier(None)
        self.watchdog_s = watchdog_s
        if config.runtime.flush_denormals:
            flush_denormals_on_this_thread()  # before any thread starts: they inherit the mode
        runtime = RuntimeOptions(tuple(config.runtime.providers), config.runtime.intra_op_threads,
                                 config.runtime.cuda_graph, prefill_graph=config.runtime.prefill_graph,
                                 flush_denormals=config.runtime.flush_denormals)
        engine = config.engine
        scheduling = SchedulerConfig(max_batch=engine.max_batch, max_step_tokens=engine.max_step_tokens,
                                     prefill_chunk=engine.prefill_chunk, max_queue=config.server.max_queue,
                                     prefix_cache_bytes=engine.prefix_cache_mb * 2**20,
                                     prefix_block_tokens=engine.prefix_block_tokens,
                                     cache_generated=engine.prefix_cache_generated)
        self.registry = ModelRegistry(config.server.models, runtime, scheduling, engine.max_context,
                                      engine.encoder_batch_tokens, engine.batch_invariance, engine.replicas,
                                      devices=config.runtime.devices)
        self.metrics = Metrics()
        self.metrics.watch_replicas(self.registry)
        self.usage = UsageLog(config.server.usage_db) if config.server.usage_db else None
        keys = KeyStore(config.auth.keys_db) if config.auth.keys_db else None
        auth = Authenticator(keys)
        # What both doors share (keys, admission, redaction, engines, metering, the drain's count).
        self.service = InferenceCore(self.registry, config.server.default_max_tokens,
                                     RedactionStage(config.redaction), auth, self.metrics, self.usage)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceService(self.service), self.server)
        self.http = HttpDoor(self.service, config.http, config.tls) if config.http.listen else None
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(auth, self.reload, self.service.finished),
                                                   self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, ADMIN_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port: int | None = None  # the bound gRPC port, once start() has bound it
        self.address = config.server.listen  # HOST:PORT with the bound port
        self.http_address = config.http.listen  # the same for the HTTP door, once bound
        self._stop = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()  # background tasks, referenced until they end

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    def _bind(self) -> None:
        """Binds the gRPC port; a port in use or an address of another host stops the start here."""
        listen = self.config.server.listen
        if problem := _bind_problem(listen):
            raise _cannot_bind("server.listen", listen, problem)
        credentials = server_credentials(self.config.tls)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(listen)
            else:
                self.port = self.server.add_secure_port(listen, credentials)
        except RuntimeError:  # the probe bound, gRPC did not: a race, or credentials it refused
            raise _cannot_bind("server.listen", listen, _bind_problem(listen) or "gRPC could not bind it") from None
        self.address = _with_port(listen, self.port)

    def _serve_metrics(self) -> None:
        metrics = self.config.server.metrics_listen
        if problem := _bind_problem(metrics):
            raise _cannot_bind("server.metrics_listen", metrics, problem)
        try:
            port = self.metrics.serve(metrics)
        except OSError as exc:  # taken between the probe and the bind
            reason = _bind_error_reason(metrics.rpartition(":")[0], exc)
            raise _cannot_bind("server.metrics_listen", metrics, reason) from None
        log.info("metrics on %s", _with_port(metrics, port))

    async def _serve_http(self) -> None:
        listen = self.config.http.listen
        if problem := _bind_problem(listen):
            raise _cannot_bind("http.listen", listen, problem)
        try:
            port = await self.http.start()
        except OSError as exc:  # taken between the probe and the bind
            raise _cannot_bind("http.listen", listen, _bind_error_reason(listen.rpartition(":")[0], exc)) from None
        self.http_address = _with_port(listen, port)
        log.info("OpenAI-compatible HTTP API on %s", self.http_address)

    async def start(self) -> None:
        await self._set_health(False)
        self._bind()
        # Started at once: a bound gRPC server lets its port go on stop() only once started, and
        # until the models are warm it answers health with NOT_SERVING.
        await self.server.start()
        if self.config.server.metrics_listen:
            self._serve_metrics()
        if self.http is not None:
            await self._serve_http()
        if self.watchdog_s:
            self._background(self.feed_watchdog(self.watchdog_s))
        log.info("listening on %s, loading %d model(s)", self.address, len(self.registry.names))
        self.notifier.status(f"loading {len(self.registry.names)} model(s)")
        await asyncio.to_thread(self.registry.load_all)
        if not self._stop.is_set():
            await self._set_health(self.registry.any_ready)
            summary = self._summary()
            log.info("ready: %s", summary)
            self.notifier.ready(f"serving on {self.address}: {summary}")

    def _summary(self) -> str:
        return ", ".join(f"{m.name}={m.state.value}" for m in self.registry.entries())

    async def reload(self) -> list[ReloadResult]:
        """Rescans the models folder and swaps in what changed (see ModelRegistry.reload)."""
        if self.service.draining:
            raise Draining("the server is draining; reload refused")
        async with self._reloading:
            log.info("reloading models from %s", self.config.server.models)
            self.notifier.reloading("reloading models")
            results = await asyncio.to_thread(self.registry.reload)
            self.metrics.observe_reload(results)
            if not self.service.draining:
                await self._set_health(self.registry.any_ready)
            changed = [f"{r.name} {r.outcome.value}" for r in results if r.outcome is not ReloadOutcome.UNCHANGED]
            log.info("reload done: %s", ", ".join(changed) or "nothing changed")
            self.notifier.ready(f"serving on {self.address}: {self._summary()}")
            return results

    def _background(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def request_reload(self) -> None:
        async def reload_logged():
            try:
                await self.reload()
            except Draining:
                log.info("SIGHUP ignored: draining")
            except Exception:
                log.exception("reload failed")

        self._background(reload_logged())

    async def feed_watchdog(self, interval_s: float) -> None:
        """WATCHDOG=1 every half interval while every engine thread keeps going round its loop.

        An engine stuck in a runner call (a hung GPU, a deadlock) stops the pings and systemd
        restarts the daemon; so does a blocked event loop, which cannot run this at all.
        """
        silent: list[str] = []
        while True:
            await asyncio.sleep(interval_s / 2)
            stalled = self.registry.stalled_engines(interval_s)
            if stalled and stalled != silent:
                log.error("engine(s) %s stopped stepping; withholding the watchdog ping", ", ".join(stalled))
                self.notifier.status(f"engine(s) {', '.join(stalled)} stalled")
            silent = stalled
            if not stalled:
                self.notifier.watchdog()

    def request_stop(self) -> None:
        self._stop.set()

    async def drain(self) -> None:
        """NOT_SERVING, refuse new calls, let running streams finish within the grace period."""
        grace = self.config.server.grace_period_s
        log.info("draining: %d stream(s) in flight, grace %.1fs", self.service.active_streams, grace)
        self.service.draining = True
        self.notifier.stopping(f"draining {self.service.active_streams} stream(s)")
        self.registry.stop_admitting()
        await self.health.enter_graceful_shutdown()
        deadline = time.monotonic() + grace
        while (self.service.active_streams or self.registry.busy()) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        await self._close()
        log.info("stopped")

    async def _close(self) -> None:
        await self.server.stop(grace=CLOSE_GRACE_S)
        if self.http is not None:
            await self.http.close()
        await asyncio.to_thread(self.metrics.close)  # waits out the HTTP server's poll interval
        self.registry.close()
        if self.usage is not None:
            self.usage.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        starting = asyncio.create_task(self.start())
        starting.add_done_callback(self._stop_if_failed)
        await self._stop.wait()
        if (failure := self._start_failure(starting)) is not None:
            _report_start_failure(self.notifier, failure)
            self._cancel_background()
            await self._close()
            raise failure
        if not starting.done():
            starting.cancel()
        await self.drain()
        self._cancel_background()
        _ignore_further_stop_signals(loop)

    def _stop_if_failed(self, starting: asyncio.Task) -> None:
        # A start that fails (a port in use, a loader that raises) ends run()'s wait as a signal
        # would; unchecked, the daemon would sit NOT_SERVING for ever.
        if self._start_failure(starting) is not None:
            self._stop.set()

    @staticmethod
    def _start_failure(starting: asyncio.Task) -> BaseException | None:
        return starting.exception() if starting.done() and not starting.cancelled() else None

    def _cancel_background(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _ignore_further_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    # Once drained, the loop's handlers go when it closes and the signals fall back to their
    # defaults for the interpreter's teardown: a second SIGTERM there (an impatient operator, a
    # supervisor that repeats itself) would kill the process and turn a clean exit 0 into -15.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)


async def _run(config: Config, notify_socket: str | None, watchdog_s: float | None) -> None:
    notifier = Notifier(notify_socket)
    try:
        # grpc.aio binds the server to the running loop, so it must be built inside it.
        daemon = Daemon(config, notifier, watchdog_s)
    except Exception as exc:
        _report_start_failure(notifier, exc)
        raise
    await daemon.run()


def serve(config: Config, notify_socket: str | None = None, watchdog_s: float | None = None) -> None:
    """Runs the daemon until SIGTERM; `watchdog_s` is systemd's WatchdogSec when it asks for pings."""
    asyncio.run(_run(config, notify_socket, watchdog_s))
