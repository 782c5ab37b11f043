"""The sensitivity pass and mixed precision for builder-made decoders (issue 19)."""

import shutil

import pytest

from appliance.model_package import open_package
from export.graph_info import matmul_nbits_nodes
from export.quantize import QuantRecipe
from tests.conftest import export_or_fail, run_export


class _Quiet:
    def set_total(self, total):
        pass

    def advance(self, steps=1):
        pass


def _fp32_copy(models_dir, name, tmp_path):
    """A copy of the session's fp32 builder package (candidates are written beside its graph)."""
    from export.decoder_sensitivity import DecoderScorer

    folder = shutil.copytree(models_dir / name, tmp_path / name)
    manifest = open_package(folder)
    return folder, manifest, DecoderScorer(folder, manifest.model_file, manifest.kv_layout, manifest.context_length)


@pytest.fixture(scope="module")
def mixed_llama(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed-decoder") / "llama-int4"
    return export_or_fail(sources["llama"], out, "--precision", "int4", "--keep-sensitive", "2")


def test_the_fp32_graph_scores_itself_perfectly_and_qwen2s_groups_are_ranked_and_chosen(models_dir, tmp_path):
    from export.decoder_sensitivity import Candidates, choose, measure

    folder, manifest, scorer = _fp32_copy(models_dir, "qwen2", tmp_path)
    # Teacher forcing along its own greedy path gives the graph's free-running logits back: the
    # KV fed from step to step is the one the graph wrote.
    itself = scorer(folder / manifest.model_file)
    assert itself["logits_cosine_min"] == pytest.approx(1.0, abs=1e-9) and itself["top5_overlap"] == 1.0
    candidates = Candidates(folder, manifest.model_file, 4, QuantRecipe())
    groups, table = measure(scorer, candidates, _Quiet())
    layers = manifest.kv_layout.num_layers
    assert list(groups) == [f"/model/layers.{i}" for i in range(layers)] + ["/lm_head/MatMul"]
    assert sorted(row["group"] for row in table) == sorted(groups)
    cosines = [row["logits_cosine_mean"] for row in table]
    assert cosines == sorted(cosines) and cosines[0] < 0.999  # int4 moves every group's logits somewhat
    # --min-cosine keeps the fewest most sensitive groups at int8 that bring the graph there.
    target = 0.99
    rule, kept, tried = choose(scorer, candidates, groups, table, QuantRecipe(min_cosine=target))
    reached = {row["kept"]: row["cosine_mean"] >= target for row in tried}
    assert rule == f"min_cosine={target}" and kept == [row["group"] for row in table[:len(kept)]]
    assert all(not ok for count, ok in reached.items() if count < len(kept))
    assert reached.get(len(kept), len(kept) == len(groups))  # all of them where none reach it


def test_keep_sensitive_keeps_the_two_most_sensitive_groups_out_of_int4(mixed_llama):
    manifest = open_package(mixed_llama)
    q = manifest.quantization
    table = q["sensitivity"]["groups"]
    assert [row["logits_cosine_mean"] for row in table] == sorted(row["logits_cosine_mean"] for row in table)
    kept = {row["group"] for row in table[:2]}
    assert q["mixed_precision"]["kept_groups"] == [row["group"] for row in table[:2]]
    assert {g for g, p in q["groups"].items() if p == "int8"} == kept and set(q["groups"].values()) == {"int4", "int8"}
    # The graph holds what the manifest lists, node by node, and each node what its group got.
    bits = {node: settings[0] for node, settings in matmul_nbits_nodes(mixed_llama / manifest.model_file).items()}
    assert bits == {node: int(p[3:]) for node, p in q["nodes"].items()}
    for node, precision in q["nodes"].items():
        group = next(g for g in q["groups"] if node == g or node.startswith(g + "/"))
        assert precision == q["groups"][group], node


def test_the_mixed_packages_figures_are_its_own_and_beat_plain_int4(mixed_llama, models_dir, tmp_path):
    from export.decoder_sensitivity import Candidates

    folder, manifest, scorer = _fp32_copy(models_dir, "llama", tmp_path)
    mixed = open_package(mixed_llama)
    ours = scorer(mixed_llama / mixed.model_file)
    plain = scorer(Candidates(folder, manifest.model_file, 4, QuantRecipe()).mixed([]))
    assert ours["logits_cosine_mean"] > plain["logits_cosine_mean"] and ours["kl_mean"] < plain["kl_mean"]
    # The manifest's figures (against PyTorch) are the written graph's (against the fp32 graph,
    # itself within 1e-5 of PyTorch), not the plain int4 graph's.
    assert mixed.validation["passed"] is True
    assert mixed.validation["logits_cosine_mean"] == pytest.approx(ours["logits_cosine_mean"], abs=1e-4)


def test_inspect_prints_the_decoders_group_table(mixed_llama):
    done = run_export("inspect", str(mixed_llama))
    assert done.returncode == 0, done.stderr
    assert "keep_sensitive=2, 2 MatMul groups kept at int8" in done.stdout
    q = open_package(mixed_llama).quantization
    for row in q["sensitivity"]["groups"]:
        line = next(line for line in done.stdout.splitlines() if line.endswith(" " + row["group"]))
        assert f" {q['groups'][row['group']]} " in line and f"{row['logits_cosine_mean']:.6f}" in line


def test_a_broken_mixed_decoder_is_refused(mixed_llama, sources, tmp_path):
    from export import validate
    from export.broken_quantization import break_graph
    from export.progress import Phases

    package = shutil.copytree(mixed_llama, tmp_path / "broken")
    manifest = open_package(package)
    assert break_graph(package / manifest.model_file, "wrong_scales") > 0
    figures = validate.run(sources["llama"], package, manifest, Phases(quiet=True))
    problems = validate.failures(figures, manifest.task, manifest.precision)
    assert problems and any("cosine" in p or "KL" in p or "top-5" in p for p in problems), problems


def test_mixed_precision_for_a_gpu_target_is_refused_before_any_work(sources, tmp_path, capsys):
    from export import cli

    args = [str(sources["qwen2"]), "--output", str(tmp_path / "out"), "--precision", "int4", "--target", "cuda",
            "--min-cosine", "0.99"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--keep-sensitive and --min-cosine measure on this host's CPU" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # three builder exports
def test_precision_auto_takes_decoders_and_their_decode_speed(sources, tmp_path):
    import json

    done = run_export(str(sources["llama"]), "--output", str(tmp_path / "auto"), "--precision", "auto",
                      "--goal", "speed", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    tried = json.loads(done.stdout)["quantization"]["auto"]["tried"]
    assert [row["precision"] for row in tried] == ["int4", "int8", "fp32"]
    assert all(row["decode_tokens_per_s"] > 0 and row["prefill_ms"] > 0 and "kl_mean" in row["validation"]
               for row in tried)
    fastest = max((row for row in tried if row["passed"]), key=lambda row: row["decode_tokens_per_s"])
    assert open_package(tmp_path / "auto").precision == fastest["precision"]
