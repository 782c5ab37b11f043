"""Opens a package's graph as the manifest describes it, or refuses it saying why.

Hashes prove the files are the ones the manifest lists; they do not prove the manifest tells the
truth about them. Before a session serves requests this checks that a TensorRT engine the
operator would use was built for this host, that ONNX Runtime can load the graph at all, and that
the graph's inputs and outputs (names, dtypes, ranks, fixed sizes) and the KV layout are the ones
the manifest declares. Every refusal is a PackageError naming the file or manifest field.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional

import onnxruntime as ort

from appliance.engine.providers import PROVIDER_NAMES, RuntimeOptions, create_session, query_gpu, resolve_providers
from appliance.errors import PackageError
from appliance.model_package import Manifest, TensorSpec

log = logging.getLogger(__name__)

_ORT_DTYPES = {"float": "float32", "double": "float64"}
# What the load log line names of a prefill graph's recipe.
RECIPE_KEYS = ("method", "bits", "block_size", "accuracy_level")


@functools.lru_cache(maxsize=1)
def host_tensorrt() -> tuple[Optional[str], Optional[str]]:
    """(GPU compute capability, TensorRT version) of this host; None where there is none."""
    try:
        version = importlib.metadata.version("tensorrt")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return query_gpu("compute_cap"), version


def check_tensorrt_targets(package_dir: Path, manifest: Manifest, options: RuntimeOptions) -> None:
    """Refuses a TensorRT engine built for another GPU or TensorRT version, when the config asks
    for TensorRT (otherwise the engine is never used and the graph runs on CUDA or CPU)."""
    if "tensorrt" not in options.providers:
        return
    capability, version = host_tensorrt()
    for target in manifest.targets:
        if target.name != "tensorrt":
            continue
        engine = target.engine_model or "the TensorRT engine"
        built = f"compute capability {target.compute_capability} ({target.gpu_name or 'unknown GPU'}), " \
                f"TensorRT {target.tensorrt_version}"
        here = f"compute capability {capability or 'none'}, TensorRT {version or 'none'}"
        if target.compute_capability != capability or target.tensorrt_version != version:
            raise PackageError(package_dir.name, f"{engine} was built for {built}; this host has {here}")


def _dtype(ort_type: str) -> str:
    name = ort_type.removeprefix("tensor(").removesuffix(")")
    return _ORT_DTYPES.get(name, name)


def _compare(package: str, model_file: str, kind: str, declared: list[TensorSpec], actual: dict) -> None:
    for spec in declared:
        graph = actual.get(spec.name)
        if graph is None:
            raise PackageError(package, f"manifest io: {spec.name} is not an {kind} of {model_file}")
        if _dtype(graph.type) != spec.dtype or len(graph.shape) != len(spec.shape) or any(
                isinstance(d, int) and isinstance(g, int) and d != g for d, g in zip(spec.shape, graph.shape)):
            raise PackageError(package, f"manifest io: {kind} {spec.name} is {spec.dtype}{list(spec.shape)} in the "
                                        f"manifest but {_dtype(graph.type)}{list(graph.shape)} in {model_file}")
    extra = sorted(set(actual) - {s.name for s in declared})
    if extra:
        raise PackageError(package, f"manifest io: {model_file} has {kind} {extra[0]} that the manifest does not list")


def check_signature(package: str, manifest: Manifest, session: ort.InferenceSession,
                    model_file: Optional[str] = None) -> None:
    """model_file: the graph the session runs (default the manifest's; a prefill graph has the same IO)."""
    model_file = model_file or manifest.model_file
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    _compare(package, model_file, "input", manifest.io.inputs, inputs)
    _compare(package, model_file, "output", manifest.io.outputs, outputs)
    layout = manifest.kv_layout
    if layout is None:
        return
    for layer in range(layout.num_layers + 1):
        for pattern in (layout.past_key, layout.past_value):
            name = pattern % layer
            present = name in inputs
            if layer == layout.num_layers:
                if present:
                    raise PackageError(package, f"manifest kv_layout.num_layers {layout.num_layers}: "
                                                f"{model_file} has {name}")
                continue
            if not present:
                raise PackageError(package, f"manifest kv_layout: {model_file} has no input {name}")
            shape = inputs[name].shape
            for index, field, value in ((1, "num_kv_heads", layout.num_kv_heads), (3, "head_dim", layout.head_dim)):
                if len(shape) == 4 and isinstance(shape[index], int) and shape[index] != value:
                    raise PackageError(package, f"manifest kv_layout.{field} {value} does not match {name} "
                                                f"{list(shape)} in {model_file}")


def open_package_session(package_dir: Path, manifest: Manifest, options: RuntimeOptions,
                         cuda_graph: bool = False, model_file: Optional[str] = None) -> ort.InferenceSession:
    model_file = model_file or manifest.model_file
    check_tensorrt_targets(package_dir, manifest, options)
    try:
        session = create_session(str(package_dir / model_file), options, cuda_graph)
    except Exception as exc:  # ORT's own errors: their text may quote the file, so the class only
        with_graphs = " with CUDA graphs" if cuda_graph else ""
        raise PackageError(package_dir.name, f"file {model_file} cannot be loaded by ONNX Runtime"
                                             f"{with_graphs} ({exc.__class__.__name__})") from exc
    check_signature(package_dir.name, manifest, session, model_file)
    return session


def has_prefill_graph(manifest: Manifest, options: RuntimeOptions) -> bool:
    """Whether a decoder of this package prefills on its own prefill graph under these options."""
    return manifest.prefill_graph is not None and options.prefill_graph != "off"


def open_prefill_session(package_dir: Path, manifest: Manifest,
                         options: RuntimeOptions) -> Optional[ort.InferenceSession]:
    """The session of the package's prefill graph, on the same provider and options as the decode
    graph's, or None where the package has none or [runtime] prefill_graph = "off". Prefill shapes
    vary, so it never captures CUDA graphs. Its threads spin within a chunk's run (a short rest
    after a cached prefix took 5% longer where they slept between its hundreds of nodes) and stop
    when it returns, leaving the cores to the decode step that runs next."""
    graph = manifest.prefill_graph
    if not has_prefill_graph(manifest, options):
        return None
    session = open_package_session(package_dir, manifest, replace(options, thread_spinning="within_runs"),
                                   model_file=graph.file)
    recipe = ", ".join(f"{key} {value}" for key, value in graph.quantization.items() if key in RECIPE_KEYS)
    log.info("%s: prefill runs on %s, up to %.0f MB more memory for its own copy of the weights "
             "([runtime] prefill_graph = \"off\" saves it)", package_dir.name,
             f"{graph.file} ({recipe})" if recipe else graph.file, graph.weight_bytes / 1e6)
    return session


def open_decoder_session(package_dir: Path, manifest: Manifest,
                         options: RuntimeOptions) -> tuple[ort.InferenceSession, bool]:
    """The session and whether its decode steps replay CUDA graphs, as options.cuda_graph asks:
    graphs need the CUDA provider first and every compute node on it, which ORT checks at load."""
    first = resolve_providers(options.providers)[0]
    if options.cuda_graph == "off" or (options.cuda_graph == "auto" and first != PROVIDER_NAMES["cuda"]):
        return open_package_session(package_dir, manifest, options), False
    if first != PROVIDER_NAMES["cuda"]:
        raise PackageError(package_dir.name, f"[runtime] cuda_graph = on needs the CUDA execution provider; "
                                             f"the session would run on {first}")
    try:
        return open_package_session(package_dir, manifest, options, cuda_graph=True), True
    except PackageError as error:
        cause = str(error.__cause__ or error).strip().splitlines()
        reason = cause[-1][:300] if cause else error.reason
        if options.cuda_graph == "on":
            raise PackageError(package_dir.name, f"[runtime] cuda_graph = on, but ONNX Runtime cannot capture "
                                                 f"{manifest.model_file} in CUDA graphs: {reason}") from None
        log.info("%s: decode steps run without CUDA graphs (%s)", package_dir.name, reason)
        return open_package_session(package_dir, manifest, options), False
