"""Hypothesis-made command lines for every `appliance` command: no traceback reaches a user.

The argument vectors come from the parser itself: every subcommand and every action that
build_parser() defines, with valid and edge values (the wire ranges' ends and one past them),
unknown flags, missing values, odd, huge, negative and non-UTF-8 text (as Python decodes such argv
bytes), in random order. `appliance.cli.main` runs in-process with stdin, stdout and stderr
replaced; client commands point at a closed loopback port so they fail at once, `serve` gets a
stand-in for the daemon (its flags and config are parsed and checked, nothing listens), and
every database path lies in a temporary folder. Each run must end in an exit code (an int from
main, or argparse's SystemExit with 0 or 2), write at most one line to stderr, and never a
traceback; any exception escaping main fails the test.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import cli
from appliance.server.keys import KeyRights, KeyStore
from appliance.server.usage import UsageEvent, UsageLog
from tests.conftest import free_port
from tests.reliability.conftest import SCALES, sized

# Strings as argv can hold them: no NUL; lone surrogates stand for bytes that are not UTF-8.
argv_chars = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
not_utf8 = st.sampled_from([b"\xff", b"caf\xe9", b"\xc3", b"\xed\xa0\x80", b"ok\x80ok"]).map(
    lambda raw: raw.decode("utf-8", "surrogateescape"))
odd_text = st.one_of(
    st.text(argv_chars, max_size=12), not_utf8,
    st.sampled_from(["", " ", "-", "--", "-1", "--x", "=", "a=b", "a=", "=b", ",", "redact,", "\n", "\t",
                     "é", "退款", "🙂", "%s", "{}", "'", '"', "\\", "a" * 5_000]),
)
integers = st.one_of(
    st.sampled_from([0, 1, -1, -5, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 2**64, 99999999999999]),
    st.integers(-2**70, 2**70),
).map(str)
huge_integers = st.sampled_from(["9" * 40, "9" * 5_000, "1e3", "0x10", "1_000", " 7", "+3", "٣"])
floats = st.one_of(
    st.sampled_from(["0", "0.5", "1", "2", "100", "100.0001", "-0", "-1", "nan", "inf", "-inf", "1e39", "1e-300"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
days = st.one_of(st.dates().map(str), st.sampled_from(["2026-12-01", "2026-13-01", "20261201", "2026-1-1", "notadate"]))
policies = st.lists(st.sampled_from(["off", "redact", "pseudonymize", "restore", "bogus", ""]), min_size=1,
                    max_size=4).map(",".join)


@dataclass
class Places:
    """Where the run's files are: every path a command gets lies under `root`."""

    root: Path
    closed: str  # a loopback HOST:PORT nothing listens on

    def paths(self):
        names = ["keys.db", "usage.db", "other.db", "text.txt", "missing.db", "config.toml", "bad.toml",
                 "models", "ca.pem", "bad.pem", "no/such/folder/x.db", ""]
        known = st.sampled_from([str(self.root / n) if n else str(self.root) for n in names])
        # Odd names, but inside the folder: no run may write anywhere else.
        odd = odd_text.filter(lambda t: t not in ("", ".", "..")).map(lambda t: str(self.root / t.replace("/", "_")))
        return st.one_of(known, known, odd)

    def targets(self):
        common = st.just(self.closed)
        rare = st.sampled_from(["", " ", "-", "ipv4:notanaddress", "ipv4:127.0.0.1", "ipv6:::1", "dns:",
                                f"ipv4:{self.closed},{self.closed}", f"unix:{self.root}/no-socket",
                                f"{self.closed}\udcff", f"ipv6:[::1]:{self.closed.rsplit(':', 1)[1]}"])
        return st.floats(0, 1).flatmap(lambda x: rare if x < 0.3 else common)


