import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from appliance.errors import PackageError
from appliance.model_package import find_packages, open_package, read_manifest, validation_status


@pytest.fixture
def package(models_dir, tmp_path):
    copy = tmp_path / "llama"
    shutil.copytree(models_dir / "llama", copy)
    return copy


def test_a_fresh_package_verifies(package):
    manifest = open_package(package)
    assert manifest.task == "text-generation"
    assert manifest.kv_layout.shared_buffer
    assert "model.onnx" in manifest.files and "tokenizer.json" in manifest.files


def test_changed_weights_are_refused_naming_the_file(package):
    data = package / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(PackageError, match=r"model\.onnx\.data does not match its sha256"):
        open_package(package)


def test_truncated_file_is_refused_with_its_size(package):
    model = package / "model.onnx"
    model.write_bytes(model.read_bytes()[:50])
    with pytest.raises(PackageError, match=r"model\.onnx has 50 bytes"):
        open_package(package)


def test_missing_file_is_refused(package):
    (package / "tokenizer.json").unlink()
    with pytest.raises(PackageError, match="tokenizer.json is missing"):
        open_package(package)


def test_unknown_schema_is_refused(package):
    path = package / "manifest.json"
    raw = json.loads(path.read_text())
    raw["schema_version"] = 99
    path.write_text(json.dumps(raw))
    with pytest.raises(PackageError, match="schema_version 99 is not supported"):
        read_manifest(package)


def test_manifest_with_a_bad_field_names_it(package):
    path = package / "manifest.json"
    raw = json.loads(path.read_text())
    raw["context_length"] = "long"
    path.write_text(json.dumps(raw))
    with pytest.raises(PackageError, match="field context_length"):
        read_manifest(package)


def test_only_folders_with_a_manifest_are_packages(models_dir, tmp_path):
    (tmp_path / "not-a-package").mkdir()
    shutil.copytree(models_dir / "llama", tmp_path / "llama")
    assert [p.name for p in find_packages(tmp_path)] == ["llama"]


def _vouch_for(package, manifest: dict, rel: str, real_file) -> None:
    """Lists `rel` in the manifest with the size and sha256 of `real_file`, as a lying manifest would."""
    from appliance.model_package import sha256_of

    manifest["files"][rel] = {"sha256": sha256_of(real_file), "size": real_file.stat().st_size}
    (package / "manifest.json").write_text(json.dumps(manifest))


def test_an_absolute_path_in_files_is_refused_as_escaping(package, tmp_path):
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"not part of the package")
    _vouch_for(package, json.loads((package / "manifest.json").read_text()), str(outside), outside)
    with pytest.raises(PackageError, match=f"file {outside} escapes the package"):
        open_package(package)


def test_an_absolute_path_into_the_package_itself_is_refused(package):
    inside = package / "tokenizer.json"
    _vouch_for(package, json.loads((package / "manifest.json").read_text()), str(inside.resolve()), inside)
    with pytest.raises(PackageError, match="escapes the package"):
        open_package(package)


def test_a_dotdot_path_is_refused_as_escaping_not_missing(package, tmp_path):
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"beside the package")
    _vouch_for(package, json.loads((package / "manifest.json").read_text()), "../elsewhere.bin", outside)
    with pytest.raises(PackageError, match=r"file \.\./elsewhere\.bin escapes the package"):
        open_package(package)


def test_a_symlink_out_of_the_package_is_refused(package, tmp_path):
    # Same bytes as the real tokenizer, so only where the file lives is wrong.
    outside = tmp_path / "tokenizer-elsewhere.json"
    shutil.copy(package / "tokenizer.json", outside)
    (package / "tokenizer.json").unlink()
    (package / "tokenizer.json").symlink_to(outside)
    with pytest.raises(PackageError, match="file tokenizer.json escapes the package"):
        open_package(package)


def test_a_symlinked_folder_out_of_the_package_is_refused(package, tmp_path):
    engines = tmp_path / "engines-elsewhere"
    engines.mkdir()
    (engines / "plan.bin").write_bytes(b"engine")
    (package / "engines").symlink_to(engines)
    _vouch_for(package, json.loads((package / "manifest.json").read_text()), "engines/plan.bin", engines / "plan.bin")
    with pytest.raises(PackageError, match="file engines/plan.bin escapes the package"):
        open_package(package)


