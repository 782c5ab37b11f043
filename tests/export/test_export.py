"""appliance-export end to end: tiny random decoders, a random BERT, the real all-MiniLM-L6-v2."""

import json

import pytest

from appliance.model_package import open_package, read_manifest
from tests.conftest import export_or_fail, run_export


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_fp32_decoders_match_pytorch(models_dir, name):
    manifest = open_package(models_dir / name)
    figures = manifest.validation
    assert figures["passed"] is True
    assert figures["logits_rel_diff"] < 1e-3
    assert figures["greedy_prefix_match"] == figures["greedy_tokens"] == 32
    assert manifest.backend == "builder" and manifest.architecture == name
    assert manifest.kv_layout.num_layers == 2 and manifest.kv_layout.shared_buffer
    assert manifest.eos_token_ids and manifest.chat_template
    assert {t.name for t in manifest.io.inputs} >= {"input_ids", "attention_mask", "past_key_values.0.key"}


def test_int4_records_its_recipe_and_agreement(sources, models_dir, tmp_path):
    out = export_or_fail(sources["llama"], tmp_path / "llama-int4", "--precision", "int4", "--block-size", "32")
    manifest = open_package(out)
    assert manifest.quantization == {"method": "rtn", "op": "MatMulNBits", "bits": 4, "block_size": 32,
                                     "accuracy_level": 4, "symmetric": True,
                                     "tool": "onnxruntime_genai.models.builder"}
    assert 0.0 <= manifest.validation["greedy_token_agreement"] <= 1.0
    fp32 = open_package(models_dir / "llama")
    assert manifest.files["model.onnx.data"].size < fp32.files["model.onnx.data"].size


def test_real_minilm_int8_keeps_cosine_099(models_dir):
    manifest = open_package(models_dir / "minilm")
    figures = manifest.validation
    assert figures["sentences"] >= 50
    assert figures["cosine_mean"] >= 0.99
    assert manifest.quantization["per_channel"] is True
    assert manifest.pooling.mode == "graph" and manifest.embedding_dim == 384


def test_real_minilm_fp32_is_near_exact(sources, tmp_path):
    out = export_or_fail(sources["minilm"], tmp_path / "minilm-fp32")
    assert open_package(out).validation["cosine_min"] > 0.9999


def test_random_bert_exports_with_mean_pooling(sources, tmp_path):
    out = export_or_fail(sources["bert"], tmp_path / "bert", "--json")
    manifest = open_package(out)
    assert manifest.task == "feature-extraction" and manifest.pooling.mode == "mean"
    assert manifest.validation["cosine_min"] > 0.9999


def test_json_summary_is_machine_readable(sources, tmp_path):
    done = run_export(str(sources["bert"]), "--output", str(tmp_path / "b"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["task"] == "feature-extraction" and summary["validation"]["passed"] is True
    assert set(summary["timings"]) >= {"load", "export", "validate"}


def test_missing_folder_is_a_clear_error(tmp_path):
    done = run_export(str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_folder_without_weights_is_a_clear_error(sources, tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text((sources["llama"] / "config.json").read_text())
    done = run_export(str(empty), "--output", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "holds no weights" in done.stderr
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_lists_the_supported_ones(sources, tmp_path):
    done = run_export(str(sources["bert"]), "--output", str(tmp_path / "out"), "--task", "text-generation")
    assert done.returncode == 1
    assert "llama" in done.stderr and "qwen2" in done.stderr


def test_failed_validation_writes_nothing_unless_forced(sources, tmp_path, monkeypatch, capsys):
    from export import cli, validate

    monkeypatch.setattr(validate, "failures", lambda figures, task, precision: ["greedy tokens diverge at 3"])
    out = tmp_path / "out"
    assert cli.main([str(sources["bert"]), "--output", str(out)]) == 1
    assert "validation failed: greedy tokens diverge at 3" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "a package or staging folder was left behind"
    assert cli.main([str(sources["bert"]), "--output", str(out), "--force"]) == 0
    assert read_manifest(out).validation["passed"] is False


def test_verify_fails_when_the_source_no_longer_agrees(sources, tmp_path):
    import shutil

    from export.tiny_models import make_decoder

    source = make_decoder(tmp_path / "src", "llama", seed=3)
    out = export_or_fail(source, tmp_path / "pkg")
    shutil.rmtree(source)
    make_decoder(source, "llama", seed=4)  # same shapes, other weights
    done = run_export("verify", str(out))
    assert done.returncode == 1 and "FAILED" in done.stdout


def test_refuses_to_replace_a_folder_that_is_not_a_package(sources, tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    done = run_export(str(sources["bert"]), "--output", str(target))
    assert done.returncode == 1 and "not a model package" in done.stderr
    assert (target / "notes.txt").read_text() == "keep me"


def test_verify_rechecks_hashes_and_validation(models_dir, tmp_path):
    import shutil

    copy = tmp_path / "llama"
    shutil.copytree(models_dir / "llama", copy)
    done = run_export("verify", str(copy), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["validation"]["greedy_prefix_match"] == 32
    (copy / "tokenizer.json").write_text("{}")
    done = run_export("verify", str(copy))
    assert done.returncode == 1 and "tokenizer.json" in done.stderr


def test_manifest_records_source_and_targets(models_dir, sources):
    manifest = read_manifest(models_dir / "qwen2")
    assert manifest.source.path == str(sources["qwen2"].resolve())
    assert manifest.targets[0].name == "cpu" and manifest.targets[0].onnxruntime_version
