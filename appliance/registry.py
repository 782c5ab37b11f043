"""The model registry: finds packages, verifies and loads them, warms them up, hands them out.

Every package under the models folder is served under its folder name. A package that fails to
verify or load is kept as FAILED with its reason (visible in ListModels) and never takes the
others down.
"""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tokenizers import Tokenizer

from appliance.engine.chat import ChatTemplate
from appliance.engine.classifier import Classifier
from appliance.engine.embedder import Embedder
from appliance.engine.engine import GenerationEngine
from appliance.engine.scheduler import SchedulerConfig
from appliance.engine.providers import RuntimeOptions
from appliance.engine.runners import open_decoder_runner
from appliance.engine.sampling import SamplingParams
from appliance.errors import ApplianceError, ModelNotFound, ModelNotReady, PackageError
from appliance.model_package import Manifest, find_packages, open_package

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


def load_tokenizer(package_dir: Path) -> Tokenizer:
    path = package_dir / "tokenizer.json"
    if not path.is_file():
        raise PackageError(package_dir.name, "no tokenizer.json")
    return Tokenizer.from_file(str(path))


def _token_text(tokenizer: Tokenizer, token_id: Optional[int]) -> str:
    return (tokenizer.id_to_token(token_id) or "") if token_id is not None else ""


class ModelRegistry:
    def __init__(self, models_dir: Path, runtime: RuntimeOptions, scheduling: SchedulerConfig = SchedulerConfig(),
                 max_context: int = 0):
        if not models_dir.is_dir():
            raise ApplianceError(f"models folder {models_dir} does not exist")
        self.models_dir = models_dir
        self.runtime = runtime
        self.scheduling = scheduling
        self.max_context = max_context
        self._models = {p.name: ServedModel(p.name, p) for p in find_packages(models_dir)}

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def entries(self) -> list[ServedModel]:
        return [self._models[name] for name in self.names]

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

    def load_all(self) -> None:
        """Loads and warms every package; blocking, meant for a background thread."""
        for model in self.entries():
            try:
                self._load(model)
                model.state = ModelState.READY
                log.info("model %s ready on %s", model.name, model.provider)
            except Exception as exc:
                model.state = ModelState.FAILED
                # PackageError messages name the file and reason; other errors only their class,
                # so nothing from inside a model file ends up in logs or on the wire.
                model.error = str(exc) if isinstance(exc, ApplianceError) else f"load failed ({exc.__class__.__name__})"
                log.error("model %s failed to load: %s", model.name, model.error)

    @property
    def any_ready(self) -> bool:
        return any(m.state is ModelState.READY for m in self._models.values())

    def _load(self, model: ServedModel) -> None:
        manifest = open_package(model.path)
        model.manifest = manifest
        tokenizer = load_tokenizer(model.path)
        if manifest.task == "text-generation":
            runner = open_decoder_runner(model.path, manifest, self.runtime, self.scheduling.max_batch, self.max_context)
            model.provider = runner.provider
            engine = GenerationEngine(runner, tokenizer, manifest.eos_token_ids, self.scheduling,
                                      name=f"engine-{model.name}")
            model.engine = engine
            if manifest.chat_template:
                model.chat = ChatTemplate(manifest.chat_template, _token_text(tokenizer, manifest.bos_token_id),
                                          _token_text(tokenizer, (manifest.eos_token_ids or [None])[0]))
            self._warm_decoder(engine)
        elif manifest.task == "feature-extraction":
            embedder = Embedder(model.path, manifest, tokenizer, self.runtime)
            model.provider = embedder.provider
            embedder.embed(["warm-up"], normalize=False)
            model.embedder = embedder
        else:
            classifier = Classifier(model.path, manifest, tokenizer, self.runtime)
            model.provider = classifier.provider
            classifier.logits(["warm-up"])
            model.classifier = classifier

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
        for model in self._models.values():
            if model.engine is not None:
                model.engine.stop_admitting()

    def busy(self) -> bool:
        return any(m.engine is not None and m.engine.busy for m in self._models.values())

    def close(self) -> None:
        for model in self._models.values():
            if model.engine is not None:
                model.engine.close()
