"""Quantization that keeps the model: decoder floors, broken graphs refused, the sensitivity pass,
mixed precision and the int8 recipes (issue 19)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from appliance.model_package import open_package
from export.graph_info import matmul_nbits_nodes
from tests.conftest import export_or_fail, run_export


def test_logit_figures_tell_a_close_graph_from_a_far_one():
    from export.validate import logit_figures

    rng = np.random.default_rng(0)
    reference = rng.normal(0, 3, (8, 200))
    same = logit_figures(reference, reference)
    assert same["logits_cosine_min"] == pytest.approx(1.0) and same["top5_overlap"] == 1.0
    assert same["kl_max"] == pytest.approx(0.0, abs=1e-12)
    close = logit_figures(reference + rng.normal(0, 0.05, reference.shape), reference)
    far = logit_figures(rng.normal(0, 3, reference.shape), reference)
    assert close["logits_cosine_min"] > 0.99 > 0.5 > far["logits_cosine_min"]
    assert close["kl_max"] < 0.05 < 1.0 < far["kl_max"]
    assert far["top5_overlap"] < 0.3 < 0.8 < close["top5_overlap"]


def test_nan_logits_fail_every_floor():
    from export.validate import failures

    figures = {"kind": "decoder", "greedy_tokens": 32, "greedy_prefix_match": 0, "logits_rel_diff": float("nan"),
               "logits_cosine_mean": float("nan"), "top5_overlap": 0.9, "kl_mean": float("nan")}
    problems = failures(figures, "text-generation", "int4")
    assert any("cosine" in p for p in problems) and any("KL" in p for p in problems)


@pytest.mark.parametrize("precision,fault", [("int8", "wrong_scales"), ("int4", "dropped_layer")])
def test_a_broken_quantized_decoder_is_refused_unless_forced(sources, tmp_path, monkeypatch, capsys, precision, fault):
    from export import builder_backend, cli
    from export.broken_quantization import break_graph

    real_build = builder_backend.build

    def broken_build(source, staging, *args, **kwargs):
        fields = real_build(source, staging, *args, **kwargs)
        assert break_graph(staging / fields.model_file, fault) > 0
        return fields

    monkeypatch.setattr(builder_backend, "build", broken_build)
    out = tmp_path / "out"
    assert cli.main([str(sources["llama"]), "--output", str(out), "--precision", precision]) == 1
    err = capsys.readouterr().err
    assert "validation failed:" in err and ("top-5" in err or "KL" in err or "cosine" in err), err
    assert list(tmp_path.iterdir()) == []


def test_a_broken_quantized_real_minilm_is_refused(models_dir, sources, tmp_path):
    from export import validate
    from export.broken_quantization import break_graph
    from export.progress import Phases

    package = tmp_path / "minilm"
    shutil.copytree(models_dir / "minilm", package)
    manifest = open_package(package)
    assert validate.failures(manifest.validation, manifest.task, manifest.precision) == []
    assert break_graph(package / manifest.model_file, "wrong_scales") > 0
    figures = validate.run(sources["minilm"], package, manifest, Phases(quiet=True))
    problems = validate.failures(figures, manifest.task, manifest.precision)
    assert problems and "mean embedding cosine" in problems[0]


@pytest.fixture(scope="module")
def mixed_bert(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "bert-int4"
    return export_or_fail(sources["bert-classifier"], out, "--precision", "int4", "--keep-sensitive", "3")


def test_keep_sensitive_keeps_the_most_sensitive_matmuls_at_int8(mixed_bert):
    manifest = open_package(mixed_bert)
    q = manifest.quantization
    table = q["sensitivity"]["nodes"]
    most_sensitive = {row["node"] for row in table[:3]}
    assert {node for node, p in q["nodes"].items() if p == "int8"} == most_sensitive
    assert {p for node, p in q["nodes"].items() if node not in most_sensitive} == {"int4"}
    assert q["mixed_precision"] == {"rule": "keep_sensitive=3", "kept_precision": "int8", "kept": 3, "tried": []}
    # The graph holds what the manifest lists, node by node.
    bits = {node: settings[0] for node, settings in matmul_nbits_nodes(mixed_bert / manifest.model_file).items()}
    assert bits == {node: int(p[3:]) for node, p in q["nodes"].items()}


def test_inspect_prints_the_sensitivity_table_and_precisions(mixed_bert):
    done = run_export("inspect", str(mixed_bert))
    assert done.returncode == 0, done.stderr
    manifest = open_package(mixed_bert)
    lines = done.stdout.splitlines()
    assert "keep_sensitive=3, 3 MatMuls kept at int8" in done.stdout
    first = manifest.quantization["sensitivity"]["nodes"][0]["node"]
    row = next(line for line in lines if line.endswith(" " + first))
    assert " int8 " in row
    as_json = json.loads(run_export("inspect", str(mixed_bert), "--json").stdout)
    assert as_json["quantization"]["nodes"] == manifest.quantization["nodes"]


def test_inspect_reads_a_package_without_a_sensitivity_table(models_dir):
    done = run_export("inspect", str(models_dir / "llama"))
    assert done.returncode == 0, done.stderr
    assert "recipe: none (fp32)" in done.stdout and "greedy_prefix_match=32" in done.stdout


def test_min_cosine_keeps_the_fewest_that_reach_it(sources, tmp_path):
    out = export_or_fail(sources["gpt2"], tmp_path / "gpt2", "--precision", "int4", "--min-cosine", "0.9995")
    mixed = open_package(out).quantization["mixed_precision"]
    reached = {row["kept"]: row["cosine_mean"] >= 0.9995 for row in mixed["tried"]}
    assert mixed["rule"] == "min_cosine=0.9995"
    assert all(not ok for kept, ok in reached.items() if kept < mixed["kept"])
    assert reached.get(mixed["kept"], mixed["kept"] == len(open_package(out).quantization["nodes"]))


@pytest.mark.parametrize("method,record", [
    # The old default, unchanged code: kept out of make test's time budget.
    pytest.param("dynamic", {"method": "dynamic", "per_channel": True}, marks=pytest.mark.slow),
    ("static", {"method": "static", "format": "QDQ", "per_channel": True,
                "calibration_file": "built-in validation texts"}),
])
def test_the_other_int8_recipes_stay_selectable(sources, tmp_path, method, record):
    manifest = open_package(export_or_fail(sources["bert"], tmp_path / method, "--precision", "int8",
                                           "--quant-method", method))
    assert record.items() <= manifest.quantization.items()
    assert manifest.validation["passed"] is True


@pytest.mark.parametrize("name,args,message", [
    ("llama", ["--precision", "int4", "--embeddings", "int8"],
     "--embeddings is not used by --quant-method rtn on the builder backend"),
    ("bert", ["--precision", "int4", "--quant-method", "gptq", "--calibration-file", "CALIBRATION",
              "--min-cosine", "0.99"], "--min-cosine is not used by --quant-method gptq"),
    ("bert", ["--precision", "int4", "--keep-sensitive", "2", "--min-cosine", "0.99"],
     "--keep-sensitive and --min-cosine both choose the kept MatMuls; give one"),
    ("bert", ["--precision", "int4", "--min-cosine", "1.5"], "--min-cosine 1.5 is not a cosine in (0, 1]"),
    ("bert", ["--precision", "int8", "--quant-method", "dynamic", "--block-size", "64"],
     "--block-size is not used by --quant-method dynamic on the optimum backend"),
    ("bert", ["--precision", "fp32", "--embeddings", "int8"], "--embeddings does not apply to --precision fp32"),
])
def test_mixed_precision_options_are_refused_where_they_would_be_ignored(sources, tmp_path, capsys, name, args,
                                                                         message):
    from export import cli

    calibration = tmp_path / "calibration.txt"
    calibration.write_text("Where is my order?\n")
    args = [str(calibration) if a == "CALIBRATION" else a for a in args]
    assert cli.main([str(sources[name]), "--output", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_validation_does_not_load_the_daemons_registry():
    code = "import sys, export.validate; print('appliance.registry' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_precision_auto_writes_the_smallest_package_that_passes_and_records_what_it_tried(sources, tmp_path):
    done = run_export(str(sources["bert"]), "--output", str(tmp_path / "auto"), "--precision", "auto", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    manifest = open_package(tmp_path / "auto")
    tried = manifest.quantization["auto"]["tried"]
    assert [row["precision"] for row in tried] == ["int4", "int8", "fp32"]
    assert all(row["passed"] and row["encode_ms"] > 0 and row["validation"]["cosine_mean"] > 0.99 for row in tried)
    smallest = min(tried, key=lambda row: row["package_bytes"])
    assert manifest.precision == summary["precision"] == smallest["precision"]
    assert summary["quantization"]["auto"]["goal"] == "size"


@pytest.mark.parametrize("args,message", [
    (["--precision", "auto", "--block-size", "64"], "--block-size does not apply to --precision auto"),
    (["--precision", "int8", "--goal", "speed"], "--goal applies to --precision auto only"),
    (["--precision", "auto", "--target", "cuda"], "--precision auto measures on this host's CPU"),
])
def test_precision_auto_refuses_what_it_would_ignore(sources, tmp_path, capsys, args, message):
    from export import cli

    assert cli.main([str(sources["bert"]), "--output", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