def self_signed_pem() -> bytes:
    """A CA certificate, so --ca-file also takes a good file (TLS to the closed port then fails)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def make_places(root: Path) -> Places:
    store = KeyStore(root / "keys.db")
    store.add("existing", KeyRights(models=("llama",)))
    usage = UsageLog(root / "usage.db")
    usage.record(UsageEvent("k", "llama", 3, 4))
    usage.close()
    with sqlite3.connect(root / "other.db") as db:
        db.execute("CREATE TABLE t (x)")
    (root / "text.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "models").mkdir()
    (root / "config.toml").write_text(f'[server]\nmodels = "{root / "models"}"\n')
    (root / "bad.toml").write_bytes(b"[server\n\xff")
    (root / "ca.pem").write_bytes(self_signed_pem())
    (root / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return Places(root, f"127.0.0.1:{free_port()}")


# ---- argument vectors from the parser -------------------------------------------------------------


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands(parser: argparse.ArgumentParser) -> list[tuple[tuple[str, ...], list]]:
    """Every leaf command as (names, [parser per level]): ("keys", "add") -> [keys, keys add]."""
    leaves = []
    for name, child in subparsers(parser).items():
        below = commands(child)
        if below:
            leaves += [((name, *names), [child, *levels]) for names, levels in below]
        else:
            leaves.append(((name,), [child]))
    return leaves


def flag_values(action: argparse.Action, places: Places, wild: float):
    """Values for one action, chosen by what it is: the parser's own choices and types first."""
    option = " ".join(action.option_strings) + (action.dest if not action.option_strings else "")
    kind = getattr(action.type, "__name__", "")
    # Targets and paths never take free text: a random word would be a DNS lookup, a relative
    # path a file written in the working directory.
    if "target" in option:
        return places.targets()
    if any(word in option for word in ("--db", "--config", "--models", "--ca-file")):
        return places.paths()
    if action.choices:
        sane = st.sampled_from(sorted(action.choices))
    elif kind == "whole number":
        sane = st.one_of(integers, huge_integers)
    elif kind == "number":
        sane = floats
    elif kind == "policies":
        sane = policies
    elif kind == "day":
        sane = days
    elif "label" in option:
        sane = st.one_of(st.builds(lambda n, d: f"{n}={d}", st.sampled_from(["a", "b", "refund"]), odd_text), odd_text)
    elif "api-key" in option:
        sane = st.sampled_from(["apk_0123abcd_secret", "", "apk_a b", "é", "apk_\udcff", "x" * 300])
    elif "listen" in option:
        sane = st.sampled_from(["127.0.0.1:0", "nowhere", "1.2.3.4:99999", ":1", "[::1]:0"])
    else:
        sane = st.sampled_from(["llama", "minilm", "intents", "m", "hello bob@example.org", "0"])
    return st.floats(0, 1).flatmap(lambda x: odd_text if x < wild else sane)


@st.composite
def command_lines(draw, command: tuple[tuple[str, ...], list], places: Places):
    names, levels = command
    # How often a value is odd: some command lines are all sane (they get past the parser and
    # into the command), some half odd.
    wild = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5]))
    argv: list[str] = []
    for name, level in zip(names, levels):
        argv.append(name)
        actions = [a for a in level._actions if not isinstance(a, argparse._SubParsersAction)]
        optionals = [a for a in actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
        positionals = [a for a in actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
        chosen = draw(st.lists(st.sampled_from(optionals), max_size=len(optionals) + 2)) if optionals else []
        # Required flags are usually there, so runs get past argparse and into the commands.
        chosen += [a for a in optionals if a.required and (not wild or draw(st.floats(0, 1)) < 0.9)]
        for action in draw(st.permutations(chosen)):
            argv.append(draw(st.sampled_from(action.option_strings)))
            if action.nargs != 0:
                argv.append(draw(flag_values(action, places, wild)))
        for action in positionals:
            counts = {None: 1, "+": draw(st.integers(1, 3)), "*": draw(st.integers(0, 2)), "?": draw(st.integers(0, 1))}
            count = counts.get(action.nargs, action.nargs if isinstance(action.nargs, int) else 1)
            if not wild or draw(st.floats(0, 1)) < 0.9:
                argv += [draw(flag_values(action, places, wild)) for _ in range(count)]
    # Now and then: an unknown flag, a value-less flag at the end, --help, or stray words.
    extra = draw(st.sampled_from([[], [], [], ["--bogus"], ["--target"], ["-h"], ["--max-tokens"], ["stray", "-x"]]))
    return argv + (extra if wild else [])


# ---- running the command ----------------------------------------------------------------------------

stdin_bytes = st.one_of(
    st.just(b""), st.binary(max_size=64), st.text(argv_chars, max_size=64).map(str.encode),
    st.sampled_from([b'{"text": "mail bob@example.org"}\n', b'{"text": "\\ud800"}\n', b'{"text": 5}\n', b"[1]\n",
                     b"\xff\xfe\n", b"hi\nthere\n", b'{"text": "a"}\n\n{"nope": 1}\n']),
)


def run_main(argv: list[str], stdin: bytes, env_key: str | None):
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # strict, as Python's stdout is
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    environ = {k: v for k, v in os.environ.items() if k != "APPLIANCE_API_KEY"}
    if env_key is not None:
        environ["APPLIANCE_API_KEY"] = env_key
    with mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8",
                                                          errors="surrogateescape")), \
            mock.patch.object(sys, "stdout", out), mock.patch.object(sys, "stderr", err), \
            mock.patch.dict(os.environ, environ, clear=True):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # only argparse exits
            code = ("argparse", exc.code)
        err.flush()
    return code, err.buffer.getvalue().decode("utf-8", "backslashreplace")


