"""`--precision auto`: export each candidate precision with its default recipe, measure it on this
host (validation against PyTorch, package size, speed), and keep the best that passes.

Quality is the floor (export/validate.py's thresholds for each precision); among the candidates
above it the goal decides: the smallest package, or the fastest on this host (encode time for
encoders and classifiers, decode tokens/s for decoders, with prefill time recorded too).
"""

from __future__ import annotations

import time
from pathlib import Path

from appliance.model_package import Manifest
from export.recipe import BadOptions, QuantOptions
from export.validation_texts import DECODER_PROMPT, SENTENCES

CANDIDATES = ("int4", "int8", "fp32")
GOALS = ("size", "speed")
DECODE_STEPS = 16
REPEATS = 3


def check(target: str, options: QuantOptions) -> None:
    if target != "cpu":
        raise BadOptions("--precision auto measures on this host's CPU; give a precision for --target " + target)
    given = options.given()
    if given:
        raise BadOptions(f"{given[0]} does not apply to --precision auto: it tries each precision's default recipe")


def measure_speed(package_dir: Path, manifest: Manifest) -> dict:
    """Best of REPEATS on this host, on the validation texts (or prompt)."""
    from appliance.engine.providers import RuntimeOptions
    from export.validate import package_tokenizer

    cpu, tokenizer = RuntimeOptions(("cpu",)), package_tokenizer(package_dir)
    if manifest.task == "text-generation":
        import numpy as np

        from appliance.engine.runners import open_decoder_runner

        prompt = tokenizer.encode(DECODER_PROMPT).ids or [0]
        runner = open_decoder_runner(package_dir, manifest, cpu, max_batch=1,
                                     max_context=len(prompt) + DECODE_STEPS + 1)
        prefill, decode = [], []
        for _ in range(REPEATS):
            start = time.perf_counter()
            token = int(np.argmax(runner.prefill(0, prompt, 0)))
            prefill.append(time.perf_counter() - start)
            start = time.perf_counter()
            for step in range(DECODE_STEPS):
                token = int(np.argmax(runner.decode(np.asarray([token]), np.asarray([len(prompt) + step]))[0]))
            decode.append(time.perf_counter() - start)
        return {"prefill_ms": round(1e3 * min(prefill), 2), "decode_tokens_per_s": round(DECODE_STEPS / min(decode), 1)}
    if manifest.task == "feature-extraction":
        from appliance.engine.embedder import Embedder

        embedder = Embedder(package_dir, manifest, tokenizer, cpu)

        def run(texts):
            return embedder.embed(texts, normalize=True)
    else:
        from appliance.engine.classifier import Classifier

        run = Classifier(package_dir, manifest, tokenizer, cpu).logits
    timings = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run(SENTENCES)
        timings.append(time.perf_counter() - start)
    return {"encode_ms": round(1e3 * min(timings), 2), "texts": len(SENTENCES)}


def choose(candidates: list[tuple[Manifest, list[str], dict]], goal: str) -> tuple[int, list[dict]]:
    """(index of the best candidate, the table of what was tried). With none passing, the most
    precise one is chosen and its failures stand (the caller refuses it unless --force)."""
    tried = []
    for manifest, problems, speed in candidates:
        tried.append({"precision": manifest.precision, "passed": not problems, "problems": problems,
                      "package_bytes": sum(f.size for f in manifest.files.values()), **speed,
                      "validation": {k: v for k, v in manifest.validation.items() if not isinstance(v, dict)}})
    passing = [i for i, row in enumerate(tried) if row["passed"]]
    if not passing:
        return len(tried) - 1, tried
    if goal == "size":
        return min(passing, key=lambda i: tried[i]["package_bytes"]), tried
    speed = "decode_tokens_per_s" if "decode_tokens_per_s" in tried[0] else "encode_ms"
    sign = -1 if speed == "decode_tokens_per_s" else 1
    return min(passing, key=lambda i: sign * tried[i][speed]), tried
