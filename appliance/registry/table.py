"""The model registry: finds packages, verifies and loads them, warms them up, hands them out.

Every package under the models folder is served under its folder name. A package that fails to
verify or load is kept as FAILED with its reason (visible in ListModels) and never takes the
others down.

Hot reload (`reload`) rescans the folder: a new or changed package is loaded and warmed beside
the serving one, then swapped in with one dict assignment. Requests hold the version they
started on (`hold`), so the old version is closed only once its last stream has finished. A
package that fails to load leaves its previous version serving, with the reason in
`reload_error`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from tokenizers import Tokenizer

from appliance.engine.batch_invariance import InvarianceReport, Policy as InvariancePolicy, probe as probe_batch_invariance
from appliance.engine.chat import ChatTemplate
from appliance.engine.classifier import Classifier
from appliance.engine.embedder import Embedder
from appliance.engine.encoder_session import DEFAULT_BATCH_TOKENS
from appliance.engine.engine import GenerationEngine
from appliance.engine.scheduler import SchedulerConfig
from appliance.engine.providers import RuntimeOptions
from appliance.engine.runners import open_decoder_runner
from appliance.engine.sampling import SamplingParams
from appliance.errors import ApplianceError, ModelNotFound, ModelNotReady, PackageError
from appliance.model_package import (Manifest, find_packages, open_package, package_stamp, package_version,
                                     validation_status)

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ServedModel:
    name: str
    path: Path
    state: ModelState = ModelState.LOADING
    error: str = ""
    manifest: Optional[Manifest] = None
    engine: Optional[GenerationEngine] = None
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


class ReloadOutcome(enum.Enum):
    UNCHANGED = "unchanged"
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"
    FAILED = "failed"


@dataclass(frozen=True)
class ReloadResult:
    name: str
    outcome: ReloadOutcome
    version: str = ""
    error: str = ""


def load_tokenizer(package_dir: Path) -> Tokenizer:
    path = package_dir / "tokenizer.json"
    if not path.is_file():
        raise PackageError(package_dir.name, "no tokenizer.json")
    return Tokenizer.from_file(str(path))


def _token_text(tokenizer: Tokenizer, token_id: Optional[int]) -> str:
    return (tokenizer.id_to_token(token_id) or "") if token_id is not None else ""


class ModelRegistry:
    RETIRE_POLL_S = 0.05

    def __init__(self, models_dir: Path, runtime: RuntimeOptions, scheduling: SchedulerConfig = SchedulerConfig(),
                 max_context: int = 0, encoder_batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 batch_invariance: InvariancePolicy = "auto"):
        if not models_dir.is_dir():
            raise ApplianceError(f"models folder {models_dir} does not exist")
        self.models_dir = models_dir
        self.runtime = runtime
        self.scheduling = scheduling
        self.max_context = max_context
        self.encoder_batch_tokens = encoder_batch_tokens
        self.batch_invariance = batch_invariance
        # Replaced entry by entry, never mutated in place by readers: a lookup sees either the
        # old or the new version of a package, whole.
        self._models = {p.name: ServedModel(p.name, p) for p in find_packages(models_dir)}
        self._lock = threading.Lock()  # guards ServedModel.users
        self._reload_lock = threading.Lock()  # one load or reload at a time
        self._retiring: list[threading.Thread] = []

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def entries(self) -> list[ServedModel]:
        models = dict(self._models)  # one copy (made under the GIL): a reload may change the dict
        return [models[name] for name in sorted(models)]

    def lookup(self, name: str) -> ServedModel:
        """The package served under `name`, in whatever state it is."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(name)
        return model

    def get(self, name: str) -> ServedModel:
        """The package served under `name`, ready to take requests."""
        model = self.lookup(name)
        if model.state is not ModelState.READY:
            detail = f": {model.error}" if model.error else ""
            raise ModelNotReady(f"model {name!r} is {model.state.value}{detail}")
        return model

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[ServedModel]:
        """The ready package `name`, kept open (even if a reload replaces it) until the block ends."""
        with self._lock:
            model = self.get(name)
            model.users += 1
        try:
            yield model
        finally:
            with self._lock:
                model.users -= 1

    def load_all(self) -> None:
        """Loads and warms every package found at start; blocking, meant for a background thread."""
        with self._reload_lock:
            for model in self.entries():
                self._load_logged(model)

    def _load_logged(self, model: ServedModel) -> bool:
        try:
            self._load(model)
            model.state = ModelState.READY
            log.info("model %s version %s ready on %s", model.name, model.version, model.provider)
            self._log_validation(model)
            return True
        except Exception as exc:
            model.state = ModelState.FAILED
            # PackageError messages name the file and reason; other errors only their class,
            # so nothing from inside a model file ends up in logs or on the wire.
            model.error = str(exc) if isinstance(exc, ApplianceError) else f"load failed ({exc.__class__.__name__})"
            log.error("model %s failed to load: %s", model.name, model.error)
            self._close_model(model)
            return False

    @staticmethod
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

    def reload(self) -> list[ReloadResult]:
        """Rescans the folder and swaps in what changed; blocking, meant for a background thread."""
        with self._reload_lock:
            found = {p.name: p for p in find_packages(self.models_dir)}
            results = [self._reload_one(name, path) for name, path in sorted(found.items())]
            for name in sorted(set(self._models) - set(found)):
                self._retire(self._models.pop(name))
                log.info("model %s removed: its folder is gone", name)
                results.append(ReloadResult(name, ReloadOutcome.REMOVED))
            return sorted(results, key=lambda r: r.name)

    def _reload_one(self, name: str, path: Path) -> ReloadResult:
        current = self._models.get(name)
        serving = current is not None and current.state is ModelState.READY
        if serving and package_version(path) == current.version:
            failed = self._recheck_in_place(current)
            if failed is not None:
                return failed
            current.reload_error = ""  # the folder holds what serves again (a bad copy was put back)
            return ReloadResult(name, ReloadOutcome.UNCHANGED, current.version)
        candidate = ServedModel(name, path)
        if not serving:
            self._models[name] = candidate  # nothing to keep: show it LOADING, then its outcome
        if not self._load_logged(candidate):
            if serving:
                current.reload_error = candidate.error
                log.error("model %s keeps serving version %s", name, current.version)
            return ReloadResult(name, ReloadOutcome.FAILED, current.version if serving else "", candidate.error)
        self._models[name] = candidate
        if current is not None:
            self._retire(current)
        outcome = ReloadOutcome.ADDED if current is None else ReloadOutcome.UPDATED
        return ReloadResult(name, outcome, candidate.version)

    def _recheck_in_place(self, current: ServedModel) -> Optional[ReloadResult]:
        """The same manifest may sit over files changed in place (a byte flipped, a file truncated):
        when the files' stamp moved, every hash is checked again. The serving version keeps
        serving from what it loaded; the failure shows as for any failed reload."""
        stamp = package_stamp(current.path)
        if stamp == current.stamp:
            return None
        try:
            open_package(current.path)
        except PackageError as exc:
            current.reload_error = str(exc)
            log.error("model %s changed in place and no longer verifies: %s; keeps serving version %s",
                      current.name, current.reload_error, current.version)
            return ReloadResult(current.name, ReloadOutcome.FAILED, current.version, current.reload_error)
        current.stamp = stamp
        return None

    def _retire(self, model: ServedModel) -> None:
        """Closes a replaced or removed version once its last request has let go of it."""

        def wait_then_close():
            while True:
                with self._lock:
                    idle = model.users == 0 and not (model.engine is not None and model.engine.busy)
                if idle:
                    break
                time.sleep(self.RETIRE_POLL_S)
            self._close_model(model)
            log.info("model %s version %s retired", model.name, model.version)

        thread = threading.Thread(target=wait_then_close, name=f"retire-{model.name}", daemon=True)
        self._retiring = [t for t in self._retiring if t.is_alive()] + [thread]
        thread.start()

    @staticmethod
    def _close_model(model: ServedModel) -> None:
        if model.engine is not None:
            model.engine.close()

    @property
    def any_ready(self) -> bool:
        return any(m.state is ModelState.READY for m in self.entries())

    def _load(self, model: ServedModel) -> None:
        model.version = package_version(model.path)
        model.stamp = package_stamp(model.path)  # before verifying: a change during the load shows next time
        manifest = open_package(model.path)
        model.manifest = manifest
        tokenizer = load_tokenizer(model.path)
        if manifest.task == "text-generation":
            runner = open_decoder_runner(model.path, manifest, self.runtime, self.scheduling.max_batch, self.max_context)
            model.provider = runner.provider
            model.batch_invariance = self._probe_invariance(model.name, runner)
            engine = GenerationEngine(runner, tokenizer, manifest.eos_token_ids, self.scheduling,
                                      name=f"engine-{model.name}")
            model.engine = engine
            if manifest.chat_template:
                model.chat = ChatTemplate(manifest.chat_template, _token_text(tokenizer, manifest.bos_token_id),
                                          _token_text(tokenizer, (manifest.eos_token_ids or [None])[0]))
            self._warm_decoder(engine)
        elif manifest.task == "feature-extraction":
            embedder = Embedder(model.path, manifest, tokenizer, self.runtime, self.encoder_batch_tokens)
            model.provider = embedder.provider
            embedder.embed(["warm-up"], normalize=False)
            model.embedder = embedder
        else:
            classifier = Classifier(model.path, manifest, tokenizer, self.runtime, self.encoder_batch_tokens)
            model.provider = classifier.provider
            classifier.logits(["warm-up"])
            model.classifier = classifier

    def _probe_invariance(self, name: str, runner) -> InvarianceReport:
        report = probe_batch_invariance(runner, self.batch_invariance)
        log.info("%s: batch invariance %s", name, report.note)
        return report

    @staticmethod
    def _warm_decoder(engine: GenerationEngine) -> None:
        done = threading.Event()
        failure: list[BaseException] = []

        def on_event(event):
            if event.error is not None:
                failure.append(event.error)
            if event.finish_reason is not None:
                done.set()

        ids = engine.tokenize("warm-up") or [0]
        engine.submit(ids, SamplingParams(max_tokens=2, ignore_eos=True), on_event)
        done.wait()
        if failure:
            raise failure[0]

    def stop_admitting(self) -> None:
        for model in self.entries():
            if model.engine is not None:
                model.engine.stop_admitting()

    def busy(self) -> bool:
        return any(m.engine is not None and m.engine.busy for m in self.entries())

    def stalled_engines(self, max_silence_s: float) -> list[str]:
        """Serving decoders whose engine thread has not gone round its loop for `max_silence_s`."""
        now = time.monotonic()
        return [m.name for m in self.entries()
                if m.engine is not None and now - m.engine.heartbeat > max_silence_s]

    def close(self, timeout_s: float = 5.0) -> None:
        for model in self.entries():
            self._close_model(model)
        for thread in self._retiring:
            thread.join(timeout_s)
