import json
import shutil

import pytest

from appliance.errors import PackageError
from appliance.model_package import find_packages, open_package, read_manifest


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
