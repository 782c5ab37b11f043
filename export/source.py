"""Finding the model to export: a local Hugging Face folder, or a hub id where a hub is reachable."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from appliance.model_package import Source

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


class ExportError(Exception):
    """A clear, one-line reason the export cannot go on; the CLI prints it and exits 1."""


@dataclass(frozen=True)
class ModelSource:
    path: Path
    config: dict
    record: Source

    @property
    def model_type(self) -> str:
        return self.config.get("model_type", "")

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])


def _download(hub_id: str, revision: Optional[str]) -> Path:
    # huggingface_hub honours HF_HUB_OFFLINE: offline hosts get a clear error, never a fetch.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py"]))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as exc:
        raise ExportError(f"{hub_id} is neither a local folder nor a model the hub could give ({exc.__class__.__name__})") from None


def resolve_source(source: str, revision: Optional[str] = None) -> ModelSource:
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"{source} is a file; give the model's folder")
        record = Source(path=str(path.resolve()), revision=revision)
    elif source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ExportError(f"{source} does not exist")
    else:
        path = _download(source, revision)
        record = Source(hub_id=source, revision=revision)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{source} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_path} is not valid JSON (line {exc.lineno})") from None
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ExportError(f"{source} holds no weights (*.safetensors or pytorch_model*.bin)")
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights)
    return ModelSource(path, config, record)


def check_safetensors(path: Path) -> None:
    """Refuses a truncated or corrupt safetensors file before any exporter trips over it.

    The format is an 8-byte little-endian header length, a JSON header whose entries give each
    tensor's byte range, then the data: the file must hold the header and every range.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ExportError(f"{path.name} is truncated ({size} bytes)")
        header_len = int.from_bytes(prefix, "little")
        if header_len > size - 8:
            raise ExportError(f"{path.name} is truncated: its header needs {header_len} bytes, the file has {size}")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ExportError(f"{path.name} is corrupt: its header is not valid JSON") from None
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    needed = 8 + header_len + max(ends, default=0)
    if size < needed:
        raise ExportError(f"{path.name} is truncated: {size} bytes, its header describes {needed}")
