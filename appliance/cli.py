"""The `appliance` command: serve, generate, chat, embed, classify, models, reload, redact, keys, usage.

Every failure a user can cause (a bad flag, a missing file, an unreachable appliance, ^C, a closed
pipe) ends in one line on stderr and an exit code: 2 for bad usage, flags or files, 1 for a
failed call, 130 for ^C; never a traceback."""

from __future__ import annotations

import json
import logging
import os
import sys

import grpc

from appliance import cli_args as types
from appliance.cli_parser import build_parser
from appliance.errors import ConfigError, InvalidRequest


class UsageError(Exception):
    """A bad flag or file found after parsing; main prints it as one line and exits 2."""


def _client(args, balance=None):
    from appliance.client import ApplianceClient

    return ApplianceClient(args.target, api_key=args.api_key, root_certificates=args.ca_file, balance=balance)


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
        "http": {"listen": args.http_listen},
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
    except Exception as exc:  # a bug, not the operator's doing: still one line; the log has it too
        print(f"appliance serve: {type(exc).__name__}: {exc}", file=sys.stderr)
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
        # Where stdout is not a terminal it is block-buffered: without this flush the newline would
        # land after the stats line when both streams go to one file or pipe (2>&1).
        sys.stdout.flush()
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
            if not types._is_unicode(line):
                raise UsageError("stdin: a line is not valid UTF-8 text")
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
    with _client(args) as client:
        results = client.classify(args.model, args.texts, args.label or None, top_k=args.top_k)
    for text, ranked in zip(args.texts, results):
        print(json.dumps({"text": text, "labels": [{"label": n, "score": round(s, 4)} for n, s in ranked]},
                         ensure_ascii=False))
    return 0


def _models(args) -> int:
    with _client(args) as client:
        for m in client.list_models():
            line = (f"{m.name:24} {m.state:8} {m.task:20} {m.architecture:10} {m.precision:5} "
                    f"ctx={m.context_length} version={m.version or '-'}"
                    + ("" if m.batch_invariant is None else f" batch-invariant={'yes' if m.batch_invariant else 'no'}"))
            print(line + (f"  error: {m.error}" if m.error else "")
                  + (f"  last reload failed: {m.reload_error}" if m.reload_error else ""))
    return 0


def _reload(args) -> int:
    from appliance.client import spreads

    if "," in args.target:
        raise UsageError("--target: names several appliances; reload each appliance on its own HOST:PORT "
                         "(a load-balanced target would reach only one of them)")
    # Never balanced: a dns: name with several addresses must not spread a reload at random.
    with _client(args, balance=False if spreads(args.target) else None) as client:
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
    from appliance.redact import Redactor, RedactorSettings
    from appliance.redact.ner import NER_LANGUAGES, load_ner

    # As the daemon does by default: every installed name and address backend.
    redactor = Redactor(RedactorSettings(operator=args.operator), ner=load_ner(NER_LANGUAGES)[0])

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
                # A JSON escape can spell a lone surrogate ("\ud800"), which no output can encode.
                if not isinstance(text, str) or not types._is_unicode(text):
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

    # Only `add` may create the file; list and revoke open an existing keys database.
    store = KeyStore(args.db, mode={"add": "rwc", "list": "ro", "revoke": "rw"}[args.action])
    if args.action == "add":
        rights = KeyRights(models=tuple(dict.fromkeys(args.model or ())), requests_per_minute=args.requests_per_minute,
                           tokens_per_minute=args.tokens_per_minute, max_concurrency=args.max_concurrency,
                           input_policies=args.input_policies, output_policies=args.output_policies,
                           admin=args.admin)
        key, token = store.add(args.name, rights)
        print(f"created key {key.id} ({key.name}); it is shown once, store it now:\n{token}")
    elif args.action == "list":
        for key in store.list():
            state = "revoked" if key.revoked_at else "active"
            if key.invalid:
                print(f"{key.id}  {'invalid':8} {key.name:20} refused: {key.invalid} (revoke it and add it again)")
                continue
            print(f"{key.id}  {state:8} {key.name:20} models={','.join(key.rights.models) or '*'} "
                  f"rpm={key.rights.requests_per_minute or '-'} tpm={key.rights.tokens_per_minute or '-'} "
                  f"concurrency={key.rights.max_concurrency or '-'}{' admin' if key.rights.admin else ''}")
    elif not store.revoke(args.key_id):
        print(f"appliance keys: no active key {types.one_line(args.key_id)}", file=sys.stderr)
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


COMMANDS = {"serve": _serve, "generate": _generate, "chat": _chat, "embed": _embed, "classify": _classify,
            "models": _models, "reload": _reload, "redact": _redact, "keys": _keys, "usage": _usage}


def _silence_stdout() -> None:
    """After a closed pipe (`appliance ... | head`), point stdout at /dev/null so the interpreter's
    final flush does not print "Exception ignored ... BrokenPipeError"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (tests capture it)
        pass


def _run(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    command = f"appliance {args.command}"
    try:
        return COMMANDS[args.command](args)
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = exc.details() if callable(getattr(exc, "details", None)) else exc
        print(f"{command}: {code.name if code else 'RPC failed'}: {types.one_line(details)}", file=sys.stderr)
        return 1
    except (UsageError, ConfigError, InvalidRequest) as exc:
        print(f"{command}: {types.one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise
    except OSError as exc:  # e.g. stdin is a folder (`appliance redact < /etc`)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{command}: {types.one_line(f'{where}{exc.strerror or exc}')}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141  # what a shell reports for a program that SIGPIPE ended, as `head` expects


if __name__ == "__main__":
    sys.exit(main())
