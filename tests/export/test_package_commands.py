"""`appliance-export verify` and `inspect` on packages the session fixtures already exported.

They run in-process (`cli.main`): the commands' own exit codes and streams are what is under test,
and a fresh interpreter per call would only add seconds of imports."""

import json
import shutil

import pytest

from appliance.model_package import sha256_of
from export import cli


@pytest.fixture
def llama_copy(models_dir, tmp_path):
    """A copy of the session's llama package, for tests that damage it."""
    copy = tmp_path / "llama"
    shutil.copytree(models_dir / "llama", copy)
    return copy


def edit_manifest(package, change) -> None:
    manifest = json.loads((package / "manifest.json").read_text())
    change(manifest)
    (package / "manifest.json").write_text(json.dumps(manifest))


def test_verify_rechecks_hashes_and_validation(llama_copy, capsys):
    assert cli.main(["verify", str(llama_copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["validation"]["greedy_prefix_match"] == 32
    (llama_copy / "tokenizer.json").write_text("{}")
    assert cli.main(["verify", str(llama_copy)]) == 1
    assert "tokenizer.json" in capsys.readouterr().err


def test_verify_json_failures_are_json_too(llama_copy, capsys):
    (llama_copy / "tokenizer.json").write_text("{}")
    assert cli.main(["verify", str(llama_copy), "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["exit_code"] == 1 and "tokenizer.json" in printed["error"]


def test_verify_refuses_a_file_outside_the_package(llama_copy, tmp_path, capsys):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(llama_copy / "model.onnx", outside)
    edit_manifest(llama_copy, lambda m: m["files"].update(
        {str(outside): {"sha256": sha256_of(outside), "size": outside.stat().st_size}}))
    assert cli.main(["verify", str(llama_copy)]) == 1
    assert capsys.readouterr().err.strip() == (f"appliance-export verify: package llama: file {outside} "
                                               "escapes the package")


def test_verify_fails_when_the_source_no_longer_agrees(llama_copy, tmp_path, capsys):
    from export.tiny_models import make_decoder

    other = make_decoder(tmp_path / "src", "llama", seed=4)  # the package's shapes, other weights
    edit_manifest(llama_copy, lambda m: m["source"].update(path=str(other)))
    assert cli.main(["verify", str(llama_copy)]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("command,as_json", [("verify", False), ("verify", True), ("inspect", False)])
def test_a_damaged_package_ends_in_one_line_whatever_breaks(llama_copy, tmp_path, capsys, command, as_json):
    # A manifest that parses but holds what the code cannot use (a recipe table that is not one, a
    # source folder with no model in it): neither command may show a traceback.
    (tmp_path / "empty").mkdir()
    edit_manifest(llama_copy, lambda m: m.update(quantization={"sensitivity": "broken"},
                                                 source={**m["source"], "path": str(tmp_path / "empty")}))
    assert cli.main([command, str(llama_copy), *(["--json"] if as_json else [])]) == 1
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"appliance-export {command}: ")
    if as_json:
        assert json.loads(out)["exit_code"] == 1


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_usage_errors_exit_2_in_one_line(tmp_path, capsys, command):
    assert cli.main([command, str(tmp_path), "--no-such-flag"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
