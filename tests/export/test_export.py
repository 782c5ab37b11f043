"""appliance-export end to end: tiny random models of real architectures and the real MiniLM."""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from appliance.model_package import open_package, read_manifest, validation_status
from export.graph_info import matmul_nbits_settings
from tests.conftest import export_or_fail, run_export


def recipe_in_graph(package, manifest) -> tuple[set, set]:
    """What the manifest's recipe says every MatMulNBits node holds, next to what they hold."""
    q = manifest.quantization
    widths = {int(p[3:]) for p in q["nodes"].values() if p.startswith("int")} if "nodes" in q else {q["bits"]}
    wanted = {(bits, q["block_size"], q["accuracy_level"], q["symmetric"]) for bits in widths}
    return wanted, matmul_nbits_settings(package / manifest.model_file)

CPU_PRECISIONS = ("fp32", "int8", "int4")
MATRIX = [(name, backend, precision)
          for name, backend in (("llama", "builder"), ("qwen2", "builder"), ("phi3", "builder"),
                                ("mistral", "builder"), ("gpt2", "optimum"), ("bert", "optimum"))
          for precision in CPU_PRECISIONS]


# Exported with these very flags for the session's models folder (tests/conftest.py): read there.
IN_MODELS_DIR = {("llama", "fp32"), ("qwen2", "fp32"), ("gpt2", "fp32")}
# Exported with these very flags by a session fixture (tests/conftest.py) that other tests read too.
SESSION_PACKAGES = {("llama", "int4"): "llama_int4"}


@pytest.mark.parametrize("name,backend,precision", MATRIX)
def test_every_architecture_exports_at_every_cpu_precision(request, sources, models_dir, tmp_path, name, backend,
                                                           precision):
    if (name, precision) in IN_MODELS_DIR and (models_dir / name / "manifest.json").is_file():
        out = models_dir / name
    elif (name, precision) in SESSION_PACKAGES:
        out = request.getfixturevalue(SESSION_PACKAGES[name, precision])
    else:
        out = export_or_fail(sources[name], tmp_path / name, "--precision", precision)
    manifest = open_package(out)
    figures = manifest.validation
    assert manifest.backend == backend and manifest.precision == precision
    assert figures["passed"] is True
    if manifest.task == "text-generation":
        assert figures["greedy_tokens"] == 32
        assert 0.0 <= figures["greedy_token_agreement"] <= 1.0
        invariance = figures["batch_invariance"]
        # Measured with prompts of mixed lengths at odd and even batch sizes, on this host.
        assert invariance["holds"] is True and invariance["row_quantum"] in (1, 2, 4)
        assert len(set(invariance["prompt_lengths"])) > 1 and {2, 3} <= set(invariance["batch_sizes"])
        assert invariance["host"]["provider"] == "CPUExecutionProvider"
        if precision == "fp32":
            assert figures["logits_rel_diff"] < 1e-3
            assert figures["greedy_prefix_match"] == 32
    else:
        assert figures["cosine_mean"] > (0.9999 if precision == "fp32" else 0.9)
    if precision == "fp32":
        assert manifest.quantization == {}
    else:
        assert manifest.quantization["tool"].startswith(("onnxruntime", "onnxruntime_genai"))
    if manifest.quantization.get("op") == "MatMulNBits":
        # The recipe in the manifest is what the graph really holds.
        wanted, found = recipe_in_graph(out, manifest)
        assert found == wanted


def test_builder_packages_share_their_kv_buffer_and_optimum_decoders_do_not(models_dir):
    builder = open_package(models_dir / "llama")
    assert builder.kv_layout.shared_buffer and builder.kv_layout.num_layers == 2
    assert builder.eos_token_ids and builder.chat_template
    assert {t.name for t in builder.io.inputs} >= {"input_ids", "attention_mask", "past_key_values.0.key"}
    optimum = open_package(models_dir / "gpt2")
    assert not optimum.kv_layout.shared_buffer and optimum.kv_layout.num_kv_heads == 4


def test_int4_records_its_recipe_and_is_smaller(llama_int4_b128, models_dir):
    manifest = open_package(llama_int4_b128)
    assert manifest.quantization == {"method": "rtn", "op": "MatMulNBits", "bits": 4, "block_size": 128,
                                     "accuracy_level": 4, "symmetric": True,
                                     "tool": "onnxruntime_genai.models.builder"}
    fp32 = open_package(models_dir / "llama")
    assert manifest.files["model.onnx.data"].size < fp32.files["model.onnx.data"].size


def test_builder_k_quant_records_the_zero_points_it_writes(sources, tmp_path):
    out = export_or_fail(sources["llama"], tmp_path / "llama-kq", "--precision", "int4", "--quant-method", "k_quant")
    manifest = open_package(out)
    assert manifest.quantization["method"] == "k_quant" and manifest.quantization["symmetric"] is False
    wanted, found = recipe_in_graph(out, manifest)
    assert found == wanted


