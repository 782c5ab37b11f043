"""`appliance-export SOURCE --output DIR`: a Hugging Face model to a verified ONNX package.

`appliance-export verify DIR` re-checks a package: hashes, loads it, and re-runs the validation
against its source when that is still on disk. `appliance-export inspect DIR` prints how it was
made: the recipe, the validation figures, the per-node sensitivity table and precisions.

Exit codes: 0 written (or verified), 1 a clear error (nothing is left behind), 2 refused before any
work: bad usage, an option the chosen backend does not implement, or a host that cannot build
what was asked for (e.g. the tensorrt target without a GPU). Errors are one line on stderr; with
--json, stdout also gets {"error": ..., "exit_code": ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import sys
from pathlib import Path

import appliance
from appliance.errors import PackageError
from appliance.model_package import SCHEMA_VERSION, Manifest, Target, open_package, record_files, write_manifest
from export import (auto_precision, builder_backend, decoder_sensitivity, optimum_backend, quantize, recipe,
                    tensorrt_backend, validate)
from export.graph_info import io_signature, matmul_nbits_nodes
from export.package_writer import check_destination, copy_tokenizer, publish, staging_folder
from export.progress import Phases
from export.recipe import BadOptions, QuantOptions
from export.source import ExportError, ModelSource, resolve_source

TASKS = ("auto", "text-generation", "feature-extraction", "text-classification", "token-classification")
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "electra", "deberta-v2", "nomic_bert")
QUANT_METHODS = ("rtn", "k_quant", "hqq", "gptq", "dynamic", "static")
EXIT_FAILED = 1
EXIT_REFUSED = 2


class HostCannot(ExportError):
    """The request is fine, this host cannot do it (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """Usage errors become BadOptions: one line, and JSON under --json, like every other refusal."""

    def error(self, message):
        raise BadOptions(f"{message} (see {self.prog} --help)")


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
            raise BadOptions("the builder backend builds text-generation models only; use --backend optimum")
        if requested == "builder" and source.model_type not in builder_backend.SUPPORTED_MODEL_TYPES:
            raise BadOptions(f"the builder backend does not support {source.model_type or 'this model'}; "
                             f"it supports: {', '.join(builder_backend.SUPPORTED_MODEL_TYPES)}")
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


def _quant_options(args) -> QuantOptions:
    return QuantOptions(method=args.quant_method, block_size=args.block_size, accuracy_level=args.accuracy_level,
                        asymmetric=args.asymmetric,
                        calibration_file=Path(args.calibration_file) if args.calibration_file else None,
                        keep_sensitive=args.keep_sensitive, min_cosine=args.min_cosine, embeddings=args.embeddings,
                        prefill_accuracy_level=args.prefill_accuracy_level, prefill_int8=args.prefill_int8)


def export_package(args, phases: Phases) -> dict:
    # Everything that can refuse the request runs before any export work (seconds to minutes).
    recipe.check_precision_target(args.precision, args.target)
    if args.target == "tensorrt" and (reason := tensorrt_backend.unavailable_reason()):
        raise HostCannot(reason)
    phases.begin("load")
    output = Path(args.output)
    check_destination(output, overwrite=args.overwrite)
    source = resolve_source(args.source, args.revision)
    task = detect_task(source) if args.task == "auto" else args.task
    backend = choose_backend(task, args.backend, source)
    options = _quant_options(args)
    auto = args.precision == "auto"
    if auto:
        auto_precision.check(args.target, options)
    elif args.goal:
        raise BadOptions("--goal applies to --precision auto only")
    precisions = auto_precision.CANDIDATES if auto else (args.precision,)
    recipes = {precision: recipe.resolve(backend, precision, options) for precision in precisions}
    with contextlib.ExitStack() as stack:
        built = []
        for precision in precisions:
            staging = stack.enter_context(staging_folder(output))
            manifest, problems = _build(args, source, task, backend, precision, recipes[precision], staging, phases)
            speed = auto_precision.measure_speed(staging, manifest) if auto else {}
            built.append((staging, manifest, problems, speed))
        staging, manifest, problems, _ = built[0]
        if auto:
            goal = args.goal or "size"
            index, tried = auto_precision.choose([(m, p, sp) for _, m, p, sp in built], goal)
            staging, manifest, problems, _ = built[index]
            manifest = manifest.model_copy(update={"quantization": {
                **manifest.quantization, "auto": {"goal": goal, "tried": tried}}})
        if problems and not args.force:
            raise ExportError("validation failed: " + "; ".join(problems) + " (--force writes it anyway)")
        write_manifest(staging, manifest)
        phases.begin("publish")
        publish(staging, output)
    phases.close()
    return {"output": str(output.resolve()), "task": task, "backend": backend, "precision": manifest.precision,
            "architecture": source.model_type, "quantization": manifest.quantization,
            "files": {k: v.size for k, v in manifest.files.items()},
            "package_bytes": sum(v.size for v in manifest.files.values()),
            "validation": manifest.validation, "problems": problems, "timings": phases.timings}


def _build(args, source: ModelSource, task: str, backend: str, precision: str, quant, staging: Path,
           phases: Phases) -> tuple[Manifest, list[str]]:
    """Exports, checks and validates one package in staging; returns its manifest (not yet
    written) and the validation's threshold failures."""
    import onnxruntime

    work = staging.with_name(staging.name + ".work")
    work.mkdir()
    try:
        phases.begin("export")
        if backend == "builder":
            mixed = decoder_sensitivity.wanted(precision, quant)
            build = decoder_sensitivity.build if mixed else builder_backend.build
            fields = build(source, staging, precision, args.target, quant, work / "cache", work / "builder.log", phases)
        else:
            fields = optimum_backend.export(source, staging, task, precision, args.target, quant, work, phases)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    copy_tokenizer(source.path, staging)
    _check_recipe(staging / fields.model_file, fields.quantization)
    signature = io_signature(staging / fields.model_file)
    if fields.kv_layout is not None:
        past = next(t for t in signature.inputs if t.name == fields.kv_layout.past_key % 0)
        fields.kv_layout = fields.kv_layout.model_copy(update={"dtype": past.dtype})
    targets = [Target(name="cpu" if args.target == "cpu" else "cuda", onnxruntime_version=onnxruntime.__version__)]
    if args.target == "tensorrt":
        phases.begin("engine")
        targets.append(tensorrt_backend.build_engine(staging, fields.model_file, signature,
                                                     fields.context_length, onnxruntime.__version__))
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, task=task, architecture=source.model_type, backend=backend,
        precision=precision, source=source.record, files=record_files(staging), io=signature,
        chat_template=_chat_template(source.path), targets=targets,
        exporter_version=appliance.__version__,
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **fields.manifest_fields(),
    )
    phases.begin("validate")
    figures = validate.run(source.path, staging, manifest, phases)
    problems = validate.failures(figures, task, precision)
    # null, not true, when nothing was compared: readers must not take a skip for a pass.
    figures["passed"] = None if figures["kind"] == "skipped" else not problems
    return manifest.model_copy(update={"validation": figures}), problems


