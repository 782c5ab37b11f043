"""The model package format: one module that the exporter writes with and the daemon reads with.

A package is a folder:

    <pkg>/manifest.json        this schema (Manifest)
    <pkg>/model.onnx (+ .data) the graph and its external weights
    <pkg>/tokenizer.json ...   the tokenizer files

The daemon trusts nothing in the folder that the manifest does not vouch for: every file listed is
checked for size and SHA-256 before a session is created, and an unknown schema is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path, PurePosixPath
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import PackageError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

Task = Literal["text-generation", "feature-extraction", "text-classification", "token-classification"]
Precision = Literal["fp32", "fp16", "int8", "int4"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileRecord(_Frozen):
    sha256: str
    size: int


class TensorSpec(_Frozen):
    name: str
    dtype: str
    shape: list[int | str | None]


class IOSignature(_Frozen):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class KVLayout(_Frozen):
    """How a decoder graph takes its key/value cache."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    # `%d` is the layer index, e.g. "past_key_values.%d.key".
    past_key: str
    past_value: str
    present_key: str
    present_value: str
    dtype: str = "float32"
    # True when the graph accepts the same buffer as past input and present output
    # (GroupQueryAttention graphs from the genai builder): nothing is copied between steps.
    shared_buffer: bool


class Pooling(_Frozen):
    """How token vectors become one text vector (feature-extraction packages)."""

    # "graph" when the ONNX graph already outputs the pooled vector (sentence_embedding).
    mode: Literal["graph", "mean", "cls"]
    output: str
    normalize: bool


class Source(_Frozen):
    path: Optional[str] = None
    hub_id: Optional[str] = None
    revision: Optional[str] = None


class Target(_Frozen):
    name: Literal["cpu", "cuda", "tensorrt"]
    onnxruntime_version: str
    # TensorRT engines only run on the GPU generation and TensorRT version they were built with.
    compute_capability: Optional[str] = None
    tensorrt_version: Optional[str] = None
    gpu_name: Optional[str] = None
    # Package-relative path of the EPContext model that embeds the engine.
    engine_model: Optional[str] = None
    # Optimization profile the engine was built for: input name -> [min, opt, max] shapes.
    profiles: Optional[dict[str, list[list[int]]]] = None


class PrefillGraph(_Frozen):
    """A second graph, over the same IO signature and KV layout, that prefill runs on: a recipe
    that prefills faster than the decode graph's (export/prefill_graph.py)."""

    file: str
    # Its quantization recipe (the decode graph's is the manifest's `quantization`).
    quantization: dict
    # Bytes of weights a session of it loads: the memory it adds beside the decode graph.
    weight_bytes: int