def test_a_symlink_within_the_package_is_allowed(package):
    (package / "tokenizer-link.json").symlink_to("tokenizer.json")
    _vouch_for(package, json.loads((package / "manifest.json").read_text()), "tokenizer-link.json",
               package / "tokenizer.json")
    assert "tokenizer-link.json" in open_package(package).files


def test_a_symlink_loop_is_refused_naming_the_file(package):
    (package / "loop-a").symlink_to("loop-b")
    (package / "loop-b").symlink_to("loop-a")
    _vouch_for(package, json.loads((package / "manifest.json").read_text()), "loop-a", package / "tokenizer.json")
    with pytest.raises(PackageError, match="file 'loop-a' is not a usable path"):
        open_package(package)


def test_an_engine_model_outside_the_files_is_refused(package):
    path = package / "manifest.json"
    raw = json.loads(path.read_text())
    raw["targets"].append({"name": "tensorrt", "onnxruntime_version": "1", "engine_model": "/tmp/model_ctx.onnx"})
    path.write_text(json.dumps(raw))
    with pytest.raises(PackageError, match="engine_model /tmp/model_ctx.onnx is not listed"):
        open_package(package)


@pytest.fixture
def deny_reading(monkeypatch):
    """Makes reading the given files fail with EACCES, as for an account without read permission.
    Patched rather than chmod-ed: the tests may run as root, whom file modes do not stop."""
    denied: set[Path] = set()
    real_open = Path.open

    def guarded_open(self, *args, **kwargs):
        if self.resolve() in denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded_open)
    return lambda path: denied.add(path.resolve())


def test_an_unreadable_file_is_named_with_the_reason(package, deny_reading):
    deny_reading(package / "model.onnx.data")
    with pytest.raises(PackageError, match=r"file model\.onnx\.data cannot be read \(Permission denied\)"):
        open_package(package)


def test_an_unreadable_manifest_is_named_with_the_reason(package, deny_reading):
    deny_reading(package / "manifest.json")
    with pytest.raises(PackageError, match=r"manifest\.json cannot be read \(Permission denied\)"):
        read_manifest(package)


def test_folders_without_a_manifest_are_logged_by_name(models_dir, tmp_path, caplog):
    (tmp_path / "not-a-package").mkdir()
    (tmp_path / ".llama.partial-x").mkdir()  # the exporter's staging folder: skipped quietly
    shutil.copytree(models_dir / "llama", tmp_path / "llama")
    with caplog.at_level(logging.WARNING, logger="appliance.model_package"):
        assert [p.name for p in find_packages(tmp_path)] == ["llama"]
    assert [r.getMessage() for r in caplog.records] == ["folder not-a-package has no manifest.json; not served"]


@pytest.mark.parametrize("validation,status", [
    ({"kind": "decoder", "passed": True}, "passed"),
    ({"kind": "encoder", "passed": False}, "failed"),
    ({"kind": "skipped", "reason": "needs a CUDA device", "passed": None}, "skipped"),
    ({"kind": "skipped", "reason": "needs a CUDA device", "passed": True}, "skipped"),  # what older exporters wrote
    ({}, "unknown"),
])
def test_a_skipped_validation_is_never_taken_for_a_pass(package, validation, status):
    manifest = open_package(package).model_copy(update={"validation": validation})
    assert validation_status(manifest) == status


def test_the_daemon_serves_a_package_whose_validation_was_skipped_and_says_so(models_dir, tmp_path, caplog):
    from appliance.engine.providers import RuntimeOptions
    from appliance.registry import ModelRegistry, ModelState

    served = tmp_path / "models"
    shutil.copytree(models_dir / "minilm", served / "minilm")
    path = served / "minilm" / "manifest.json"  # the manifest lists no hash of itself
    raw = json.loads(path.read_text())
    raw["validation"] = {"kind": "skipped", "reason": "fp16 graphs for cuda need a CUDA device to validate",
                         "passed": None}
    path.write_text(json.dumps(raw))
    registry = ModelRegistry(served, RuntimeOptions(intra_op_threads=1))
    with caplog.at_level(logging.WARNING, logger="appliance.registry"):
        registry.load_all()
    try:
        assert registry.lookup("minilm").state is ModelState.READY
        assert "model minilm was not validated at export: fp16 graphs for cuda need a CUDA device to validate" in [
            r.getMessage() for r in caplog.records]
    finally:
        registry.close()