def _check_recipe(model_path: Path, quantization: dict) -> None:
    """The manifest must say what the graph holds: every MatMulNBits node must have the recipe's
    block size, accuracy level and symmetry, and the bits the recipe (or its per-node list) gives
    it (export/recipe.py says why this can differ)."""
    if quantization.get("op") != "MatMulNBits":
        return
    nodes = matmul_nbits_nodes(model_path)
    if "nodes" in quantization:
        wanted_bits = {name: int(p[3:]) for name, p in quantization["nodes"].items() if p.startswith("int")}
        differing = sorted(name for name in set(nodes) | set(wanted_bits)
                           if nodes.get(name, (None,))[0] != wanted_bits.get(name))
        if differing:
            have = nodes.get(differing[0], ("no",))[0]
            raise ExportError(f"the graph holds {have}-bit weights at {differing[0]} where the recipe lists "
                              f"{quantization['nodes'].get(differing[0], 'nothing')}")
    elif {bits for bits, _, _, _ in nodes.values()} != {quantization["bits"]}:
        found = ", ".join(str(bits) for bits in sorted({s[0] for s in nodes.values()})) or "no MatMulNBits"
        raise ExportError(f"the graph holds {found}-bit weights where {quantization['bits']}-bit were asked for")
    wanted = (quantization["block_size"], quantization["accuracy_level"], quantization["symmetric"])
    wrong = sorted({settings[1:] for settings in nodes.values()} - {wanted})
    if wrong:
        differing = [f"{name} {have} (the recipe says {want})" for name, have, want
                     in zip(("block_size", "accuracy_level", "symmetric"), wrong[0], wanted) if have != want]
        raise ExportError(f"the {quantization['method']} graph does not hold its recipe: MatMulNBits nodes with "
                          + ", ".join(differing))


