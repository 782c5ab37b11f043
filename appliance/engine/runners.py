"""Picks the runner a decoder package needs from its manifest's KV layout."""

from __future__ import annotations

from pathlib import Path

from appliance.engine.concat_kv_runner import ConcatKVRunner
from appliance.engine.providers import RuntimeOptions
from appliance.engine.shared_kv_runner import SharedKVRunner
from appliance.errors import PackageError
from appliance.model_package import Manifest


def open_decoder_runner(package_dir: Path, manifest: Manifest, options: RuntimeOptions, max_batch: int = 1,
                        max_context: int = 0):
    if manifest.kv_layout is None:
        raise PackageError(package_dir.name, "text-generation package has no kv_layout")
    runner_class = SharedKVRunner if manifest.kv_layout.shared_buffer else ConcatKVRunner
    return runner_class(package_dir, manifest, options, max_batch=max_batch, context_length=max_context or None)
