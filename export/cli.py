"""`appliance-export SOURCE --output DIR`: a Hugging Face model to a verified ONNX package.

`appliance-export verify DIR` re-checks a package: hashes, loads it, and re-runs the validation
against its source when that is still on disk.

Exit codes: 0 written (or verified), 1 a clear error (nothing is left behind), 2 the host cannot
build what was asked for (e.g. the tensorrt target without a GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from pathlib import Path

import appliance
from appliance.errors import PackageError
from appliance.model_package import SCHEMA_VERSION, Manifest, Target, open_package, record_files, write_manifest
from export import builder_backend, optimum_backend, tensorrt_backend, validate
from export.graph_info import io_signature, matmul_nbits_widths
from export.package_writer import check_destination, copy_tokenizer, publish, staging_folder
from export.progress import Phases
from export.quantize import QuantRecipe
from export.source import ExportError, ModelSource, resolve_source

TASKS = ("auto", "text-generation", "feature-extraction", "text-classification", "token-classification")
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "electra", "deberta-v2", "nomic_bert")
QUANT_METHODS = ("rtn", "k_quant", "hqq", "gptq")
EXIT_HOST_CANNOT = 2


class HostCannot(ExportError):
    """The request is fine, this host cannot do it (exit code 2)."""


def detect_task(source: ModelSource) -> str:
    for suffix, task in (("ForCausalLM", "text-generation"), ("LMHeadModel", "text-generation"),
                         ("ForSequenceClassification", "text-classification"),
                         ("ForTokenClassification", "token-classification")):
        if any(a.endswith(suffix) for a in source.architectures):
            return task
    if source.model_type in ENCODER_TYPES:
        return "feature-extraction"
    raise ExportError(f"cannot tell the task of {source.model_type or 'this model'} "
                      f"({', '.join(source.architectures) or 'no architectures'}); pass --task")


def choose_backend(task: str, requested: str, source: ModelSource) -> str:
    if requested != "auto":
        if requested == "builder" and task != "text-generation":
            raise ExportError("the builder backend builds text-generation models only; use --backend optimum")
        return requested
    builder_ok = task == "text-generation" and source.model_type in builder_backend.SUPPORTED_MODEL_TYPES
    return "builder" if builder_ok else "optimum"


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


def _recipe(args) -> QuantRecipe:
    calibration = Path(args.calibration_file) if args.calibration_file else None
    if calibration is not None and not calibration.is_file():
        raise ExportError(f"calibration file {calibration} does not exist")
    return QuantRecipe(args.block_size, args.accuracy_level, not args.asymmetric, args.quant_method, calibration)


def export_package(args, phases: Phases) -> dict:
    import onnxruntime

    if args.target == "tensorrt" and (reason := tensorrt_backend.unavailable_reason()):
        raise HostCannot(reason)
    phases.begin("load")
    output = Path(args.output)
    check_destination(output, overwrite=args.overwrite)
    source = resolve_source(args.source, args.revision)
    task = detect_task(source) if args.task == "auto" else args.task
    backend = choose_backend(task, args.backend, source)
    recipe = _recipe(args)
    with staging_folder(output) as staging:
        work = staging.with_name(staging.name + ".work")
        work.mkdir()
        try:
            phases.begin("export")
            if backend == "builder":
                fields = builder_backend.build(source, staging, args.precision, args.target, recipe,
                                               work / "cache", work / "builder.log", phases)
            else:
                fields = optimum_backend.export(source, staging, task, args.precision, args.target, recipe, work, phases)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        copy_tokenizer(source.path, staging)
        _check_weight_bits(staging / fields["model_file"], fields["quantization"])
        signature = io_signature(staging / fields["model_file"])
        if fields.get("kv_layout") is not None:
            past = next(t for t in signature.inputs if t.name == fields["kv_layout"].past_key % 0)
            fields["kv_layout"] = fields["kv_layout"].model_copy(update={"dtype": past.dtype})
        targets = [Target(name="cpu" if args.target == "cpu" else "cuda", onnxruntime_version=onnxruntime.__version__)]
        if args.target == "tensorrt":
            phases.begin("engine")
            targets.append(tensorrt_backend.build_engine(staging, fields["model_file"], signature,
                                                         fields["context_length"], onnxruntime.__version__))
        manifest = Manifest(
            schema_version=SCHEMA_VERSION, task=task, architecture=source.model_type, backend=backend,
            precision=args.precision, source=source.record, files=record_files(staging), io=signature,
            chat_template=_chat_template(source.path), targets=targets,
            exporter_version=appliance.__version__,
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **fields,
        )
        phases.begin("validate")
        figures = validate.run(source.path, staging, manifest, phases)
        problems = validate.failures(figures, task, args.precision)
        figures["passed"] = not problems
        manifest = manifest.model_copy(update={"validation": figures})
        if problems and not args.force:
            raise ExportError("validation failed: " + "; ".join(problems) + " (--force writes it anyway)")
        write_manifest(staging, manifest)
        phases.begin("publish")
        publish(staging, output)
    phases.close()
    return {"output": str(output.resolve()), "task": task, "backend": backend, "precision": args.precision,
            "architecture": source.model_type, "quantization": manifest.quantization,
            "files": {k: v.size for k, v in manifest.files.items()},
            "package_bytes": sum(v.size for v in manifest.files.values()),
            "validation": figures, "problems": problems, "timings": phases.timings}


def _check_weight_bits(model_path: Path, quantization: dict) -> None:
    """The manifest must say what the graph holds: compare the recipe's bits with the nodes'."""
    if quantization.get("op") != "MatMulNBits":
        return
    widths = matmul_nbits_widths(model_path)
    if widths != {quantization["bits"]}:
        found = ", ".join(str(w) for w in sorted(widths)) or "no MatMulNBits"
        raise ExportError(f"the graph holds {found}-bit weights where {quantization['bits']}-bit were asked for")


def verify_package(package: Path) -> dict:
    manifest = open_package(package)
    result = {"package": str(package), "hashes": "ok", "files": len(manifest.files)}
    source = manifest.source.path
    if source and Path(source).is_dir():
        figures = validate.run(Path(source), package, manifest, Phases(quiet=True))
        result["validation"] = figures
        result["problems"] = validate.failures(figures, manifest.task, manifest.precision)
    else:
        from appliance.engine.providers import RuntimeOptions, create_session

        create_session(str(package / manifest.model_file), RuntimeOptions(("cpu",)))
        result["validation"] = "source not on this host; hashes and load checked only"
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
    quant = parser.add_argument_group("quantization (int4, and the builder's int8)")
    quant.add_argument("--quant-method", choices=QUANT_METHODS, default="rtn",
                       help="rtn (default), k_quant (builder), hqq or gptq (optimum; gptq needs --calibration-file)")
    quant.add_argument("--calibration-file", help="text file, one sample per line, for calibrated methods")
    quant.add_argument("--block-size", type=int, choices=(16, 32, 64, 128, 256), default=32,
                       help="MatMulNBits block size (128 decodes faster, 32 is more accurate)")
    quant.add_argument("--accuracy-level", type=int, choices=(1, 2, 3, 4), default=4,
                       help="MatMulNBits compute precision: 4 = int8 activations (fastest on CPU)")
    quant.add_argument("--asymmetric", action="store_true", help="asymmetric (uint) quantization")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package at --output")
    parser.add_argument("--force", action="store_true", help="write the package even if validation fails")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    return parser


def _verify_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="appliance-export verify")
    parser.add_argument("package", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = verify_package(args.package)
    except PackageError as exc:
        print(f"appliance-export verify: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.package}: " + ("ok" if not result["problems"] else "FAILED: " + "; ".join(result["problems"])))
    return 0 if not result["problems"] else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv[:1] == ["verify"]:
        return _verify_main(argv[1:])
    args = build_parser().parse_args(argv)
    phases = Phases(quiet=args.json or not sys.stderr.isatty())
    try:
        summary = export_package(args, phases)
    except ExportError as exc:
        phases.close()
        print(f"appliance-export: {exc}", file=sys.stderr)
        return EXIT_HOST_CANNOT if isinstance(exc, HostCannot) else 1
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        figures = {k: v for k, v in summary["validation"].items() if k != "kind"}
        print(f"wrote {summary['output']} ({summary['task']}, {summary['backend']}, {summary['precision']}, "
              f"{summary['package_bytes'] / 1e6:.1f} MB); validation: {json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
