"""The serving table: which version of each package serves, and hot reloads that swap them.

Every package under the models folder is served under its folder name. Hot reload (`reload`)
rescans the folder: a new or changed package is loaded and warmed beside the serving one, then
swapped in with one dict assignment. Requests hold the version they started on (`hold`); a
replaced version is closed when its last holder lets go, not polled for. A package that fails
to load leaves its previous version serving, with the reason in `reload_error`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from appliance.engine.batch_invariance import Policy as InvariancePolicy
from appliance.engine.encoder_session import DEFAULT_BATCH_TOKENS
from appliance.engine.providers import RuntimeOptions
from appliance.engine.scheduler import SchedulerConfig
from appliance.errors import ApplianceError, ModelNotFound, ModelNotReady, PackageError
from appliance.model_package import find_packages, open_package, package_stamp, package_version
from appliance.registry.loading import (WARM_UP_TIMEOUT_S, LoadSettings, ModelState, ServedModel, close_model,
                                        load_model)

log = logging.getLogger(__name__)


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


class ModelRegistry:
    def __init__(self, models_dir: Path, runtime: RuntimeOptions, scheduling: SchedulerConfig = SchedulerConfig(),
                 max_context: int = 0, encoder_batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 batch_invariance: InvariancePolicy = "auto", replicas: int = 1,
                 warm_up_timeout_s: float = WARM_UP_TIMEOUT_S, devices: tuple[str, ...] = ()):
        if not models_dir.is_dir():
            raise ApplianceError(f"models folder {models_dir} does not exist")
        self.models_dir = models_dir
        self.settings = LoadSettings(runtime, scheduling, max_context, encoder_batch_tokens, batch_invariance,
                                     replicas, warm_up_timeout_s, tuple(devices))
        # Replaced entry by entry, never mutated in place by readers: a lookup sees either the
        # old or the new version of a package, whole.
        self._models = {p.name: ServedModel(p.name, p) for p in find_packages(models_dir)}
        self._lock = threading.Lock()  # guards ServedModel.users and .retired, and _closing
        self._reload_lock = threading.Lock()  # one load or reload at a time
        self._closing: list[threading.Thread] = []

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
                last_out = model.retired and model.users == 0
            if last_out:
                self._close_later(model)

    def load_all(self) -> None:
        """Loads and warms every package found at start; blocking, meant for a background thread."""
        with self._reload_lock:
            for model in self.entries():
                load_model(model, self.settings)

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
        if not load_model(candidate, self.settings):
            if serving:
                current.reload_error = candidate.error
                log.error("model %s keeps serving version %s", name, current.version)
            return ReloadResult(name, ReloadOutcome.FAILED, current.version if serving else "", candidate.error)
        self._models[name] = candidate
        if current is not None:
            self._retire(current)
        outcome = ReloadOutcome.ADDED if current is None else ReloadOutcome.UPDATED
        return ReloadResult(name, outcome, candidate.version)

    def _recheck_in_place(self, current: ServedModel):
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
        """A replaced or removed version closes now if nobody holds it, else when its last holder
        lets go (`hold`): streams that started on it finish on it."""
        with self._lock:
            model.retired = True
            idle = model.users == 0
        if idle:
            self._close_later(model)

    def _close_later(self, model: ServedModel) -> None:
        # A thread: the last holder may be a coroutine on the event loop, and closing joins the
        # engine threads (each bounded by close's timeout).
        def close():
            close_model(model)
            log.info("model %s version %s retired", model.name, model.version)

        thread = threading.Thread(target=close, name=f"retire-{model.name}", daemon=True)
        with self._lock:  # holders let go on the event loop, reloads retire on their own thread
            self._closing = [t for t in self._closing if t.is_alive()] + [thread]
        thread.start()

    @property
    def any_ready(self) -> bool:
        return any(m.state is ModelState.READY for m in self.entries())

    def stop_admitting(self) -> None:
        for model in self.entries():
            if model.engine is not None:
                model.engine.stop_admitting()

    def busy(self) -> bool:
        return any(m.engine is not None and m.engine.busy for m in self.entries())

    def stalled_engines(self, max_silence_s: float) -> list[str]:
        """Serving decoders (`name`, or `name#replica` with several) whose engine thread has not
        gone round its loop for `max_silence_s`."""
        now = time.monotonic()
        stalled = []
        for m in self.entries():
            beats = m.engine.heartbeats() if m.engine is not None else []
            stalled += [m.name if len(beats) == 1 else f"{m.name}#{i}"
                        for i, beat in enumerate(beats) if now - beat > max_silence_s]
        return stalled

    def close(self, timeout_s: float = 5.0) -> None:
        for model in self.entries():
            close_model(model)
        deadline = time.monotonic() + timeout_s
        for thread in self._closing:
            thread.join(max(0.0, deadline - time.monotonic()))