@pytest.fixture
def no_daemon(monkeypatch):
    """`serve` parses its flags and config and then stops: this stand-in never listens."""
    started = []
    monkeypatch.setattr("appliance.server.app.serve", lambda config, **kwargs: started.append(config))
    monkeypatch.setattr("appliance.server.logs.configure_json_logging", lambda *a, **k: None)
    return started


@pytest.mark.parametrize("scale", SCALES)
def test_fuzz_every_command_line_ends_without_a_traceback(tmp_path, no_daemon, figures, scale):
    places = make_places(tmp_path)
    parser = cli.build_parser()
    leaves = commands(parser)
    assert {" ".join(n) for n, _ in leaves} >= {"serve", "generate", "chat", "embed", "classify", "models",
                                                 "reload", "redact", "keys add", "keys list", "keys revoke", "usage"}
    per_command = sized(scale, 15, 250)
    codes: collections.Counter = collections.Counter()
    seen: collections.Counter = collections.Counter()

    def fuzz(command):
        @settings(max_examples=per_command, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(argv=command_lines(command, places), stdin=stdin_bytes,
               env_key=st.one_of(st.none(), st.sampled_from(["apk_env_key", "bad key", "\udcff"])))
        def one(argv, stdin, env_key):
            code, err = run_main(argv, stdin, env_key)
            seen[" ".join(command[0])] += 1
            codes[code if isinstance(code, int) else code[1]] += 1
            assert "Traceback" not in err, (argv, err)
            if isinstance(code, tuple):
                assert code[1] in (0, 2), (argv, code, err)
            else:
                assert type(code) is int and code in (0, 1, 2, 130, 141), (argv, code, err)
            # One line at most (the error), and only where the run failed.
            assert len(err.rstrip("\n").split("\n")) <= 1 and "\r" not in err, (argv, err)
            if code not in (0, ("argparse", 0)):
                assert err.startswith("appliance"), (argv, code, err)

        one()

    for command in leaves:
        fuzz(command)
    every = all(seen[" ".join(names)] >= per_command // 2 for names, _ in leaves)
    figures.record("CLI command lines per command", " ".join(f"{k}={v}" for k, v in sorted(seen.items())),
                   f">= {per_command // 2} each", every)
    figures.record("serve runs whose config passed (daemon stand-in)", len(no_daemon), "", True)
    figures.record("CLI exit codes", " ".join(f"{k}={v}" for k, v in sorted(codes.items(), key=str)), "0/1/2 only",
                   set(codes) <= {0, 1, 2})
    assert every, seen
    assert codes[2] and (codes[0] or codes[1]), codes  # both refusals and runs that got past the parser
