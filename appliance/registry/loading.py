"""Turns one package folder into a served model: verifies it, builds what its task needs (a decoder
as one engine per replica), warms each up within a bounded time.

A package that fails to verify or load becomes FAILED with its reason and never takes the
others down; the reason names the file or field for our own errors, and only the exception's
class for anything else, so nothing from inside a model file reaches logs or the wire.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from tokenizers import Tokenizer

from appliance.engine.batch_invariance import InvarianceReport, Policy as InvariancePolicy, probe as probe_batch_invariance
from appliance.engine.batch_invariance import probe_hit_quantum
from appliance.engine.chat import ChatTemplate
from appliance.engine.classifier import Classifier
from appliance.engine.embedder import Embedder
from appliance.engine.encoder_session import DEFAULT_BATCH_TOKENS
from appliance.engine.engine import GenerationEngine, keeps_prefixes
from appliance.engine.providers import RuntimeOptions, device_name
from appliance.engine.runners import open_decoder_runner
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import SchedulerConfig
from appliance.errors import ApplianceError, PackageError
from appliance.model_package import Manifest, open_package, package_stamp, package_version, validation_status
from appliance.registry.replicas import ReplicaSet

log = logging.getLogger(__name__)

# A warm-up generates two tokens; a package that cannot do that in this long is taken as broken
# (a hung provider) rather than holding the registry's reload lock for ever.
WARM_UP_TIMEOUT_S = 300.0


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class LoadSettings:
    runtime: RuntimeOptions = RuntimeOptions()
    scheduling: SchedulerConfig = SchedulerConfig()
    max_context: int = 0
    encoder_batch_tokens: int = DEFAULT_BATCH_TOKENS
    batch_invariance: InvariancePolicy = "auto"
    # Engines per decoder and device, each with its own KV cache (max_batch rows) and ORT session.
    replicas: int = 1
    warm_up_timeout_s: float = WARM_UP_TIMEOUT_S
    # Where the replicas run ("cpu", "cuda:N"); none: all where runtime.providers chooses.
    devices: tuple[str, ...] = ()


@dataclass
class ServedModel:
    name: str
    path: Path
    state: ModelState = ModelState.LOADING
    error: str = ""
    manifest: Optional[Manifest] = None
    engine: Optional[ReplicaSet] = None
    embedder: Optional[Embedder] = None
    classifier: Optional[Classifier] = None
    chat: Optional[ChatTemplate] = None
    provider: str = ""
    version: str = ""
    # Decoders: whether a request's tokens are the same alone or batched on this host, measured at load.
    batch_invariance: Optional[InvarianceReport] = None
    # The files as they were when this version was verified (model_package.package_stamp).
    stamp: tuple = ()
    # Why the last reload of this package failed while this version kept serving.
    reload_error: str = ""
    # Requests holding this version (see ModelRegistry.hold); guarded by the registry's lock.
    users: int = 0
    # Set once a reload replaced it or its folder went: closed when the last holder lets go.
    retired: bool = field(default=False, repr=False)


def load_tokenizer(package_dir: Path) -> Tokenizer:
    path = package_dir / "tokenizer.json"
    if not path.is_file():
        raise PackageError(package_dir.name, "no tokenizer.json")
    return Tokenizer.from_file(str(path))


def _token_text(tokenizer: Tokenizer, token_id: Optional[int]) -> str:
    return (tokenizer.id_to_token(token_id) or "") if token_id is not None else ""


def replica_runtime(runtime: RuntimeOptions, replicas: int) -> RuntimeOptions:
    """Each replica's session options: with ORT's default thread count (0, every core) several
    replicas would each start a pool as wide as the host, so they split this process's cores."""
    if replicas == 1 or runtime.intra_op_threads:
        return runtime
    return replace(runtime, intra_op_threads=max(1, len(os.sched_getaffinity(0)) // replicas))


def on_device(runtime: RuntimeOptions, device: str) -> RuntimeOptions:
    """The session options of a replica on `device`: cpu runs on the CPU whatever the providers
    say; cuda:N keeps the GPU providers and picks their device; "" (no devices listed) changes nothing."""
    if device == "cpu":
        return replace(runtime, providers=("cpu",), device_id=0)
    if device.startswith("cuda:"):
        return replace(runtime, device_id=int(device.removeprefix("cuda:")))
    return runtime


def replica_runtimes(runtime: RuntimeOptions, replicas: int, devices: tuple[str, ...]) -> list[RuntimeOptions]:
    """The session options of each replica: `replicas` per listed device, taking the devices
    in turn (replica i on devices[i % len(devices)]) so the first requests routed spread over them;
    the cores are split between all of them as for `replicas` alone."""
    placed = devices or ("",)
    split = replica_runtime(runtime, replicas * len(placed))
    return [on_device(split, device) for _ in range(replicas) for device in placed]


def load_model(model: ServedModel, settings: LoadSettings) -> bool:
    """Loads `model` in place: READY and True, or FAILED with its reason and False."""
    try:
        _load(model, settings)
        model.state = ModelState.READY
        cache = f", prefix cache {model.engine.prefix_cache_stats().capacity_bytes / 2**20:.0f} MB" if model.engine else ""
        log.info("model %s version %s ready on %s%s", model.name, model.version, model.provider, cache)
        _log_validation(model)
        return True
    except Exception as exc:
        model.state = ModelState.FAILED
        model.error = str(exc) if isinstance(exc, ApplianceError) else f"load failed ({exc.__class__.__name__})"
        log.error("model %s failed to load: %s", model.name, model.error)
        close_model(model)
        return False


def close_model(model: ServedModel) -> None:
    if model.engine is not None:
        model.engine.close()


def _log_validation(model: ServedModel) -> None:
    """Serves a package whatever its export validation said, but says when it did not pass."""
    status = validation_status(model.manifest)
    if status == "skipped":
        reason = model.manifest.validation.get("reason") or "no reason recorded"
        log.warning("model %s was not validated at export: %s", model.name, reason)
    elif status == "failed":
        log.warning("model %s failed its validation at export (written with --force)", model.name)
    elif status == "unknown":
        log.warning("model %s has no validation figures in its manifest", model.name)


def _load(model: ServedModel, settings: LoadSettings) -> None:
    model.version = package_version(model.path)
    model.stamp = package_stamp(model.path)  # before verifying: a change during the load shows next time
    manifest = open_package(model.path)
    model.manifest = manifest
    tokenizer = load_tokenizer(model.path)
    # An encoder is one session: on the first listed device.
    encoder_runtime = on_device(settings.runtime, settings.devices[0] if settings.devices else "")
    if manifest.task == "text-generation":
        _load_decoder(model, manifest, tokenizer, settings)
    elif manifest.task == "feature-extraction":
        embedder = Embedder(model.path, manifest, tokenizer, encoder_runtime, settings.encoder_batch_tokens)
        model.provider = embedder.provider
        embedder.embed(["warm-up"], normalize=False)
        model.embedder = embedder
    else:
        classifier = Classifier(model.path, manifest, tokenizer, encoder_runtime, settings.encoder_batch_tokens)
        model.provider = classifier.provider
        classifier.logits(["warm-up"])
        model.classifier = classifier


def _load_decoder(model: ServedModel, manifest: Manifest, tokenizer: Tokenizer, settings: LoadSettings) -> None:
    placed = replica_runtimes(settings.runtime, settings.replicas, settings.devices)
    engines: list[GenerationEngine] = []
    devices: list[str] = []  # where each replica computes (a GPU that is missing falls back to the CPU)
    measured: dict[str, InvarianceReport] = {}  # per execution provider: kernels differ between them
    hit_quanta: dict[str, int] = {}  # per execution provider too
    # The prefix-cache budget is the decoder's: its replicas share it out.
    scheduling = replace(settings.scheduling, prefix_cache_bytes=settings.scheduling.prefix_cache_bytes // len(placed))
    try:
        for index, runtime in enumerate(placed):
            runner = open_decoder_runner(model.path, manifest, runtime, settings.scheduling.max_batch,
                                         settings.max_context)
            devices.append(device_name(runner.provider, runtime.device_id))
            if runner.provider not in measured:
                measured[runner.provider] = probe_batch_invariance(runner, settings.batch_invariance)
                log.info("%s: batch invariance on %s %s", model.name, runner.provider,
                         measured[runner.provider].note)
            else:  # the same graph on the same kind of device: the first replica's measurement holds
                runner.set_row_quantum(measured[runner.provider].row_quantum)
            if scheduling.prefix_cache_bytes and keeps_prefixes(runner) and runner.provider not in hit_quanta:
                quantum, note = probe_hit_quantum(runner, scheduling.prefill_chunk, scheduling.prefix_block_tokens)
                hit_quanta[runner.provider] = quantum
                log.info("%s: prefix-cache hits on %s: %s", model.name, runner.provider, note)
            if index == 0:
                model.provider = runner.provider
                model.batch_invariance = measured[runner.provider]
            suffix = f"-{index}" if len(placed) > 1 else ""
            hits = replace(scheduling, hit_quantum=hit_quanta.get(runner.provider, 0))
            engines.append(GenerationEngine(runner, tokenizer, manifest.eos_token_ids, hits,
                                            name=f"engine-{model.name}{suffix}"))
    finally:
        # So a failure closes what started.
        model.engine = ReplicaSet(engines, devices[:len(engines)]) if engines else None
    if manifest.chat_template:
        model.chat = ChatTemplate(manifest.chat_template, _token_text(tokenizer, manifest.bos_token_id),
                                  _token_text(tokenizer, (manifest.eos_token_ids or [None])[0]))
    for engine in engines:
        warm_up(engine, settings.warm_up_timeout_s)


def warm_up(engine: GenerationEngine, timeout_s: float) -> None:
    """Two tokens through the engine; an error, or no answer within `timeout_s`, fails the load."""
    done = threading.Event()
    failure: list[BaseException] = []

    def on_event(event):
        if event.error is not None:
            failure.append(event.error)
        if event.finish_reason is not None:
            done.set()

    ids = engine.tokenize("warm-up") or [0]
    request = engine.submit(ids, SamplingParams(max_tokens=2, ignore_eos=True), on_event)
    if not done.wait(timeout_s):
        request.cancel()
        raise ApplianceError(f"warm-up did not finish within {timeout_s:g} s")
    if failure:
        raise failure[0]