class Manifest(_Frozen):
    schema_version: int
    task: Task
    architecture: str
    backend: Literal["builder", "optimum"]
    precision: Precision
    quantization: dict = Field(default_factory=dict)
    source: Source
    model_file: str = "model.onnx"
    files: dict[str, FileRecord]
    io: IOSignature
    context_length: int
    vocab_size: int
    bos_token_id: Optional[int] = None
    eos_token_ids: list[int] = Field(default_factory=list)
    pad_token_id: Optional[int] = None
    chat_template: Optional[str] = None
    kv_layout: Optional[KVLayout] = None
    # "last": the graph's logits are [batch, 1, vocab], the LM head on the last position only
    # (export/last_logits.py); "all": [batch, sequence, vocab], as packages written before it.
    logits: Literal["all", "last"] = "all"
    prefill_graph: Optional[PrefillGraph] = None
    pooling: Optional[Pooling] = None
    embedding_dim: Optional[int] = None
    # Class names by output index (text- and token-classification).
    labels: Optional[list[str]] = None
    targets: list[Target]
    validation: dict = Field(default_factory=dict)
    exporter_version: str
    created_at: str


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def record_files(package_dir: Path) -> dict[str, FileRecord]:
    """Hashes every file in the package except the manifest itself."""
    records = {}
    for path in sorted(package_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            rel = path.relative_to(package_dir).as_posix()
            records[rel] = FileRecord(sha256=sha256_of(path), size=path.stat().st_size)
    return records


def write_manifest(package_dir: Path, manifest: Manifest) -> Path:
    path = package_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    return path


def _unreadable(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def read_manifest(package_dir: Path) -> Manifest:
    """Parses the manifest; refuses a missing or unreadable file, bad JSON or an unknown schema version."""
    name = package_dir.name
    path = package_dir / MANIFEST_NAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise PackageError(name, f"no {MANIFEST_NAME}") from None
    except OSError as exc:  # PermissionError above all: the daemon's account cannot read it
        raise PackageError(name, f"{MANIFEST_NAME} cannot be read ({_unreadable(exc)})") from None
    try:
        raw = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(name, f"{MANIFEST_NAME} is not valid JSON ({exc.__class__.__name__})") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise PackageError(name, f"schema_version {version!r} is not supported (this daemon reads {SCHEMA_VERSION})")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise PackageError(name, f"{MANIFEST_NAME} field {field}: {first['msg']}") from None


def package_file(package_dir: Path, rel: str) -> Path:
    """The path of a manifest-named file, refusing one that is absolute or resolves outside the
    package (through `..` or a symlink anywhere on the way): the hashes vouch only for the folder."""
    root = package_dir.resolve()
    try:
        path = (root / rel).resolve()
    except (RuntimeError, ValueError, OSError) as exc:  # a symlink loop, a NUL in the name
        raise PackageError(package_dir.name, f"file {rel!r} is not a usable path ({exc.__class__.__name__})") from None
    if PurePosixPath(rel).is_absolute() or not path.is_relative_to(root):
        raise PackageError(package_dir.name, f"file {rel} escapes the package")
    return path


def _check_file(package_dir: Path, rel: str, record: FileRecord) -> None:
    name = package_dir.name
    path = package_file(package_dir, rel)
    try:
        if not path.is_file():
            raise PackageError(name, f"file {rel} is missing")
        size = path.stat().st_size
        if size != record.size:
            raise PackageError(name, f"file {rel} has {size} bytes, the manifest says {record.size}")
        digest = sha256_of(path)
    except OSError as exc:  # PermissionError above all: the daemon's account cannot read it
        raise PackageError(name, f"file {rel} cannot be read ({_unreadable(exc)})") from None
    if digest != record.sha256:
        raise PackageError(name, f"file {rel} does not match its sha256 in the manifest")


def verify_files(package_dir: Path, manifest: Manifest) -> None:
    """Raises PackageError naming the first file that escapes the package, is missing, unreadable,
    resized or changed."""
    name = package_dir.name
    named = [("model file", manifest.model_file)] + [
        (f"{t.name} engine_model", t.engine_model) for t in manifest.targets if t.engine_model] + [
        ("prefill graph", graph.file) for graph in [manifest.prefill_graph] if graph]
    for what, rel in named:
        if rel not in manifest.files:
            raise PackageError(name, f"{what} {rel} is not listed in the manifest")
    for rel, record in manifest.files.items():
        _check_file(package_dir, rel, record)


def open_package(package_dir: Path) -> Manifest:
    """Reads and verifies a package: the daemon's only way in."""
    manifest = read_manifest(package_dir)
    verify_files(package_dir, manifest)
    return manifest


def _has_manifest(folder: Path) -> bool:
    try:
        return (folder / MANIFEST_NAME).is_file()
    except PermissionError:
        return True  # served, so that it shows as failed with the file named instead of vanishing


def find_packages(models_dir: Path) -> list[Path]:
    """Every direct subfolder holding a manifest; a package is served under its folder name.
    Hidden folders are skipped quietly: the exporter stages a package in one before renaming it
    into place. Other folders without a manifest are skipped with a log line naming them."""
    packages = []
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _has_manifest(folder):
            packages.append(folder)
        else:
            log.warning("folder %s has no %s; not served", folder.name, MANIFEST_NAME)
    return packages


def package_stamp(package_dir: Path) -> tuple:
    """What a reload compares to notice files changed in place under an unchanged manifest: each
    file's path, size, mtime, ctime and inode (stat only, so cheap for any package size). ctime and
    the inode cannot be set back (cp -p, touch -r, rsync -t keep mtime and size, not these), so
    any rewrite shows. A changed stamp is only the trigger: the registry then re-checks every
    sha256 before it calls the package unchanged."""
    entries = []
    for path in sorted(package_dir.rglob("*")):
        try:
            stat = path.stat()
        except OSError:
            continue  # gone or unreadable: its absence changes the stamp, verification names it
        entries.append((path.relative_to(package_dir).as_posix(), stat.st_size, stat.st_mtime_ns,
                        stat.st_ctime_ns, stat.st_ino))
    return tuple(entries)


def validation_status(manifest: Manifest) -> str:
    """"passed", "failed" (written with --force), "skipped" (with the manifest's reason, e.g. an
    fp16 package exported on a host without a GPU) or "unknown" (no figures recorded)."""
    figures = manifest.validation
    if figures.get("kind") == "skipped":  # before the exporter recorded "passed": null, it said true
        return "skipped"
    if figures.get("passed") is True:
        return "passed"
    return "failed" if figures.get("passed") is False else "unknown"


def package_version(package_dir: Path) -> str:
    """A package's build id: the start of its manifest's SHA-256. The manifest records every
    file's digest, so a changed file that still verifies means a changed manifest."""
    try:
        return hashlib.sha256((package_dir / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
    except OSError:
        return ""
