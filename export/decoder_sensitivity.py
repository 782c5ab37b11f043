"""The sensitivity pass and mixed precision for builder-made decoders (`--keep-sensitive N`,
`--min-cosine X` on the builder backend).

The genai model builder quantizes in its own process, so the pass works around it: the builder
writes the fp32 graph (the same fused GroupQueryAttention graph), and here one MatMul group at a
time (one layer's attention and MLP projections, or the LM head) is quantized alone with
onnxruntime's MatMulNBitsQuantizer, the quantizer the builder itself calls with the same
settings (its int4 weights come out bit for bit). Each candidate runs token by token as the
engine runs it, along the fp32 graph's own greedy path on the validation prompt, and the
decoder's validation figures against the fp32 graph (export/validate.logit_figures) rank the
groups. The package is then the builder's own again, told to leave the kept groups' MatMuls
alone (its nodes_to_exclude option), which are quantized one step up here afterwards (int4 ->
int8) or stay fp32 (int8 -> fp32): tied embeddings, the KV layout and the int4 kernels everywhere
else stay what the builder makes.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from export import builder_backend, quantize, sensitivity
from export.backend_fields import BackendFields
from export.quantize import QuantRecipe
from export.recipe import BadOptions
from export.source import ModelSource
from export.validate import GREEDY_TOKENS, logit_figures, package_tokenizer
from export.validation_texts import DECODER_PROMPT

LAYER = re.compile(r"^(/model/layers\.\d+)/")
CANDIDATE = "candidate.onnx"


def wanted(precision: str, recipe: QuantRecipe) -> bool:
    return precision in ("int4", "int8") and (recipe.keep_sensitive is not None or recipe.min_cosine is not None)


def matmul_groups(model) -> dict[str, list[str]]:
    """The quantizable MatMuls by group, in graph order: a layer's (named by its prefix,
    /model/layers.3) or a MatMul of its own outside the layers (/lm_head/MatMul)."""
    groups: dict[str, list[str]] = {}
    for node in sensitivity.quantizable_matmuls(model):
        layer = LAYER.match(node)
        groups.setdefault(layer.group(1) if layer else node, []).append(node)
    return groups


class DecoderScorer:
    """A candidate graph's validation figures against the fp32 graph along the fp32 graph's
    greedy path: prefill the prompt, then one decode step per token, feeding each step's KV back."""

    def __init__(self, fp32_dir: Path, model_file: str, layout, context_length: int):
        self.layout = layout
        self.prompt = package_tokenizer(fp32_dir).encode(DECODER_PROMPT).ids or [0]
        steps = min(GREEDY_TOKENS, context_length - len(self.prompt) - 1)
        self.reference = self._logits(fp32_dir / model_file, steps)
        self.path = [int(token) for token in self.reference.argmax(-1)]
        self.description = (f"logits of one MatMul group quantized alone against the fp32 graph's, along its "
                            f"{len(self.path)} greedy tokens after the {len(self.prompt)}-token validation prompt")

    def __call__(self, model_path: Path) -> dict:
        return logit_figures(self._logits(model_path, len(self.path), self.path), self.reference)

    def _logits(self, model_path: Path, steps: int, path: list[int] | None = None) -> np.ndarray:
        """[steps, vocab]: the next-token logits after the prompt and after each token of `path`
        (the graph's own greedy choices where no path is given)."""
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        inputs = {i.name for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        layout = self.layout
        pairs = [(past % layer, present % layer) for layer in range(layout.num_layers)
                 for past, present in ((layout.past_key, layout.present_key),
                                       (layout.past_value, layout.present_value))]
        empty = np.zeros((1, layout.num_kv_heads, 0, layout.head_dim), np.float32)  # CPU graphs: fp32 KV
        kv = {past: empty for past, _ in pairs}
        tokens, cached, rows = list(self.prompt), 0, []
        for step in range(steps):
            total = cached + len(tokens)
            feeds = {"input_ids": np.asarray([tokens], np.int64), "attention_mask": np.ones((1, total), np.int64)}
            if "position_ids" in inputs:
                feeds["position_ids"] = np.arange(cached, total, dtype=np.int64)[None]
            result = dict(zip(outputs, session.run(outputs, {**feeds, **kv})))
            # The last position's logits, whether the graph gives every position's or the last one's.
            rows.append(result["logits"][0, -1].astype(np.float64))
            kv = {past: result[present] for past, present in pairs}
            cached = total
            tokens = [path[step] if path is not None else int(np.argmax(rows[-1]))]
        return np.stack(rows)


class Candidates:
    """Graphs beside the fp32 one that quantize some of its MatMuls; the rest keep reading the
    fp32 weights from its data file, so a candidate costs only what it quantizes."""

    def __init__(self, fp32_dir: Path, model_file: str, bits: int, recipe: QuantRecipe):
        import onnx

        self.dir, self.bits, self.recipe = fp32_dir, bits, recipe
        self.skeleton = onnx.load(str(fp32_dir / model_file), load_external_data=False)
        self.nodes = sensitivity.quantizable_matmuls(self.skeleton)

    def alone(self, group: list[str]) -> Path:
        """Only `group` at the requested precision."""
        model = self._with_weights(group)
        return self._save(quantize.weight_only(model, self.bits, self.recipe,
                                               [n for n in self.nodes if n not in group], None))

    def mixed(self, kept: list[str]) -> Path:
        """Every MatMul at the requested precision but `kept`, one step up."""
        return self._save(quantize.mixed(self._with_weights(self.nodes), self.bits, self.recipe, kept))

    def _with_weights(self, nodes: list[str]):
        from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

        model = copy.deepcopy(self.skeleton)
        weights = {node.input[1] for node in model.graph.node if node.name in nodes}
        for tensor in model.graph.initializer:
            if tensor.name in weights and uses_external_data(tensor):
                load_external_data_for_tensor(tensor, str(self.dir))
        return model

    def _save(self, model) -> Path:
        import onnx

        path = self.dir / CANDIDATE
        for old in (path, path.with_name(CANDIDATE + ".data")):
            old.unlink(missing_ok=True)  # onnx appends to an existing data file
        # Tensors still pointing at the fp32 data file keep pointing there (same folder).
        onnx.save(model, str(path), save_as_external_data=True, location=CANDIDATE + ".data")
        return path


def measure(scorer: DecoderScorer, candidates: Candidates, phases) -> tuple[dict[str, list[str]], list[dict]]:
    """(the MatMul groups, the table: each group's figures quantized alone, most sensitive first)."""
    groups = matmul_groups(candidates.skeleton)
    phases.set_total(len(groups))
    table = []
    for group, nodes in groups.items():
        table.append({"group": group, **_rounded(scorer(candidates.alone(nodes)))})
        phases.advance()
    table.sort(key=lambda row: (row["logits_cosine_mean"], row["logits_cosine_min"]))
    return groups, table


def choose(scorer: DecoderScorer, candidates: Candidates, groups: dict[str, list[str]], table: list[dict],
           recipe: QuantRecipe) -> tuple[str, list[str], list[dict]]:
    """(rule, kept groups, what was tried): sensitivity.choose over the table's groups, a trial
    scoring the whole graph with the kept groups one step up."""

    def score(kept_groups: list[str]) -> tuple[float, float]:
        figures = scorer(candidates.mixed([n for group in kept_groups for n in groups[group]]))
        return figures["logits_cosine_mean"], figures["logits_cosine_min"]

    return sensitivity.choose([row["group"] for row in table], recipe.keep_sensitive, recipe.min_cosine, score)


def build(source: ModelSource, staging: Path, precision: str, target: str, recipe: QuantRecipe,
          cache_dir: Path, log_path: Path, phases) -> BackendFields:
    """builder_backend.build with the sensitivity pass and mixed precision; the same fields, with
    the table, the rule and each MatMul's precision in fields.quantization."""
    if target != "cpu":
        raise BadOptions(f"--keep-sensitive and --min-cosine measure on this host's CPU; the builder's {target} "
                         "graphs do not run here")
    bits = 4 if precision == "int4" else 8
    fp32_dir = log_path.parent / "fp32"
    fp32 = builder_backend.build(source, fp32_dir, "fp32", target, QuantRecipe(), cache_dir,
                                 log_path.with_name("builder-fp32.log"), phases)
    phases.begin("sensitivity")
    scorer = DecoderScorer(fp32_dir, fp32.model_file, fp32.kv_layout, fp32.context_length)
    candidates = Candidates(fp32_dir, fp32.model_file, bits, recipe)
    groups, table = measure(scorer, candidates, phases)
    rule, kept, tried = choose(scorer, candidates, groups, table, recipe)
    kept_nodes = [node for group in kept for node in groups[group]]
    phases.begin("quantize")
    raise_kept = (lambda path: _raise_to_int8(path, kept_nodes, recipe)) if kept_nodes and bits == 4 else None
    fields = builder_backend.build(source, staging, precision, target, recipe, cache_dir, log_path, phases,
                                   exclude=tuple(kept_nodes), finish=raise_kept)
    up = quantize.kept_precision(bits)
    fields.quantization |= {
        "sensitivity": {"measure": scorer.description, "groups": table},
        "mixed_precision": {"rule": rule, "kept_precision": up, "kept": len(kept), "kept_groups": kept,
                            "tried": tried},
        "groups": {group: up if group in kept else precision for group in groups},
        "nodes": {node: up if node in kept_nodes else precision for node in candidates.nodes}}
    return fields


def _raise_to_int8(model_path: Path, kept_nodes: list[str], recipe: QuantRecipe) -> None:
    """The builder left `kept_nodes` fp32; quantizes them at 8 bits with the recipe's blocks."""
    import onnx

    model = onnx.load(str(model_path))
    left = [n for n in sensitivity.quantizable_matmuls(model) if n not in kept_nodes]
    model = quantize.weight_only(model, 8, replace(recipe, method="rtn"), left, None)
    data = model_path.with_name(model_path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(model, str(model_path), save_as_external_data=True, location=data.name)


def _rounded(figures: dict) -> dict:
    keep = ("logits_cosine_mean", "logits_cosine_min", "top5_overlap", "kl_mean", "logits_rel_diff")
    return {name: round(float(figures[name]), 6) for name in keep}