def verify_package(package: Path) -> dict:
    manifest = open_package(package)
    result = {"package": str(package), "hashes": "ok", "files": len(manifest.files)}
    source = manifest.source.path
    if source and Path(source).is_dir():
        figures = validate.run(Path(source), package, manifest, Phases(quiet=True))
        if figures["kind"] == "skipped":
            figures["passed"] = None  # nothing compared: not a pass, not a failure either
        result["validation"] = figures
        result["problems"] = validate.failures(figures, manifest.task, manifest.precision)
    else:
        from appliance.engine.providers import RuntimeOptions, create_session

        create_session(str(package / manifest.model_file), RuntimeOptions(("cpu",)))
        result["validation"] = "source not on this host; hashes and load checked only"
        result["problems"] = []
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="appliance-export", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="local Hugging Face model folder, or a hub id where a hub is reachable")
    parser.add_argument("--output", "-o", required=True, help="package folder to write")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8", "int4", "auto"), default="fp32",
                        help="auto: export int4, int8 and fp32 with their default recipes, measure each on this "
                             "host and write the best that passes validation (see --goal)")
    parser.add_argument("--goal", choices=auto_precision.GOALS,
                        help="what --precision auto optimises among the packages that pass: size (default), "
                             "speed (encode time, or decode tokens/s for decoders)")
    parser.add_argument("--task", choices=TASKS, default="auto")
    parser.add_argument("--backend", choices=("auto", "builder", "optimum"), default="auto")
    parser.add_argument("--target", choices=("cpu", "cuda", "tensorrt"), default="cpu")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    # No defaults here: an option given where the backend would ignore it is refused (export/recipe.py).
    quant = parser.add_argument_group("quantization (int4, and the builder's int8)")
    quant.add_argument("--quant-method", choices=QUANT_METHODS,
                       help="rtn (default: weight-only MatMulNBits); k_quant (int4); hqq or gptq (optimum int4; "
                            "gptq needs --calibration-file); dynamic or static (optimum int8: per-channel "
                            "dynamic, the old default, or calibrated QDQ)")
    quant.add_argument("--calibration-file", help="text file, one sample per line, for gptq and static "
                                                  "(static uses the built-in English and Chinese texts without it)")
    quant.add_argument("--keep-sensitive", type=int, metavar="N",
                       help="keep the N MatMuls the sensitivity pass finds most sensitive one step up "
                            "(int4 at int8, int8 at fp32)")
    quant.add_argument("--min-cosine", type=float, metavar="X",
                       help=f"keep the fewest most sensitive MatMuls one step up that bring the output's mean "
                            f"cosine to the fp32 graph to X (int4 default {quantize.DEFAULT_MIN_COSINE})")
    quant.add_argument("--embeddings", choices=("int8", "fp32"),
                       help="embedding tables (Gather) at int8 (default on the optimum backend) or left fp32")
    quant.add_argument("--block-size", type=int, choices=(16, 32, 64, 128, 256),
                       help=f"MatMulNBits block size (default {recipe.DEFAULT_BLOCK_SIZE}; 128 decodes faster, "
                            "32 is more accurate)")
    quant.add_argument("--accuracy-level", type=int, choices=(1, 2, 3, 4),
                       help=f"MatMulNBits compute precision (default {recipe.DEFAULT_ACCURACY_LEVEL}: int8 "
                            "activations, fastest on CPU)")
    quant.add_argument("--prefill-accuracy-level", type=int, choices=(1, 2, 3, 4),
                       help="builder int4: also write a prefill graph at this accuracy level over the same weights "
                            "and KV layout (1, fp32 activations, prefilled 1,000 tokens in 0.72-0.75x the time of "
                            "level 4 on an AVX-512 host); the "
                            "daemon prefills on it and decodes on the main graph ([runtime] prefill_graph)")
    quant.add_argument("--prefill-int8", action="store_true",
                       help="builder int4: also write a prefill graph with int8 weights (the int4 ones, requantized "
                            "per channel) and per-token int8 activations, on ONNX Runtime's integer GEMM "
                            "(a 41-token rest behind 1,020 cached tokens in about 0.75x the time of level 4 on an "
                            "AVX-512 VNNI host; more memory: its own weights beside the decode graph's)")
    quant.add_argument("--asymmetric", action="store_true",
                       help="asymmetric (uint, with zero points) quantization; k_quant and hqq always are")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package at --output")
    parser.add_argument("--force", action="store_true", help="write the package even if validation fails")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    return parser


