"""The contenders that have no gRPC server, driven in their own process by `driver.replay_steps`.

    PYTHON benchmarks/serving/peers.py genai|openvino MODEL_DIR PACKAGE_DIR THREADS

PYTHON is the venv that holds the contender's runtime (the project's for onnxruntime-genai,
build/venvs/openvino for OpenVINO GenAI). PACKAGE_DIR is this project's package of the same model:
its tokenizer and chat template render every prompt, so all contenders get the same token ids.
Requests arrive on stdin as JSON lines ({"op": "replay", "spec": {...}} or {"op": "ttft",
"prompts": [[[role, text], ...], ...]}); each answer is one JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.serving.driver import replay_steps  # noqa: E402
from benchmarks.serving.prompts import Prompts  # noqa: E402
from benchmarks.serving.stats import summarize  # noqa: E402
from benchmarks.serving.workload import WorkloadSpec, make_workload  # noqa: E402


class GenAIEngine:
    """onnxruntime-genai's request-queue Engine on the builder graph; it keeps no prefix cache on CPU."""

    def __init__(self, package: Path, threads: int):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(_with_threads(package, threads)))
        self.engine = og.Engine(self.model)
        self.live: dict[int, object] = {}

    def add(self, key, token_ids, max_tokens):
        params = self.og.GeneratorParams(self.model)
        total = len(token_ids) + max_tokens
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        request = self.og.Request(params)
        request.add_tokens(np.asarray(token_ids, np.int32))
        self.engine.add_request(request)
        self.live[key] = request

    def step(self):
        self.engine.step()
        moved = []
        for key, request in list(self.live.items()):
            ids = []
            while request.has_unseen_tokens():
                ids.append(request.get_unseen_token())
            if ids or request.is_done():
                moved.append((key, ids, request.is_done()))
            if request.is_done():
                del self.live[key]
        return moved

    def busy(self):
        return bool(self.live) and self.engine.has_pending_requests()


class OpenVINOPipeline:
    """OpenVINO GenAI's ContinuousBatchingPipeline with its prefix cache on an optimum-intel export."""

    def __init__(self, model_dir: Path, threads: int, cache_gb: int = 2):
        import openvino as ov
        import openvino_genai as ov_genai

        self.ov, self.ov_genai = ov, ov_genai
        scheduler = ov_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = True
        scheduler.cache_size = cache_gb
        self.pipeline = ov_genai.ContinuousBatchingPipeline(str(model_dir), scheduler, "CPU",
                                                            {"INFERENCE_NUM_THREADS": threads})
        self.live: dict[int, object] = {}

    def add(self, key, token_ids, max_tokens):
        config = self.ov_genai.GenerationConfig()
        config.max_new_tokens = max_tokens
        config.ignore_eos = True
        config.do_sample = False
        ids = self.ov.Tensor(np.asarray([token_ids], np.int64))
        self.live[key] = self.pipeline.add_request(key, ids, config)

    def step(self):
        self.pipeline.step()
        moved = []
        for key, handle in list(self.live.items()):
            ids = []
            if handle.can_read():
                for output in handle.read().values():
                    ids += list(output.generated_ids)
            done = handle.get_status() != self.ov_genai.GenerationStatus.RUNNING and not handle.can_read()
            if ids or done:
                moved.append((key, ids, done))
            if done:
                del self.live[key]
        return moved

    def busy(self):
        return bool(self.live)


def _with_threads(package: Path, threads: int) -> Path:
    """A copy of the builder package (links) whose genai_config pins the thread count."""
    copy = REPO / "build" / "serving" / "work" / f"genai-{package.name}-{threads}t"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for item in package.iterdir():
        if item.name != "genai_config.json":
            (copy / item.name).symlink_to(item.resolve())
    config = json.loads((package / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    (copy / "genai_config.json").write_text(json.dumps(config))
    return copy


def first_token_times(engine, prompts: Prompts, conversations) -> list[float]:
    """Each prompt alone, one at a time: seconds from adding it to its first token."""
    times = []
    for key, messages in enumerate(conversations):
        start = time.perf_counter()
        engine.add(10**6 + key, prompts.render(messages), 1)
        first = None
        while engine.busy():
            for _, ids, _ in engine.step():
                if ids and first is None:
                    first = time.perf_counter() - start
        times.append(first)
    return times


def main() -> int:
    kind, model_dir, package, threads = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # libraries that print go to stderr; stdout carries only the answers
    prompts = Prompts(package)
    engine = GenAIEngine(model_dir, threads) if kind == "genai" else OpenVINOPipeline(model_dir, threads)
    print(json.dumps({"ready": True}), file=answers, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        if job["op"] == "replay":
            spec = WorkloadSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["spec"].items()})
            records = replay_steps(make_workload(spec, prompts.count), engine, prompts.render, prompts.decode)
            # Neither reports prefix-cache hits: genai keeps no cache on CPU, OpenVINO exposes no counter.
            reply = {"summary": summarize(records)}
        else:
            reply = {"ttft_s": first_token_times(engine, prompts, job["prompts"])}
        print(json.dumps(reply), file=answers, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
