"""appliance-export end to end: tiny random models of real architectures and the real MiniLM."""

import json
import shutil

import pytest

from appliance.model_package import open_package, read_manifest
from tests.conftest import export_or_fail, run_export

CPU_PRECISIONS = ("fp32", "int8", "int4")
MATRIX = [(name, backend, precision)
          for name, backend in (("llama", "builder"), ("qwen2", "builder"), ("phi3", "builder"),
                                ("mistral", "builder"), ("gpt2", "optimum"), ("bert", "optimum"))
          for precision in CPU_PRECISIONS]


@pytest.mark.parametrize("name,backend,precision", MATRIX)
def test_every_architecture_exports_at_every_cpu_precision(sources, tmp_path, name, backend, precision):
    out = export_or_fail(sources[name], tmp_path / name, "--precision", precision)
    manifest = open_package(out)
    figures = manifest.validation
    assert manifest.backend == backend and manifest.precision == precision
    assert figures["passed"] is True
    if manifest.task == "text-generation":
        assert figures["greedy_tokens"] == 32
        assert 0.0 <= figures["greedy_token_agreement"] <= 1.0
        assert 0 <= figures["batched_greedy_match"] <= 32
        if precision == "fp32":
            assert figures["logits_rel_diff"] < 1e-3
            assert figures["greedy_prefix_match"] == 32
            assert figures["batch_invariant"] is True
    else:
        assert figures["cosine_mean"] > (0.9999 if precision == "fp32" else 0.9)
    if precision == "fp32":
        assert manifest.quantization == {}
    else:
        assert manifest.quantization["tool"].startswith(("onnxruntime", "onnxruntime_genai"))
    if manifest.quantization.get("op") == "MatMulNBits":
        from export.graph_info import matmul_nbits_widths

        # The recipe in the manifest is what the graph really holds.
        assert matmul_nbits_widths(out / manifest.model_file) == {manifest.quantization["bits"]}


def test_builder_packages_share_their_kv_buffer_and_optimum_decoders_do_not(models_dir, sources, tmp_path):
    builder = open_package(models_dir / "llama")
    assert builder.kv_layout.shared_buffer and builder.kv_layout.num_layers == 2
    assert builder.eos_token_ids and builder.chat_template
    assert {t.name for t in builder.io.inputs} >= {"input_ids", "attention_mask", "past_key_values.0.key"}
    optimum = open_package(export_or_fail(sources["gpt2"], tmp_path / "gpt2"))
    assert not optimum.kv_layout.shared_buffer and optimum.kv_layout.num_kv_heads == 4


def test_int4_records_its_recipe_and_is_smaller(sources, models_dir, tmp_path):
    out = export_or_fail(sources["llama"], tmp_path / "llama-int4", "--precision", "int4", "--block-size", "128")
    manifest = open_package(out)
    assert manifest.quantization == {"method": "rtn", "op": "MatMulNBits", "bits": 4, "block_size": 128,
                                     "accuracy_level": 4, "symmetric": True,
                                     "tool": "onnxruntime_genai.models.builder"}
    fp32 = open_package(models_dir / "llama")
    assert manifest.files["model.onnx.data"].size < fp32.files["model.onnx.data"].size


@pytest.mark.parametrize("method,extra", [("hqq", []), ("gptq", ["--calibration-file"])])
def test_other_int4_methods_on_the_optimum_backend(sources, tmp_path, method, extra):
    if extra:
        calibration = tmp_path / "calibration.txt"
        calibration.write_text("Where is my order?\n我想退款。\nReset my password please.\n")
        extra = [*extra, str(calibration)]
    out = export_or_fail(sources["bert-classifier"], tmp_path / method, "--precision", "int4",
                         "--quant-method", method, *extra)
    manifest = open_package(out)
    assert manifest.quantization["method"] == method
    if method == "gptq":
        assert manifest.quantization["calibration_file"] == "calibration.txt"
    assert manifest.validation["label_agreement"] >= 0.9


def test_gptq_without_a_calibration_file_is_refused(sources, tmp_path):
    done = run_export(str(sources["bert"]), "--output", str(tmp_path / "o"), "--precision", "int4",
                      "--quant-method", "gptq")
    assert done.returncode == 1 and "needs --calibration-file" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,task,labels", [
    ("bert-classifier", "text-classification", ["refund", "delivery", "account"]),
    ("bert-tagger", "token-classification", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
])
def test_classification_packages_keep_their_labels(sources, tmp_path, name, task, labels):
    manifest = open_package(export_or_fail(sources[name], tmp_path / name))
    assert manifest.task == task and manifest.labels == labels
    assert manifest.validation["logits_rel_diff"] < 1e-3 and manifest.validation["label_agreement"] == 1.0


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