def _fail(prog: str, message: str, code: int, as_json: bool) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "exit_code": code}))
    return code


def _unexpected(exc: Exception) -> str:
    # No traceback reaches the operator: the class and the first line say what broke and where.
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc.__class__.__name__}"
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"unexpected {exc.__class__.__name__}" + (f": {first}" if first else "")


def _package_command(prog: str, argv: list[str], json_help: str, action) -> int:
    """`verify` and `inspect`: one package path and --json, then `action(package, as_json)` prints
    its result and returns the exit code. Any failure is one line (and JSON under --json)."""
    parser = _Parser(prog=prog)
    parser.add_argument("package", type=Path)
    parser.add_argument("--json", action="store_true", help=json_help)
    as_json = "--json" in argv
    try:
        args = parser.parse_args(argv)
        return action(args.package, args.json)
    except BadOptions as exc:
        return _fail(prog, str(exc), EXIT_REFUSED, as_json)
    except PackageError as exc:
        return _fail(prog, str(exc), EXIT_FAILED, as_json)
    except Exception as exc:
        return _fail(prog, _unexpected(exc), EXIT_FAILED, as_json)


def _inspect(package: Path, as_json: bool) -> int:
    from export.inspect_package import describe

    manifest = open_package(package)
    # Built whole before printing, so that a failure part way leaves no half-written result.
    text = (json.dumps({"package": str(package), "precision": manifest.precision,
                        "quantization": manifest.quantization, "validation": manifest.validation}, indent=2)
            if as_json else describe(manifest))
    print(text)
    return 0


def _verify(package: Path, as_json: bool) -> int:
    result = verify_package(package)
    if as_json:
        print(json.dumps(result, indent=2))
    elif result["problems"]:
        print(f"{package}: FAILED: " + "; ".join(result["problems"]))
    elif isinstance(result["validation"], dict) and result["validation"]["kind"] == "skipped":
        print(f"{package}: ok (hashes; validation skipped: {result['validation']['reason']})")
    else:
        print(f"{package}: ok")
    return EXIT_FAILED if result["problems"] else 0


def _summary_line(summary: dict) -> str:
    figures = summary["validation"]
    if figures["kind"] == "skipped":
        validation = f"validation skipped: {figures['reason']}"
    else:
        validation = "validation: " + json.dumps({k: v for k, v in figures.items() if k != "kind"})
    return (f"wrote {summary['output']} ({summary['task']}, {summary['backend']}, {summary['precision']}, "
            f"{summary['package_bytes'] / 1e6:.1f} MB); {validation}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv[:1] == ["verify"]:
        return _package_command("appliance-export verify", argv[1:], "the checks' result as JSON", _verify)
    if argv[:1] == ["inspect"]:
        return _package_command("appliance-export inspect", argv[1:],
                                "the manifest's recipe and validation as JSON", _inspect)
    prog = "appliance-export"
    as_json = "--json" in argv  # known before parsing, so that a usage error is JSON too
    phases = Phases(quiet=True)
    try:
        args = build_parser().parse_args(argv)
        phases = Phases(quiet=args.json or not sys.stderr.isatty())
        # Validation and --precision auto run the package as the daemon does, subnormals flushed
        # ([runtime] flush_denormals' default); in time, before any session exists.
        from appliance.engine.providers import flush_denormals_on_this_thread

        flush_denormals_on_this_thread()
        # stdout carries the result only: some quantizers print progress there (gptq does).
        with contextlib.redirect_stdout(sys.stderr):
            summary = export_package(args, phases)
    except ExportError as exc:
        phases.close()
        return _fail(prog, str(exc), EXIT_REFUSED if isinstance(exc, (BadOptions, HostCannot)) else EXIT_FAILED,
                     as_json)
    except Exception as exc:
        phases.close()
        return _fail(prog, _unexpected(exc), EXIT_FAILED, as_json)
    print(json.dumps(summary, indent=2) if args.json else _summary_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
