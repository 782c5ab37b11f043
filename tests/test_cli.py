"""The `appliance` command as a user runs it."""

import subprocess
import sys

from tokenizers import Tokenizer


def appliance(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_generate_streams_text_to_the_terminal(daemon, client, models_dir):
    done = appliance("generate", "--target", daemon.target, "--model", "qwen2", "--max-tokens", "10",
                     "--ignore-eos", "-v", "Where is my parcel?")
    assert done.returncode == 0, done.stderr
    ids = [t for c in client.generate("qwen2", "Where is my parcel?", max_tokens=10, ignore_eos=True) for t in c.token_ids]
    tokenizer = Tokenizer.from_file(str(models_dir / "qwen2" / "tokenizer.json"))
    assert done.stdout == tokenizer.decode(ids) + "\n"
    assert "length; prompt" in done.stderr and "completion 10 tokens" in done.stderr


def test_generate_reports_status_and_exits_1_on_error(daemon):
    done = appliance("generate", "--target", daemon.target, "--model", "ghost", "hi")
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr and "Traceback" not in done.stderr


def test_models_and_embed_commands(daemon):
    done = appliance("models", "--target", daemon.target)
    assert done.returncode == 0
    assert "minilm" in done.stdout and "ready" in done.stdout
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert "batch-invariant=" in lines["llama"] and "batch-invariant" not in lines["minilm"]
    done = appliance("embed", "--target", daemon.target, "--model", "minilm", "退款", "refund")
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) == 2


def test_redact_command_locally_and_through_the_daemon(daemon):
    text = "Mail bob@example.org, 身份证11010519491231002X; Sarah Miller called, 客户张伟来电\n"
    local = subprocess.run([sys.executable, "-m", "appliance.cli", "redact"], input=text, capture_output=True,
                           text=True, timeout=60)
    remote = subprocess.run([sys.executable, "-m", "appliance.cli", "redact", "--target", daemon.target], input=text,
                            capture_output=True, text=True, timeout=60)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    assert local.stdout == remote.stdout == "Mail [EMAIL_ADDRESS], 身份证[CN_RESIDENT_ID]; [PERSON] called, 客户[PERSON]来电\n"


# ---- bad usage: one line on stderr naming the flag or file, exit code 2, never a traceback --------

import io
import json
import sqlite3

import pytest

from appliance import cli
from appliance.client import GenerateChunk
from appliance.errors import InvalidRequest
from appliance.server.keys import KeyRights, KeyStore
from tests.conftest import free_port


