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
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import PackageError

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


def read_manifest(package_dir: Path) -> Manifest:
    """Parses the manifest; refuses a missing file, bad JSON or an unknown schema version."""
    name = package_dir.name
    path = package_dir / MANIFEST_NAME
    if not path.is_file():
        raise PackageError(name, f"no {MANIFEST_NAME}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
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


def verify_files(package_dir: Path, manifest: Manifest) -> None:
    """Raises PackageError naming the first file that is missing, resized or changed."""
    name = package_dir.name
    if manifest.model_file not in manifest.files:
        raise PackageError(name, f"model file {manifest.model_file} is not listed in the manifest")
    for rel, record in manifest.files.items():
        path = package_dir / rel
        if ".." in Path(rel).parts or not path.is_file():
            raise PackageError(name, f"file {rel} is missing")
        size = path.stat().st_size
        if size != record.size:
            raise PackageError(name, f"file {rel} has {size} bytes, the manifest says {record.size}")
        if sha256_of(path) != record.sha256:
            raise PackageError(name, f"file {rel} does not match its sha256 in the manifest")


def open_package(package_dir: Path) -> Manifest:
    """Reads and verifies a package: the daemon's only way in."""
    manifest = read_manifest(package_dir)
    verify_files(package_dir, manifest)
    return manifest


def find_packages(models_dir: Path) -> list[Path]:
    """Every direct subfolder holding a manifest; a package is served under its folder name.
    Hidden folders are skipped: the exporter stages a package in one before renaming it into place."""
    return sorted(p for p in models_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_NAME).is_file())


def package_version(package_dir: Path) -> str:
    """A package's build id: the start of its manifest's SHA-256. The manifest records every
    file's digest, so a changed file that still verifies means a changed manifest."""
    try:
        return hashlib.sha256((package_dir / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
    except OSError:
        return ""