# k_quant and hqq write zero points whatever is asked; hqq's accuracy level is set on its nodes.
@pytest.mark.parametrize("method,extra,symmetric", [
    ("k_quant", [], False),
    ("hqq", ["--accuracy-level", "1", "--block-size", "64"], False),
    ("gptq", ["--calibration-file"], True),
])
def test_other_int4_methods_on_the_optimum_backend(sources, tmp_path, method, extra, symmetric):
    if extra[:1] == ["--calibration-file"]:
        calibration = tmp_path / "calibration.txt"
        calibration.write_text("Where is my order?\n我想退款。\nReset my password please.\n")
        extra = [*extra, str(calibration)]
    out = export_or_fail(sources["bert-classifier"], tmp_path / method, "--precision", "int4",
                         "--quant-method", method, *extra)
    manifest = open_package(out)
    assert manifest.quantization["method"] == method
    assert manifest.quantization["symmetric"] is symmetric
    wanted, found = recipe_in_graph(out, manifest)
    assert found == wanted
    if method == "gptq":
        assert manifest.quantization["calibration_file"] == "calibration.txt"
    assert manifest.validation["label_agreement"] >= 0.9


def test_gptq_without_a_calibration_file_is_refused(sources, tmp_path):
    done = run_export(str(sources["bert"]), "--output", str(tmp_path / "o"), "--precision", "int4",
                      "--quant-method", "gptq")
    assert done.returncode == 2 and "needs --calibration-file" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fails the test if an export backend starts: refusals must come before any of it."""
    from export import builder_backend, optimum_backend

    def heavy(*args, **kwargs):
        raise AssertionError("the export started before the request was refused")

    monkeypatch.setattr(builder_backend, "build", heavy)
    monkeypatch.setattr(optimum_backend, "export", heavy)


@pytest.mark.parametrize("name,args,message", [
    ("llama", ["--precision", "int4", "--quant-method", "hqq"],
     "--quant-method hqq is not implemented by the builder backend for --precision int4 (it implements rtn, k_quant)"),
    ("llama", ["--precision", "int8", "--quant-method", "k_quant"],
     "--quant-method k_quant is not implemented by the builder backend for --precision int8"),
    ("llama", ["--precision", "int4", "--calibration-file", "CALIBRATION"],
     "--calibration-file is not used by --quant-method rtn on the builder backend"),
    ("llama", ["--precision", "fp32", "--block-size", "128"],
     "--block-size does not apply to --precision fp32 on the builder backend"),
    ("bert", ["--precision", "int8", "--quant-method", "static", "--block-size", "128"],
     "--block-size is not used by --quant-method static on the optimum backend for --precision int8"),
    ("bert", ["--precision", "int8", "--quant-method", "dynamic", "--asymmetric"],
     "--asymmetric is not used by --quant-method dynamic on the optimum backend"),
    ("bert", ["--precision", "int8", "--quant-method", "gptq"],
     "--quant-method gptq is not implemented by the optimum backend for --precision int8 (it implements rtn, "
     "dynamic, static)"),
    ("bert", ["--precision", "fp32", "--accuracy-level", "1"], "--accuracy-level does not apply to --precision fp32"),
    ("bert", ["--precision", "int4", "--calibration-file", "CALIBRATION"],
     "--calibration-file is not used by --quant-method rtn on the optimum backend"),
    ("bert", ["--precision", "int4", "--quant-method", "gptq", "--calibration-file", "missing.txt"],
     "--calibration-file missing.txt does not exist"),
    ("bert", ["--precision", "fp16"], "--precision fp16 is for GPU targets"),
    ("llama", ["--precision", "fp16"], "--precision fp16 is for GPU targets"),
    ("gpt2", ["--backend", "builder"], "does not support gpt2; it supports: llama, mistral, qwen2"),
    ("bert", ["--backend", "builder"], "builds text-generation models only"),
    ("bert", ["--precision", "fp64"], "argument --precision: invalid choice: 'fp64'"),
])
def test_what_a_backend_does_not_implement_is_refused_before_any_work(sources, tmp_path, capsys, no_heavy_work,
                                                                       name, args, message):
    from export import cli

    calibration = tmp_path / "calibration.txt"
    calibration.write_text("Where is my order?\n")
    args = [str(calibration) if a == "CALIBRATION" else a for a in args]
    out = tmp_path / "out"
    assert cli.main([str(sources[name]), "--output", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("name,task,labels", [
    ("bert-classifier", "text-classification", ["refund", "delivery", "account"]),
    ("bert-tagger", "token-classification", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
])
def test_classification_packages_keep_their_labels(sources, tmp_path, name, task, labels):
    manifest = open_package(export_or_fail(sources[name], tmp_path / name))
    assert manifest.task == task and manifest.labels == labels
    assert manifest.validation["logits_rel_diff"] < 1e-3 and manifest.validation["label_agreement"] == 1.0


def test_real_minilm_int8_default_keeps_cosine_0995_at_under_half_the_size(models_dir):
    manifest = open_package(models_dir / "minilm")
    figures, q = manifest.validation, manifest.quantization
    assert figures["sentences"] >= 50
    assert figures["cosine_mean"] >= 0.995 and figures["cosine_min"] >= 0.985
    assert (q["method"], q["op"], q["bits"], q["embeddings"]["precision"]) == ("rtn", "MatMulNBits", 8, "int8")
    assert manifest.pooling.mode == "graph" and manifest.embedding_dim == 384
    # The per-node table, most sensitive first, and each node's precision.
    table = q["sensitivity"]["nodes"]
    assert len(table) == 36 and set(q["nodes"]) == {row["node"] for row in table}
    assert [row["cosine_mean"] for row in table] == sorted(row["cosine_mean"] for row in table)
    # Under half the fp32 package (90 MB): the embedding table shrinks with the MatMuls.
    assert sum(f.size for f in manifest.files.values()) < 45e6


def test_real_minilm_fp32_is_near_exact(minilm_fp32):
    assert open_package(minilm_fp32).validation["cosine_min"] > 0.9999


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


def test_fp16_on_cpu_is_refused_at_once_in_one_line(sources, tmp_path):
    done = run_export(str(sources["bert"]), "--output", str(tmp_path / "out"), "--precision", "fp16")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "appliance-export: --precision fp16 is for GPU targets (--target cuda or tensorrt); "
        "for cpu use fp32, int8 or int4"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,code,message", [
    (["SOURCE", "--precision", "fp16"], 2, "--precision fp16 is for GPU targets"),
    (["NOWHERE"], 1, "does not exist"),
    (["SOURCE", "--block-size", "7"], 2, "argument --block-size: invalid choice: 7"),
])
def test_json_failures_are_json_too(sources, tmp_path, args, code, message):
    args = [str(sources["bert"]) if a == "SOURCE" else str(tmp_path / "nowhere") if a == "NOWHERE" else a
            for a in args]
    done = run_export(*args, "--output", str(tmp_path / "out"), "--json")
    assert done.returncode == code
    printed = json.loads(done.stdout)
    assert printed["exit_code"] == code and message in printed["error"]
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def fp16_cuda_package(sources, tmp_path_factory):
    """bert at fp16 for the cuda target, exported under a umask of 077."""
    out = tmp_path_factory.mktemp("fp16") / "bert-fp16"
    done = subprocess.run([sys.executable, "-m", "export.cli", str(sources["bert"]), "--output", str(out),
                           "--precision", "fp16", "--target", "cuda"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, umask=0o077)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_packages_are_readable_by_the_service_account_whatever_the_umask(fp16_cuda_package):
    modes = {p.relative_to(fp16_cuda_package).as_posix() or ".": stat.S_IMODE(p.stat().st_mode)
             for p in [fp16_cuda_package, *fp16_cuda_package.rglob("*")]}
    assert modes["."] == 0o755 and modes["manifest.json"] == 0o644 and modes["model.onnx"] == 0o644
    assert {m for rel, m in modes.items() if (fp16_cuda_package / rel).is_file()} == {0o644}


def test_validation_skipped_without_a_gpu_is_recorded_as_skipped(fp16_cuda_package):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host validates fp16 packages on its GPU")
    manifest = open_package(fp16_cuda_package)
    assert manifest.validation["kind"] == "skipped" and "need a CUDA device" in manifest.validation["reason"]
    assert manifest.validation["passed"] is None and validation_status(manifest) == "skipped"
    done = run_export("verify", str(fp16_cuda_package))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{fp16_cuda_package}: ok (hashes; validation skipped: {manifest.validation['reason']})"


def test_a_graph_that_cannot_be_validated_here_must_still_load(tmp_path):
    # What a GPU-only package cannot prove on a CPU host, it can still show: that ONNX Runtime loads
    # it. The genai 0.15.2 builder's cuda fp32 graph names outputs no node produces; such a graph is
    # refused, where it used to be written with "validation skipped".
    import onnx
    from onnx import TensorProto, helper

    from export import validate

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    orphan = helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, [1])
    good = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    bad = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y, orphan]))
    onnx.save(good, tmp_path / "good.onnx")
    onnx.save(bad, tmp_path / "bad.onnx")
    assert validate._load_problem(tmp_path / "good.onnx") is None
    problem = validate._load_problem(tmp_path / "bad.onnx")
    assert problem and "present.0.key" in problem and "onnxruntime_src" not in problem
    skipped = {"kind": "skipped", "reason": "needs a GPU"}
    assert validate.failures(skipped, "text-generation", "fp32") == []
    assert validate.failures({**skipped, "load_error": problem}, "text-generation", "fp32") == [
        f"ONNX Runtime cannot load the graph: {problem}"]


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
