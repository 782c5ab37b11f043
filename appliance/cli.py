"""The `appliance` command: serve, generate, embed, models."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import grpc


def _client(args):
    from appliance.client import ApplianceClient

    roots = args.ca_file.read_bytes() if args.ca_file else None
    return ApplianceClient(args.target, api_key=args.api_key, root_certificates=roots)


def _watchdog_interval() -> float | None:
    """systemd's WatchdogSec in seconds, when it asks this process for pings (sd_watchdog_enabled)."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6


def _serve(args) -> int:
    from appliance.errors import ApplianceError, ConfigError
    from appliance.server.app import serve
    from appliance.server.config import load_config

    overrides = {
        "server": {"listen": args.listen, "models": args.models, "grace_period_s": args.grace_period},
        "runtime": {"providers": args.providers.split(",") if args.providers else None,
                    "intra_op_threads": args.threads},
    }
    from appliance.server.logs import configure_json_logging

    configure_json_logging()
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"appliance serve: {exc}", file=sys.stderr)
        return 2
    try:
        serve(config, notify_socket=os.environ.get("NOTIFY_SOCKET"), watchdog_s=_watchdog_interval())
    except ConfigError as exc:
        print(f"appliance serve: {exc}", file=sys.stderr)
        return 2
    except (ApplianceError, OSError) as exc:
        print(f"appliance serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _generate(args) -> int:
    with _client(args) as client:
        last = None
        for chunk in client.generate(args.model, args.prompt, max_tokens=args.max_tokens,
                                     temperature=args.temperature, seed=args.seed,
                                     ignore_eos=args.ignore_eos):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            last = chunk
        sys.stdout.write("\n")
        if last is not None and args.verbose:
            print(f"[{last.finish_reason}; prompt {last.prompt_tokens} tokens, completion "
                  f"{last.completion_tokens} tokens, first token after "
                  f"{last.time_to_first_token_ns / 1e6:.1f} ms]", file=sys.stderr)
    return 0


def _chat(args) -> int:
    """A terminal conversation: each line you type is a user turn; the reply streams back."""
    history: list[tuple[str, str]] = [("system", args.system)] if args.system else []
    with _client(args) as client:
        while True:
            try:
                line = input("> ")
            except EOFError:
                print()
                return 0
            if not line.strip():
                continue
            history.append(("user", line))
            reply = []
            for chunk in client.generate(args.model, messages=history, max_tokens=args.max_tokens,
                                         temperature=args.temperature, seed=args.seed):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                reply.append(chunk.text)
            sys.stdout.write("\n")
            history.append(("assistant", "".join(reply)))


def _embed(args) -> int:
    with _client(args) as client:
        vectors = client.embed(args.model, args.texts, normalize=not args.raw)
    for text, vector in zip(args.texts, vectors):
        print(json.dumps({"text": text, "embedding": [round(float(v), 6) for v in vector]}, ensure_ascii=False))
    return 0


def _classify(args) -> int:
    labels = dict(label.split("=", 1) if "=" in label else (label, "") for label in args.label or ())
    with _client(args) as client:
        results = client.classify(args.model, args.texts, labels or None, top_k=args.top_k)
    for text, ranked in zip(args.texts, results):
        print(json.dumps({"text": text, "labels": [{"label": n, "score": round(s, 4)} for n, s in ranked]},
                         ensure_ascii=False))
    return 0


def _models(args) -> int:
    with _client(args) as client:
        for m in client.list_models():
            line = (f"{m.name:24} {m.state:8} {m.task:20} {m.architecture:10} {m.precision:5} "
                    f"ctx={m.context_length} version={m.version or '-'}")
            print(line + (f"  error: {m.error}" if m.error else "")
                  + (f"  last reload failed: {m.reload_error}" if m.reload_error else ""))
    return 0


def _reload(args) -> int:
    with _client(args) as client:
        results = client.reload_models()
    for r in results:
        print(f"{r.name:24} {r.outcome:9} {r.version or '-':16}" + (f"  error: {r.error}" if r.error else ""))
    return 1 if any(r.outcome == "failed" for r in results) else 0


def _redact(args) -> int:
    if args.target:
        with _client(args) as client:
            def remote(text: str):
                result = client.redact(text, args.operator)
                return result.text, [(t, start, end) for t, start, end, _ in result.entities]

            return _redact_with(remote, None, args)
    from appliance.redact import RedactionConfig, Redactor

    redactor = Redactor(RedactionConfig(operator=args.operator))

    def local(text: str):
        result = redactor.redact(text)
        return result.text, [(e.type, e.start, e.end) for e in result.entities]

    return _redact_with(local, redactor.stream, args)


def _redact_with(redact, open_stream, args) -> int:
    """redact(text) -> (text, [(type, start, end)]); open_stream() streams stdin when given (local
    redaction); without it (the RPC takes one text) stdin is read whole."""
    out = sys.stdout.buffer
    if args.jsonl:
        for number, line in enumerate(sys.stdin.buffer, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
                if not isinstance(text, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                print(f'appliance redact: line {number}: expected a JSON object with a string "text"', file=sys.stderr)
                return 2
            redacted, entities = redact(text)
            found = [{"type": t, "start": start, "end": end} for t, start, end in entities]
            out.write(json.dumps({"text": redacted, "entities": found}, ensure_ascii=False).encode() + b"\n")
        return 0
    if open_stream is None:
        out.write(redact(sys.stdin.buffer.read().decode("utf-8", "replace"))[0].encode())
        out.flush()
        return 0
    # Plain text streams through in blocks: the output equals redacting all of stdin at once.
    stream = open_stream()
    for block in iter(lambda: sys.stdin.buffer.read1(1 << 16), b""):
        out.write(stream.feed(block).encode())
    out.write(stream.close().encode())
    out.flush()
    return 0


def _keys(args) -> int:
    from appliance.server.keys import KeyRights, KeyStore

    store = KeyStore(args.db)
    if args.action == "add":
        rights = KeyRights(models=tuple(args.model or ()), requests_per_minute=args.requests_per_minute,
                           tokens_per_minute=args.tokens_per_minute, max_concurrency=args.max_concurrency,
                           input_policies=tuple(args.input_policies.split(",")),
                           output_policies=tuple(args.output_policies.split(",")), admin=args.admin)
        key, token = store.add(args.name, rights)
        print(f"created key {key.id} ({key.name}); it is shown once, store it now:\n{token}")
    elif args.action == "list":
        for key in store.list():
            state = "revoked" if key.revoked_at else "active"
            print(f"{key.id}  {state:8} {key.name:20} models={','.join(key.rights.models) or '*'} "
                  f"rpm={key.rights.requests_per_minute or '-'} tpm={key.rights.tokens_per_minute or '-'} "
                  f"concurrency={key.rights.max_concurrency or '-'}{' admin' if key.rights.admin else ''}")
    elif not store.revoke(args.key_id):
        print(f"appliance keys: no active key {args.key_id}", file=sys.stderr)
        return 1
    return 0


def _usage(args) -> int:
    from appliance.server.usage import COLUMNS, read_usage, usage_csv

    rows = read_usage(args.db, args.since)
    if args.csv:
        sys.stdout.write(usage_csv(rows))
        return 0
    print("  ".join(f"{c:>17}" if i > 2 else f"{c:12}" for i, c in enumerate(COLUMNS)))
    for row in rows:
        print("  ".join(f"{v:>17}" if i > 2 else f"{v:12}" for i, v in enumerate(row)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="ONNX LLM inference appliance")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC daemon")
    serve.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    serve.add_argument("--models", type=Path, help="folder of model packages; each is served under its folder name")
    serve.add_argument("--listen", help="HOST:PORT to listen on")
    serve.add_argument("--providers", help="comma-separated execution providers: tensorrt,cuda,cpu")
    serve.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (0: all cores)")
    serve.add_argument("--grace-period", type=float, help="seconds running streams get after SIGTERM")
    serve.set_defaults(func=_serve)

    keys = sub.add_parser("keys", help="manage API keys (stored as salted hashes)")
    keys.add_argument("--db", type=Path, required=True, help="the keys database ([auth] keys_db)")
    key_actions = keys.add_subparsers(dest="action", required=True)
    add = key_actions.add_parser("add", help="create a key and print it once")
    add.add_argument("name")
    add.add_argument("--model", action="append", help="model the key may use (repeat); default: all")
    add.add_argument("--requests-per-minute", type=int, default=0)
    add.add_argument("--tokens-per-minute", type=int, default=0)
    add.add_argument("--max-concurrency", type=int, default=0)
    add.add_argument("--input-policies", default="redact,pseudonymize",
                     help="redaction input policies the key may use (comma-separated: off,redact,pseudonymize)")
    add.add_argument("--output-policies", default="redact,restore",
                     help="redaction output policies the key may use (comma-separated: off,redact,restore)")
    add.add_argument("--admin", action="store_true", help="the key may call the Admin service (hot reload)")
    key_actions.add_parser("list", help="list keys (never their secrets)")
    revoke = key_actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    keys.set_defaults(func=_keys)

    usage = sub.add_parser("usage", help="print metered usage per key, model and day")
    usage.add_argument("--db", type=Path, required=True, help="the usage database ([server] usage_db)")
    usage.add_argument("--since", help="first day to include (YYYY-MM-DD)")
    usage.add_argument("--csv", action="store_true", help="CSV on stdout")
    usage.set_defaults(func=_usage)

    def client_command(name, help_text, func):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the appliance; several as ipv4:H:P,H:P (or a dns: name) are load-balanced")
        command.add_argument("--api-key", default=os.environ.get("APPLIANCE_API_KEY"),
                             help="API key (default: $APPLIANCE_API_KEY)")
        command.add_argument("--ca-file", type=Path, help="PEM CA of the server certificate (turns on TLS)")
        command.set_defaults(func=func)
        return command

    generate = client_command("generate", "stream a generation to the terminal", _generate)
    generate.add_argument("--model", required=True)
    generate.add_argument("--max-tokens", type=int, default=0)
    generate.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--ignore-eos", action="store_true")
    generate.add_argument("-v", "--verbose", action="store_true", help="print usage and timing to stderr")
    generate.add_argument("prompt")

    chat = client_command("chat", "talk with a model through its chat template", _chat)
    chat.add_argument("--model", required=True)
    chat.add_argument("--system", help="system message to start the conversation with")
    chat.add_argument("--max-tokens", type=int, default=0)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--seed", type=int, default=0)

    embed = client_command("embed", "print embeddings as JSON lines", _embed)
    embed.add_argument("--model", required=True)
    embed.add_argument("--raw", action="store_true", help="do not normalise to unit length")
    embed.add_argument("texts", nargs="+")

    classify = client_command("classify", "label texts (a classifier, or zero-shot with an embedding model)",
                              _classify)
    classify.add_argument("--model", required=True)
    classify.add_argument("--label", action="append",
                          help="zero-shot label as NAME=DESCRIPTION (repeat); not for text-classification models")
    classify.add_argument("--top-k", type=int, default=0)
    classify.add_argument("texts", nargs="+")

    client_command("models", "list served models", _models)
    client_command("reload", "rescan the appliance's models folder and swap in what changed (admin key)", _reload)

    redact = sub.add_parser("redact", help="redact PII from stdin to stdout (locally, or by the daemon with --target)")
    redact.add_argument("--target", help="HOST:PORT of an appliance to redact with (default: this process)")
    redact.add_argument("--api-key", default=os.environ.get("APPLIANCE_API_KEY"))
    redact.add_argument("--ca-file", type=Path)
    redact.add_argument("--jsonl", action="store_true",
                        help='read {"text": ...} lines, write {"text", "entities"} lines')
    redact.add_argument("--operator", choices=("replace", "mask", "pseudonymize"), default="replace",
                        help="what an entity becomes: [TYPE], a mask, or a numbered placeholder")
    redact.set_defaults(func=_redact)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        print(f"appliance {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
