"""The `appliance` command line's parser: one subcommand per command in appliance/cli.py, which
dispatches on `args.command`. Flag values are checked by the types in appliance/cli_args.py."""

from __future__ import annotations

import argparse
import os

from appliance import cli_args as types


def build_parser() -> argparse.ArgumentParser:
    parser = types.OneLineParser(prog="appliance", description="ONNX LLM inference appliance")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_keys(sub)
    _add_usage(sub)
    _add_client_commands(sub)
    _add_redact(sub)
    return parser


def _add_serve(sub) -> None:
    serve = sub.add_parser("serve", help="run the gRPC daemon")
    serve.add_argument("--config", type=types.path, help="TOML config file (flags override it)")
    serve.add_argument("--models", type=types.path,
                       help="folder of model packages; each is served under its folder name")
    serve.add_argument("--listen", type=types.text, help="HOST:PORT to listen on")
    serve.add_argument("--http-listen", type=types.text,
                       help="HOST:PORT of the OpenAI-compatible HTTP API ([http] listen; off when unset)")
    serve.add_argument("--providers", type=types.text, help="comma-separated execution providers: tensorrt,cuda,cpu")
    serve.add_argument("--threads", type=types.whole_number(0, 65535, "all cores"),
                       help="ONNX Runtime intra-op threads (0: all cores)")
    serve.add_argument("--grace-period", type=types.number_between(0, 86400),
                       help="seconds running streams get after SIGTERM (0 to 86400)")


def _add_keys(sub) -> None:
    from appliance.server.keys import INPUT_POLICIES, MAX_LIMIT, OUTPUT_POLICIES

    keys = sub.add_parser("keys", help="manage API keys (stored as salted hashes)")
    keys.add_argument("--db", type=types.path, required=True,
                      help="the keys database ([auth] keys_db); only add creates it")
    key_actions = keys.add_subparsers(dest="action", required=True)
    add = key_actions.add_parser("add", help="create a key and print it once")
    add.add_argument("name", type=types.name, help="what the key is for (shown by list)")
    add.add_argument("--model", action="append", type=types.name,
                     help="model the key may use (repeat); default: all")
    limit = types.whole_number(0, MAX_LIMIT, "no limit")
    add.add_argument("--requests-per-minute", type=limit, default=0,
                     help="requests the key may start per minute (0, the default: no limit)")
    add.add_argument("--tokens-per-minute", type=limit, default=0,
                     help="prompt and completion tokens the key may use per minute (0, the default: no limit)")
    add.add_argument("--max-concurrency", type=limit, default=0,
                     help="requests the key may have running at once (0, the default: no limit)")
    add.add_argument("--input-policies", type=types.policies(INPUT_POLICIES), default="redact,pseudonymize",
                     help="redaction input policies the key may use (comma-separated from off,redact,pseudonymize; "
                          "default: redact,pseudonymize)")
    add.add_argument("--output-policies", type=types.policies(OUTPUT_POLICIES), default="redact,restore",
                     help="redaction output policies the key may use (comma-separated from off,redact,restore; "
                          "default: redact,restore)")
    add.add_argument("--admin", action="store_true", help="the key may call the Admin service (hot reload)")
    key_actions.add_parser("list", help="list keys (never their secrets)")
    revoke = key_actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=types.text)


def _add_usage(sub) -> None:
    usage = sub.add_parser("usage", help="print metered usage per key, model and day")
    usage.add_argument("--db", type=types.path, required=True, help="the usage database ([server] usage_db)")
    usage.add_argument("--since", type=types.day, help="first UTC day to include (YYYY-MM-DD)")
    usage.add_argument("--csv", action="store_true", help="CSV on stdout")


def _add_client_commands(sub) -> None:
    from appliance.engine.sampling import MAX_TEMPERATURE

    uint32, uint64 = (0, types.UINT32_MAX), (0, types.UINT64_MAX)
    balanced_target = ("HOST:PORT of the appliance; several as ipv4:H:P,H:P (or a dns: name) are load-balanced")

    def client_command(name, help_text, target_help=balanced_target):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--target", type=types.target, default="127.0.0.1:50051", help=target_help)
        command.add_argument("--api-key", type=types.api_key, default=os.environ.get("APPLIANCE_API_KEY"),
                             help="API key (default: $APPLIANCE_API_KEY)")
        command.add_argument("--ca-file", type=types.pem_file, help="PEM CA of the server certificate (turns on TLS)")
        return command

    def sampling(command):
        command.add_argument("--model", type=types.text, required=True)
        command.add_argument("--max-tokens", type=types.whole_number(*uint32, "the server's default"), default=0,
                             help="most new tokens (0, the default: the server's default)")
        command.add_argument("--temperature", type=types.number_between(0, MAX_TEMPERATURE), default=0.0,
                             help=f"0 (the default) is greedy; up to {MAX_TEMPERATURE:g}")
        command.add_argument("--seed", type=types.whole_number(*uint64, "a seed the server picks"), default=0,
                             help="sampling seed (0, the default: one the server picks)")

    generate = client_command("generate", "stream a generation to the terminal")
    sampling(generate)
    generate.add_argument("--ignore-eos", action="store_true")
    generate.add_argument("-v", "--verbose", action="store_true", help="print usage and timing to stderr")
    generate.add_argument("prompt", type=types.text)

    chat = client_command("chat", "talk with a model through its chat template")
    sampling(chat)
    chat.add_argument("--system", type=types.text, help="system message to start the conversation with")

    embed = client_command("embed", "print embeddings as JSON lines")
    embed.add_argument("--model", type=types.text, required=True)
    embed.add_argument("--raw", action="store_true", help="do not normalise to unit length")
    embed.add_argument("texts", nargs="+", type=types.text)

    classify = client_command("classify", "label texts (a classifier, or zero-shot with an embedding model)")
    classify.add_argument("--model", type=types.text, required=True)
    classify.add_argument("--label", action=types.Labels, metavar="NAME=DESCRIPTION",
                          help="zero-shot label (repeat, each name once); not for text-classification models")
    classify.add_argument("--top-k", type=types.whole_number(*uint32, "all labels"), default=0,
                          help="best labels to print per text (0, the default: all)")
    classify.add_argument("texts", nargs="+", type=types.text)

    client_command("models", "list served models")
    client_command("reload", "rescan the appliance's models folder and swap in what changed (admin key)",
                   target_help="HOST:PORT of one appliance; reload each appliance of a fleet on its own address "
                               "(a load-balanced target would reach only one)")


def _add_redact(sub) -> None:
    redact = sub.add_parser("redact", help="redact PII from stdin to stdout (locally, or by the daemon with --target)")
    redact.add_argument("--target", type=types.target,
                        help="HOST:PORT of an appliance to redact with (default: this process)")
    redact.add_argument("--api-key", type=types.api_key, default=os.environ.get("APPLIANCE_API_KEY"))
    redact.add_argument("--ca-file", type=types.pem_file)
    redact.add_argument("--jsonl", action="store_true",
                        help='read {"text": ...} lines, write {"text", "entities"} lines')
    redact.add_argument("--operator", choices=("replace", "mask", "pseudonymize"), default="replace",
                        help="what an entity becomes: [TYPE], a mask, or a numbered placeholder")
