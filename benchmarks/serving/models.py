"""The benchmark's models: random-weight sources of two real shapes (and a tiny one for --quick),
this project's int4 builder package of each (`appliance-export --precision int4 --prefill-int8`), the genai
builder's own graph of it with the same recipe, and an int4 OpenVINO export of the same source by
optimum-intel. Everything lives under build/serving/; a step whose output is
there is skipped unless `rebuild` (so a changed exporter is picked up with --rebuild)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "build" / "serving"
OPENVINO_PYTHON = REPO / "build" / "venvs" / "openvino" / "bin" / "python"


@dataclass(frozen=True)
class Shape:
    architecture: str
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int
    tied: bool = False


SHAPES = {
    "tiny": Shape("llama", 128, 2, 4, 2, 256, 1024),
    "smollm-135m": Shape("llama", 576, 30, 9, 3, 1536, 32000),
    "qwen2.5-0.5b": Shape("qwen2", 896, 24, 14, 2, 4864, 151936, tied=True),
}
CONTEXT = 2048  # the longest conversation (1,000-token system prompt, 4 turns) stays under it


def _step(what: str, command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"serving benchmark: {what} failed (exit {done.returncode}); see {log}")


def source(name: str, rebuild: bool = False) -> Path:
    out = WORK / "src" / name
    if rebuild or not (out / "config.json").is_file():
        import transformers

        from export.tiny_models import make_decoder

        shutil.rmtree(out, ignore_errors=True)
        shape = SHAPES[name]
        make_decoder(out, shape.architecture, hidden_size=shape.hidden_size, layers=shape.layers, heads=shape.heads,
                     kv_heads=shape.kv_heads, context_length=CONTEXT, intermediate_size=shape.intermediate_size,
                     vocab_size=shape.vocab_size)
        if shape.tied:  # make_decoder unties the LM head; Qwen2.5-0.5B shares it with the embedding
            model = transformers.AutoModelForCausalLM.from_pretrained(out)
            model.config.tie_word_embeddings = True
            model.tie_weights()
            model.save_pretrained(out)
    return out


def package(name: str, rebuild: bool = False) -> Path:
    """This project's int4 builder package with its int8 prefill graph, the export for serving (its
    directory name is the model name the daemon serves)."""
    out = WORK / "packages" / f"{name}-int4"
    manifest = out / "manifest.json"
    if rebuild or not manifest.is_file() or not json.loads(manifest.read_text()).get("prefill_graph"):
        _step(f"exporting {name} (appliance-export --precision int4 --prefill-int8)",
              [sys.executable, "-m", "export.cli", str(source(name, rebuild)), "--output", str(out), "--overwrite",
               "--precision", "int4", "--prefill-int8", "--force"], WORK / "logs" / f"export-{name}.log")
    return out


def genai_model(name: str, rebuild: bool = False) -> Path:
    """The genai builder's own graph with the package's int4 recipe: the package's graph computes
    prefill logits for the last position only, which onnxruntime-genai's runtime does not accept."""
    out = WORK / "genai" / f"{name}-int4"
    if rebuild or not (out / "genai_config.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        recipe = json.loads((package(name) / "manifest.json").read_text())["quantization"]
        _step(f"building {name} with the genai builder (int4, as the package)",
              [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source(name)), "-o", str(out),
               "-p", "int4", "-e", "cpu", "-c", str(WORK / "genai-cache"), "--extra_options", "hf_token=false",
               f"block_size={recipe['block_size']}", f"accuracy_level={recipe['accuracy_level']}",
               f"is_symmetric={str(recipe['symmetric']).lower()}"], WORK / "logs" / f"genai-{name}.log")
    return out


def openvino_model(name: str, rebuild: bool = False) -> Path:
    out = WORK / "openvino" / f"{name}-int4-g64"
    if rebuild or not (out / "openvino_model.xml").is_file():
        if not OPENVINO_PYTHON.is_file():
            raise SystemExit(f"serving benchmark: no OpenVINO venv at {OPENVINO_PYTHON.parents[1]}; "
                             "see benchmarks/README.md (serving benchmark) for its one pip command")
        shutil.rmtree(out, ignore_errors=True)
        _step(f"exporting {name} for OpenVINO (optimum-cli, int4, group size 64)",
              [str(OPENVINO_PYTHON), "-m", "optimum.commands.optimum_cli", "export", "openvino",
               "--model", str(source(name)), "--task", "text-generation-with-past", "--weight-format", "int4",
               "--group-size", "64", "--ratio", "1.0", str(out)], WORK / "logs" / f"openvino-{name}.log")
    return out