def test_json_summary_is_machine_readable(sources, tmp_path):
    done = run_export(str(sources["bert"]), "--output", str(tmp_path / "b"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["task"] == "feature-extraction" and summary["validation"]["passed"] is True
    assert set(summary["timings"]) >= {"load", "export", "quantize", "validate", "publish"}
    assert summary["package_bytes"] == sum(summary["files"].values())


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-weights"]


def test_truncated_weights_are_a_clear_error(sources, tmp_path):
    broken = tmp_path / "truncated"
    shutil.copytree(sources["llama"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    done = run_export(str(broken), "--output", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "model.safetensors is truncated" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated"]


@pytest.mark.parametrize("name,args,message", [
    ("gpt2", ["--backend", "builder"], "does not support gpt2; it supports: llama, mistral, qwen2"),
    ("bert", ["--backend", "builder"], "builds text-generation models only"),
    ("bert", ["--precision", "fp16"], "fp16 is for GPU targets"),
])
def test_unsupported_requests_say_what_is_supported(sources, tmp_path, name, args, message):
    done = run_export(str(sources[name]), "--output", str(tmp_path / "out"), *args)
    assert done.returncode == 1
    assert message in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_architecture_asks_for_the_task(tmp_path, sources):
    odd = tmp_path / "odd"
    shutil.copytree(sources["bert"], odd)
    config = json.loads((odd / "config.json").read_text())
    config.update(model_type="made-up", architectures=["MadeUpModel"])
    (odd / "config.json").write_text(json.dumps(config))
    done = run_export(str(odd), "--output", str(tmp_path / "out"))
    assert done.returncode == 1 and "cannot tell the task of made-up" in done.stderr


def test_an_existing_output_needs_overwrite(sources, tmp_path):
    out = export_or_fail(sources["bert"], tmp_path / "pkg")
    before = read_manifest(out).created_at
    done = run_export(str(sources["bert"]), "--output", str(out))
    assert done.returncode == 1 and "--overwrite" in done.stderr
    assert read_manifest(out).created_at == before
    export_or_fail(sources["bert"], out, "--overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_refuses_to_replace_a_folder_that_is_not_a_package(sources, tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    done = run_export(str(sources["bert"]), "--output", str(target), "--overwrite")
    assert done.returncode == 1 and "not a model package" in done.stderr
    assert (target / "notes.txt").read_text() == "keep me"


def test_tensorrt_target_without_a_gpu_exits_2_with_one_line(sources, tmp_path):
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host can build TensorRT engines")
    done = run_export(str(sources["llama"]), "--output", str(tmp_path / "trt"), "--target", "tensorrt")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "tensorrt target needs" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_failed_validation_writes_nothing_unless_forced(sources, tmp_path, monkeypatch, capsys):
    from export import cli, validate

    monkeypatch.setattr(validate, "failures", lambda figures, task, precision: ["greedy tokens diverge at 3"])
    out = tmp_path / "out"
    assert cli.main([str(sources["bert"]), "--output", str(out)]) == 1
    assert "validation failed: greedy tokens diverge at 3" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "a package or staging folder was left behind"
    assert cli.main([str(sources["bert"]), "--output", str(out), "--force"]) == 0
    assert read_manifest(out).validation["passed"] is False


def test_verify_rechecks_hashes_and_validation(models_dir, tmp_path):
    copy = tmp_path / "llama"
    shutil.copytree(models_dir / "llama", copy)
    done = run_export("verify", str(copy), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["validation"]["greedy_prefix_match"] == 32
    (copy / "tokenizer.json").write_text("{}")
    done = run_export("verify", str(copy))
    assert done.returncode == 1 and "tokenizer.json" in done.stderr


def test_verify_fails_when_the_source_no_longer_agrees(tmp_path):
    from export.tiny_models import make_decoder

    source = make_decoder(tmp_path / "src", "llama", seed=3)
    out = export_or_fail(source, tmp_path / "pkg")
    shutil.rmtree(source)
    make_decoder(source, "llama", seed=4)  # same shapes, other weights
    done = run_export("verify", str(out))
    assert done.returncode == 1 and "FAILED" in done.stdout


def test_manifest_records_source_and_targets(models_dir, sources):
    manifest = read_manifest(models_dir / "qwen2")
    assert manifest.source.path == str(sources["qwen2"].resolve())
    assert manifest.targets[0].name == "cpu" and manifest.targets[0].onnxruntime_version


def test_a_hub_id_offline_is_a_clear_error_without_network(tmp_path):
    # HF_HUB_OFFLINE=1 (set by run_export) must be honoured: no download, a one-line reason.
    done = run_export("example-org/never-downloaded-model", "--output", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "neither a local folder nor a model the hub could give" in done.stderr
    assert list(tmp_path.iterdir()) == []
