"""Tampered and broken packages: each is refused with a reason that names the file or field at
fault (ListModels and GetModel show it FAILED), and the daemon keeps serving the good package."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from appliance.client import ApplianceClient
from appliance.model_package import sha256_of
from appliance.server.config import load_config
from tests.conftest import InProcessDaemon, free_port

ENGINE = "engines/tensorrt/model_ctx.onnx"


def _manifest(pkg: Path) -> dict:
    return json.loads((pkg / "manifest.json").read_text())


def _write_manifest(pkg: Path, manifest: dict) -> None:
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _rehash(pkg: Path, manifest: dict, rel: str) -> None:
    """Makes the manifest vouch for the file as it is now (a consistent but broken package)."""
    manifest["files"][rel] = {"sha256": sha256_of(pkg / rel), "size": (pkg / rel).stat().st_size}


def weights_byte(pkg):
    with (pkg / "model.onnx.data").open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0x01]))


def truncated_onnx(pkg):
    data = (pkg / "model.onnx").read_bytes()
    (pkg / "model.onnx").write_bytes(data[: len(data) // 2])


def truncated_onnx_rehashed(pkg):
    truncated_onnx(pkg)
    manifest = _manifest(pkg)
    _rehash(pkg, manifest, "model.onnx")
    _write_manifest(pkg, manifest)


def lying_output_shape(pkg):
    manifest = _manifest(pkg)
    logits = next(o for o in manifest["io"]["outputs"] if o["name"] == "logits")
    logits["shape"][-1] = 999
    _write_manifest(pkg, manifest)


def lying_input_names(pkg):
    manifest = _manifest(pkg)
    manifest["io"]["inputs"][1]["name"] = "position_ids"
    _write_manifest(pkg, manifest)


def lying_kv_layout(pkg):
    manifest = _manifest(pkg)
    manifest["kv_layout"]["num_kv_heads"] += 1
    _write_manifest(pkg, manifest)


def foreign_tensorrt_engine(pkg):
    """A TensorRT engine built on another GPU, as the exporter records one."""
    (pkg / ENGINE).parent.mkdir(parents=True)
    (pkg / ENGINE).write_bytes(b"EPContext model built elsewhere")
    manifest = _manifest(pkg)
    _rehash(pkg, manifest, ENGINE)
    manifest["targets"].append({"name": "tensorrt", "onnxruntime_version": manifest["targets"][0]["onnxruntime_version"],
                                "compute_capability": "7.5", "tensorrt_version": "8.6.1", "gpu_name": "Tesla T4",
                                "engine_model": ENGINE, "profiles": None})
    _write_manifest(pkg, manifest)


def missing_tokenizer(pkg):
    (pkg / "tokenizer.json").unlink()


def garbage_manifest(pkg):
    (pkg / "manifest.json").write_bytes(os.urandom(512))


def unknown_schema(pkg):
    manifest = _manifest(pkg)
    manifest["schema_version"] = 99
    _write_manifest(pkg, manifest)


def escaping_file(pkg):
    manifest = _manifest(pkg)
    manifest["files"]["../llama/model.onnx"] = manifest["files"]["model.onnx"]
    _write_manifest(pkg, manifest)


def absolute_path(pkg):
    """A file named by its absolute path, with its true hash: it exists, it verifies, it is not the package's."""
    manifest = _manifest(pkg)
    outside = pkg.parent / "llama" / "model.onnx"
    manifest["files"][str(outside)] = {"sha256": sha256_of(outside), "size": outside.stat().st_size}
    _write_manifest(pkg, manifest)


def symlink_out(pkg):
    """tokenizer.json as a symlink to identical bytes outside the package."""
    (pkg / "tokenizer.json").unlink()
    (pkg / "tokenizer.json").symlink_to(pkg.parent / "llama" / "tokenizer.json")


def unreadable_weights(pkg):
    """The weights unreadable by the daemon's account (see broken_daemon for how)."""
    return pkg / "model.onnx.data"


# name: (how it is broken, words the error must hold)
BROKEN = {
    "weights-byte": (weights_byte, ["model.onnx.data", "sha256"]),
    "truncated-onnx": (truncated_onnx, ["model.onnx", "bytes"]),
    "truncated-onnx-rehashed": (truncated_onnx_rehashed, ["model.onnx"]),
    "lying-output-shape": (lying_output_shape, ["logits", "999"]),
    "lying-input-names": (lying_input_names, ["position_ids"]),
    "lying-kv-layout": (lying_kv_layout, ["kv_layout"]),
    "foreign-tensorrt": (foreign_tensorrt_engine, [ENGINE, "7.5"]),
    "missing-tokenizer": (missing_tokenizer, ["tokenizer.json", "missing"]),
    "garbage-manifest": (garbage_manifest, ["manifest.json", "JSON"]),
    "unknown-schema": (unknown_schema, ["schema_version", "99"]),
    "escaping-file": (escaping_file, ["../llama/model.onnx", "escapes the package"]),
    "absolute-path": (absolute_path, ["llama/model.onnx", "escapes the package"]),
    "symlink-out": (symlink_out, ["tokenizer.json", "escapes the package"]),
    "unreadable-weights": (unreadable_weights, ["model.onnx.data", "cannot be read", "Permission denied"]),
}


def _deny_reading(monkeypatch: pytest.MonkeyPatch, paths: set[Path]) -> None:
    """Reading these files fails with EACCES, as for an account without read permission. Patched
    rather than chmod-ed: the suite may run as root, whom file modes do not stop."""
    real_open = Path.open

    def guarded_open(self, *args, **kwargs):
        if self.resolve() in paths:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded_open)


@pytest.fixture(scope="module")
def broken_daemon(models_dir, tmp_path_factory):
    served = tmp_path_factory.mktemp("broken-packages")
    shutil.copytree(models_dir / "llama", served / "llama")
    shutil.copytree(models_dir / "minilm", served / "minilm")
    denied = set()
    for name, (breaking, _) in BROKEN.items():
        shutil.copytree(models_dir / "llama", served / name)
        if (unreadable := breaking(served / name)) is not None:
            denied.add(unreadable.resolve())
    # TensorRT first, as on a GPU host: the engine check must run even where TensorRT is absent.
    config = load_config(None, {"server": {"models": served, "listen": f"127.0.0.1:{free_port()}"},
                                "runtime": {"intra_op_threads": 1, "providers": ("tensorrt", "cuda", "cpu")}})
    with pytest.MonkeyPatch.context() as monkeypatch:
        _deny_reading(monkeypatch, denied)
        with InProcessDaemon(config) as running:
            yield running


def test_broken_packages_are_refused_with_a_reason_and_the_rest_serves(broken_daemon, figures):
    with ApplianceClient(broken_daemon.target, timeout_s=60) as client:
        listed = {m.name: m for m in client.list_models()}
        refused = []
        for name, (_, words) in BROKEN.items():
            model = client.get_model(name)
            assert model == listed[name]
            named = all(w in model.error for w in words)
            figures.record(f"{name}: refused", f"{model.state}: {model.error}", "failed, names " + ", ".join(words),
                           model.state == "failed" and named)
            refused.append(model.state == "failed" and named)
        good = list(client.generate("llama", "the good package", max_tokens=4, ignore_eos=True))
        vectors = client.embed("minilm", ["still serving"])
    assert listed["llama"].state == "ready" and listed["minilm"].state == "ready"
    assert good[-1].completion_tokens == 4 and vectors.shape[0] == 1
    figures.record("good packages still serve", "llama, minilm", "ready and answering", True)
    assert all(refused), [n for n, ok in zip(BROKEN, refused) if not ok]