def run(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(result, *words):
    code, _, err = result
    assert code == 2, result
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture
def closed_target():
    return f"127.0.0.1:{free_port()}"


@pytest.mark.parametrize("argv,flag", [
    (["generate", "--max-tokens", "-1", "hi"], "--max-tokens"),
    (["generate", "--max-tokens", "99999999999999", "hi"], "--max-tokens"),
    (["generate", "--seed", "-5", "hi"], "--seed"),
    (["generate", "--seed", str(2**64), "hi"], "--seed"),
    (["generate", "--temperature", "nan", "hi"], "--temperature"),
    (["generate", "--temperature", "1e39", "hi"], "--temperature"),
    (["chat", "--max-tokens", "-1"], "--max-tokens"),
    (["classify", "--top-k", "-1", "hi"], "--top-k"),
])
def test_numeric_flags_out_of_the_wire_range_are_refused_naming_the_flag(capsys, closed_target, argv, flag):
    command, *rest = argv
    result = run(capsys, command, "--target", closed_target, "--model", "m", *rest)
    assert_refused(result, flag, "from 0 to")


def test_the_largest_wire_values_are_accepted(capsys, closed_target):
    # They reach the (closed) appliance: refused by the connection, not by the flags.
    code, _, err = run(capsys, "generate", "--target", closed_target, "--model", "m", "--max-tokens",
                       str(2**32 - 1), "--seed", str(2**64 - 1), "hi")
    assert code == 1 and "UNAVAILABLE" in err and len(err.strip().splitlines()) == 1, err


def test_an_unreachable_appliance_is_one_line(capsys, monkeypatch, closed_target):
    _stdin(monkeypatch, b'{"text": "hi"}\n')
    for argv in (["models"], ["reload"], ["embed", "--model", "m", "x"], ["redact", "--jsonl"]):
        code, _, err = run(capsys, *argv, "--target", closed_target)
        assert code in (0, 1) and "Traceback" not in err, (argv, err)
    code, _, err = run(capsys, "models", "--target", closed_target)
    assert code == 1 and err.startswith("appliance models: UNAVAILABLE: ") and len(err.splitlines()) == 1


def test_usage_of_a_missing_file_says_so_and_creates_nothing(capsys, tmp_path):
    missing = tmp_path / "missing.db"
    assert_refused(run(capsys, "usage", "--db", str(missing)), str(missing), "does not exist")
    assert not missing.exists()


def test_usage_and_keys_refuse_a_file_that_is_not_their_database(capsys, tmp_path):
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    assert_refused(run(capsys, "usage", "--db", str(text)), str(text), "not a usage database")
    assert_refused(run(capsys, "keys", "--db", str(text), "list"), str(text), "not a keys database")
    assert_refused(run(capsys, "keys", "--db", str(text), "add", "bot"), str(text), "not a keys database")
    assert text.read_text().startswith("root:")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    # An SQLite file of another kind is neither read as usage nor given a keys table.
    assert_refused(run(capsys, "usage", "--db", str(other)), "not a usage database")
    assert_refused(run(capsys, "keys", "--db", str(other), "add", "bot"), "not a keys database")
    with sqlite3.connect(other) as db:
        assert [n for (n,) in db.execute("SELECT name FROM sqlite_master")] == ["t"]
    missing = tmp_path / "keys.db"
    assert_refused(run(capsys, "keys", "--db", str(missing), "list"), str(missing), "does not exist")
    assert not missing.exists()


def test_usage_reads_its_database_and_checks_since(capsys, tmp_path):
    from appliance.server.usage import UsageEvent, UsageLog

    log = UsageLog(tmp_path / "usage.db")
    log.record(UsageEvent("k1", "llama", prompt_tokens=3, completion_tokens=4))
    log.close()
    code, out, _ = run(capsys, "usage", "--db", str(tmp_path / "usage.db"), "--csv", "--since", "2000-01-01")
    assert code == 0 and out.splitlines()[1].split(",")[1:] == ["k1", "llama", "1", "3", "4", "0", "0"]
    for since in ("notadate", "2026-13-01", "20261201", "2026-1-1", ""):
        assert_refused(run(capsys, "usage", "--db", str(tmp_path / "usage.db"), "--since", since),
                       "--since", "YYYY-MM-DD")


def test_a_missing_or_unreadable_ca_file_is_named(capsys, tmp_path, closed_target):
    missing = tmp_path / "missing.pem"
    assert_refused(run(capsys, "models", "--target", closed_target, "--ca-file", str(missing)), "--ca-file",
                   str(missing))
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate")
    assert_refused(run(capsys, "models", "--target", closed_target, "--ca-file", str(text)), "--ca-file",
                   "no valid PEM certificate")
    assert_refused(run(capsys, "redact", "--target", closed_target, "--ca-file", str(tmp_path)), "--ca-file")
    # Shaped like PEM but not a certificate: gRPC would log its refusal over several lines.
    text.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert_refused(run(capsys, "models", "--target", closed_target, "--ca-file", str(text)), "--ca-file",
                   "no valid PEM certificate")


@pytest.mark.parametrize("argv,flag", [
    (["bot", "--requests-per-minute", "-5"], "--requests-per-minute"),
    (["bot", "--tokens-per-minute", "-1"], "--tokens-per-minute"),
    (["bot", "--max-concurrency", "-1"], "--max-concurrency"),
    (["bot", "--output-policies", "bogus"], "--output-policies"),
    (["bot", "--output-policies", "redact,"], "--output-policies"),
    (["bot", "--input-policies", "restore"], "--input-policies"),
    (["bot", "--model", ""], "--model"),
    (["bot", "--model", " llama"], "--model"),
    ([""], "name"),
    (["  "], "name"),
])
def test_keys_add_refuses_an_invalid_key_and_stores_nothing(capsys, tmp_path, argv, flag):
    db = tmp_path / "keys.db"
    KeyStore(db)
    assert_refused(run(capsys, "keys", "--db", str(db), "add", *argv), f"argument {flag}:")
    assert KeyStore(db).list() == []


def test_keys_add_help_says_what_0_means(capsys):
    code, out, _ = run(capsys, "keys", "--db", "x.db", "add", "--help")
    assert code == 0
    flat = " ".join(out.split())
    for flag in ("--requests-per-minute", "--tokens-per-minute", "--max-concurrency"):
        assert flag in flat
    assert flat.count("(0, the default: no limit)") == 3


def test_keys_add_stores_what_it_was_given(capsys, tmp_path):
    db = tmp_path / "keys.db"
    code, out, _ = run(capsys, "keys", "--db", str(db), "add", "bot", "--model", "llama", "--model", "llama",
                       "--requests-per-minute", "0", "--max-concurrency", "2", "--output-policies", "redact")
    assert code == 0 and "apk_" in out
    (key,) = KeyStore(db).list()
    assert key.rights == KeyRights(models=("llama",), max_concurrency=2, input_policies=("redact", "pseudonymize"),
                                   output_policies=("redact",))


@pytest.mark.parametrize("fields,field", [
    ({"requests_per_minute": -5}, "requests_per_minute"),
    ({"max_concurrency": -1}, "max_concurrency"),
    ({"tokens_per_minute": 1.5}, "tokens_per_minute"),
    ({"tokens_per_minute": True}, "tokens_per_minute"),
    ({"models": ("",)}, "models"),
    ({"output_policies": ("bogus",)}, "output_policies"),
    ({"input_policies": ("restore",)}, "input_policies"),
    ({"input_policies": ()}, "input_policies"),
])
def test_key_rights_refuse_invalid_values_for_every_caller(fields, field):
    with pytest.raises(InvalidRequest) as info:
        KeyRights(**fields)
    assert info.value.field == field


def test_key_store_refuses_an_empty_name(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    for name in ("", "   ", "a\nb", "x" * 101):
        with pytest.raises(InvalidRequest, match="^name: "):
            store.add(name, KeyRights())
    assert store.list() == []


def test_a_key_stored_with_invalid_rights_is_refused_and_listed_as_invalid(capsys, tmp_path):
    db = tmp_path / "keys.db"
    store = KeyStore(db)
    _, token = store.add("old", KeyRights())
    with sqlite3.connect(db) as conn:  # as a version before validation could store it
        conn.execute("UPDATE api_keys SET rights = ?", (json.dumps({"requests_per_minute": -5}),))
    assert KeyStore(db).verify(token) is None
    code, out, _ = run(capsys, "keys", "--db", str(db), "list")
    assert code == 0 and "invalid" in out and "requests_per_minute" in out


def test_repeated_label_names_are_refused(capsys, closed_target):
    assert_refused(run(capsys, "classify", "--target", closed_target, "--model", "m", "--label", "a=b",
                       "--label", "a=c", "text"), "--label", "'a'", "twice")
    assert_refused(run(capsys, "classify", "--target", closed_target, "--model", "m", "--label", "=b", "text"),
                   "--label")


def test_reload_takes_one_appliance(capsys, closed_target):
    code, out, _ = run(capsys, "reload", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "one appliance" in flat and "load-balanced" not in flat.replace("a load-balanced target would", "")
    assert_refused(run(capsys, "reload", "--target", f"ipv4:{closed_target},{closed_target}"), "--target",
                   "several appliances")


def test_text_that_is_not_utf8_is_refused(capsys, closed_target):
    prompt = b"caf\xe9".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    assert_refused(run(capsys, "generate", "--target", closed_target, "--model", "m", prompt), "prompt", "UTF-8")
    assert_refused(run(capsys, "models", "--target", closed_target, "--api-key", prompt), "--api-key")
    assert_refused(run(capsys, "models", "--target", closed_target, "--api-key", "apk_a b"), "--api-key")
    assert_refused(run(capsys, "models", "--target", ""), "--target")
    for target in ("ipv4:notanaddress", "ipv4:127.0.0.1", "ipv6:::1:1", f"ipv4:{closed_target},[::1]:1"):
        assert_refused(run(capsys, "models", "--target", target), "--target")


def test_messages_stay_on_one_line(capsys, tmp_path):
    assert_refused(run(capsys, "keys", "--db", str(tmp_path / "a\nb.db"), "list"), "--db")
    code, _, err = run(capsys, "models", "--bogus", "a\nb")
    assert code == 2 and err.count("\n") == 1 and "a\\nb" in err, err


def _stdin(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape"))


def test_redact_jsonl_refuses_a_lone_surrogate(capsys, monkeypatch):
    _stdin(monkeypatch, b'{"text": "ok"}\n{"text": "\\ud800 x"}\n')
    assert_refused(run(capsys, "redact", "--jsonl"), "line 2")


def test_redact_replaces_bytes_that_are_not_utf8(capsysbinary, monkeypatch):
    _stdin(monkeypatch, b"\xff\xfe mail bob@example.org \xc3")
    assert cli.main(["redact"]) == 0
    out, err = capsysbinary.readouterr()
    assert out == "\ufffd\ufffd mail [EMAIL_ADDRESS] \ufffd".encode() and b"Traceback" not in err


def test_chat_refuses_a_line_that_is_not_utf8(capsys, monkeypatch, closed_target):
    _stdin(monkeypatch, b"\xff\n")
    assert_refused(run(capsys, "chat", "--target", closed_target, "--model", "m"), "stdin", "UTF-8")


class _Shared(io.RawIOBase):
    """One file behind both stdout and stderr (`2>&1` into a pipe or a file)."""

    def __init__(self):
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, b):
        self.data += b
        return len(b)


class _FakeClient:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def generate(self, *args, **kwargs):
        yield GenerateChunk(text="Hello", token_ids=(1,))
        yield GenerateChunk(text=" world", token_ids=(2,), finish_reason="length", prompt_tokens=3,
                            completion_tokens=2, time_to_first_token_ns=5_000_000)


def test_generate_verbose_starts_its_stats_line_on_a_line_of_its_own(monkeypatch):
    shared = _Shared()
    # As Python sets them up when the streams are not a terminal: stdout block-buffered,
    # stderr line-buffered.
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(shared), encoding="utf-8"))
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(io.BufferedWriter(shared), encoding="utf-8",
                                                        line_buffering=True))
    monkeypatch.setattr(cli, "_client", lambda args: _FakeClient())
    assert cli.main(["generate", "--model", "m", "-v", "hi"]) == 0
    sys.stdout.flush()
    sys.stderr.flush()
    assert shared.data.decode() == ("Hello world\n[length; prompt 3 tokens, completion 2 tokens, "
                                    "first token after 5.0 ms]\n")


def test_a_closed_pipe_ends_quietly():
    # `appliance redact < big | head -1`: no traceback, no "Exception ignored", SIGPIPE's status.
    reader = subprocess.Popen([sys.executable, "-m", "appliance.cli", "redact"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()
    _, err = reader.communicate(b"mail bob@example.org\n" * 200_000, timeout=120)
    assert reader.returncode == 141, err
    assert b"Traceback" not in err and b"Exception ignored" not in err, err


def test_interrupt_ends_with_130_and_no_traceback(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_client", interrupted)
    assert cli.main(["generate", "--model", "m", "hi"]) == 130
    # ^C while the parser is built (it imports the engine's limits) as well.
    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["models"]) == 130
    assert "Traceback" not in capsys.readouterr().err
