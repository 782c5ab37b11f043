"""`appliance-export SOURCE --output DIR`: a Hugging Face model to a verified ONNX package.

`appliance-export verify DIR` re-checks a package: hashes, loads it, re-runs the validation
against its source when that is still on disk.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime

import appliance
from appliance.errors import PackageError
from appliance.model_package import SCHEMA_VERSION, Manifest, Target, open_package, record_files, write_manifest
from export import builder_backend, optimum_backend, validate
from export.graph_info import io_signature
from export.package_writer import check_destination, copy_tokenizer, publish, staging_folder
from export.source import ExportError, ModelSource, resolve_source

TASKS = ("auto", "text-generation", "feature-extraction")
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "electra", "deberta-v2", "nomic_bert")


@dataclass
class Phases:
    """Prints each phase with its duration to stderr and keeps the timings for --json."""

    quiet: bool
    timings: dict = field(default_factory=dict)
    _name: str = ""
    _start: float = 0.0

    def begin(self, name: str) -> None:
        self.end()
        self._name, self._start = name, time.perf_counter()
        if not self.quiet:
            print(f"[{name}] ...", file=sys.stderr, flush=True)

    def end(self) -> None:
        if self._name:
            self.timings[self._name] = round(time.perf_counter() - self._start, 3)
            if not self.quiet:
                print(f"[{self._name}] done in {self.timings[self._name]:.1f}s", file=sys.stderr, flush=True)
            self._name = ""


def detect_task(source: ModelSource) -> str:
    if any(a.endswith("ForCausalLM") for a in source.architectures):
        return "text-generation"
    if source.model_type in ENCODER_TYPES:
        return "feature-extraction"
    raise ExportError(f"cannot tell the task of {source.model_type or 'this model'} "
                      f"({', '.join(source.architectures) or 'no architectures'}); pass --task")


def _chat_template(source_dir: Path) -> str | None:
    # transformers >= 4.43 may save the template beside the config instead of inside it.
    jinja = source_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    path = source_dir / "tokenizer_config.json"
    if path.is_file():
        template = json.loads(path.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def export_package(args, phases: Phases) -> dict:
    phases.begin("load")
    source = resolve_source(args.source, args.revision)
    task = detect_task(source) if args.task == "auto" else args.task
    backend = args.backend
    if backend == "auto":
        backend = "builder" if task == "text-generation" else "optimum"
    if task == "text-generation" and backend != "builder":
        raise ExportError("text-generation packages are built with the builder backend in this version "
                          f"(architectures: {', '.join(builder_backend.SUPPORTED_MODEL_TYPES)})")
    if task == "feature-extraction" and backend != "optimum":
        raise ExportError("feature-extraction packages are built with the optimum backend")
    if args.target == "tensorrt":
        raise ExportError("the tensorrt target is not available in this version")
    output = Path(args.output)
    check_destination(output)
    recipe = builder_backend.QuantRecipe(args.block_size, args.accuracy_level, not args.asymmetric)
    with staging_folder(output) as staging:
        work = staging.with_name(staging.name + ".work")
        work.mkdir()
        try:
            phases.begin("export")
            fields = _run_backend(source, staging, work, task, backend, args.precision, args.target, recipe)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        copy_tokenizer(source.path, staging)
        signature = io_signature(staging / fields["model_file"])
        if fields.get("kv_layout") is not None:
            past = next(t for t in signature.inputs if t.name == fields["kv_layout"].past_key % 0)
            fields["kv_layout"] = fields["kv_layout"].model_copy(update={"dtype": past.dtype})
        manifest = Manifest(
            schema_version=SCHEMA_VERSION, task=task, architecture=source.model_type, backend=backend,
            precision=args.precision, source=source.record, files=record_files(staging), io=signature,
            chat_template=_chat_template(source.path),
            targets=[Target(name=args.target, onnxruntime_version=onnxruntime.__version__)],
            exporter_version=appliance.__version__,
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **fields,
        )
        phases.begin("validate")
        figures = _validate(source.path, staging, manifest)
        problems = validate.failures(figures, task, args.precision)
        figures["passed"] = not problems
        manifest = manifest.model_copy(update={"validation": figures})
        if problems and not args.force:
            raise ExportError("validation failed: " + "; ".join(problems) + " (--force writes it anyway)")
        write_manifest(staging, manifest)
        phases.begin("publish")
        publish(staging, output)
    phases.end()
    return {"output": str(output.resolve()), "task": task, "backend": backend, "precision": args.precision,
            "architecture": source.model_type, "files": {k: v.size for k, v in manifest.files.items()},
            "validation": figures, "problems": problems, "timings": phases.timings}


def _run_backend(source, staging, work, task, backend, precision, target, recipe) -> dict:
    if backend == "builder":
        built = builder_backend.build(source, staging, precision, target, recipe, work / "cache", work / "builder.log")
        return {"model_file": built.model_file, "kv_layout": built.kv_layout, "context_length": built.context_length,
                "vocab_size": built.vocab_size, "eos_token_ids": built.eos_token_ids,
                "bos_token_id": built.bos_token_id, "pad_token_id": built.pad_token_id,
                "quantization": recipe.as_record(precision)}
    built = optimum_backend.export_encoder(source, staging, precision, target, recipe, work)
    return {"model_file": built.model_file, "pooling": built.pooling, "embedding_dim": built.embedding_dim,
            "context_length": built.context_length, "vocab_size": built.vocab_size,
            "pad_token_id": built.pad_token_id, "quantization": built.quantization}


def _validate(source_dir: Path, package_dir: Path, manifest: Manifest) -> dict:
    if manifest.task == "text-generation":
        return validate.validate_decoder(source_dir, package_dir, manifest)
    return validate.validate_encoder(source_dir, package_dir, manifest)


def verify_package(package: Path) -> dict:
    manifest = open_package(package)
    result = {"package": str(package), "hashes": "ok", "files": len(manifest.files)}
    source = manifest.source.path
    if source and Path(source).is_dir():
        figures = _validate(Path(source), package, manifest)
        result["validation"] = figures
        result["problems"] = validate.failures(figures, manifest.task, manifest.precision)
    else:
        result["validation"] = "source not on this host; hashes and load checked only"
        from appliance.engine.providers import RuntimeOptions, create_session

        create_session(str(package / manifest.model_file), RuntimeOptions(("cpu",)))
        result["problems"] = []
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="local Hugging Face model folder, or a hub id where a hub is reachable")
    parser.add_argument("--output", "-o", required=True, help="package folder to write")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8", "int4"), default="fp32")
    parser.add_argument("--task", choices=TASKS, default="auto")
    parser.add_argument("--backend", choices=("auto", "builder", "optimum"), default="auto")
    parser.add_argument("--target", choices=("cpu", "cuda", "tensorrt"), default="cpu")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--block-size", type=int, choices=(16, 32, 64, 128, 256), default=32,
                        help="int4/int8 MatMulNBits block size (128 decodes faster, 32 is more accurate)")
    parser.add_argument("--accuracy-level", type=int, choices=(1, 2, 3, 4), default=4,
                        help="MatMulNBits compute precision: 4 = int8 activations (fastest on CPU)")
    parser.add_argument("--asymmetric", action="store_true", help="asymmetric (uint) quantization")
    parser.add_argument("--force", action="store_true", help="write the package even if validation fails")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv[:1] == ["verify"]:
        verify = argparse.ArgumentParser(prog="appliance-export verify")
        verify.add_argument("package", type=Path)
        verify.add_argument("--json", action="store_true")
        args = verify.parse_args(argv[1:])
        try:
            result = verify_package(args.package)
        except PackageError as exc:
            print(f"appliance-export verify: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result, indent=2) if args.json else
              f"{args.package}: {'ok' if not result['problems'] else 'FAILED: ' + '; '.join(result['problems'])}")
        return 0 if not result["problems"] else 1
    args = build_parser().parse_args(argv)
    phases = Phases(quiet=args.json)
    try:
        summary = export_package(args, phases)
    except ExportError as exc:
        print(f"appliance-export: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        figures = {k: v for k, v in summary["validation"].items() if k != "kind"}
        print(f"wrote {summary['output']} ({summary['task']}, {summary['backend']}, {summary['precision']}); "
              f"validation: {json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
