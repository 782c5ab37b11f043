"""`appliance redact` as a user runs it."""

import json
import subprocess
import sys


def appliance_redact(*args, stdin: str):
    return subprocess.run([sys.executable, "-m", "appliance.cli", "redact", *args], input=stdin.encode(),
                          capture_output=True, timeout=60)


def test_stdin_text_is_redacted_to_stdout():
    done = appliance_redact(stdin="我叫张伟，电话 138 0013 8000\nmail a.b@example.com\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "我叫[PERSON]，电话 [PHONE_NUMBER]\nmail [EMAIL_ADDRESS]\n"


def test_jsonl_lines_get_text_and_entities():
    lines = [{"text": "call +1 415 555 2671"}, {"text": "nothing here"}]
    done = appliance_redact("--jsonl", stdin="".join(json.dumps(line) + "\n" for line in lines))
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert out == [{"text": "call [PHONE_NUMBER]", "entities": [{"type": "PHONE_NUMBER", "start": 5, "end": 20}]},
                   {"text": "nothing here", "entities": []}]


def test_a_bad_jsonl_line_is_reported_without_its_content():
    done = appliance_redact("--jsonl", stdin='{"text": "ok"}\n{"secret": "lucy@example.com"}\n')
    assert done.returncode == 2
    assert b"line 2" in done.stderr and b"lucy" not in done.stderr


def test_operator_flag():
    done = appliance_redact("--operator", "pseudonymize", stdin="a@example.com b@example.com a@example.com")
    assert done.stdout.decode() == "[EMAIL_ADDRESS_1] [EMAIL_ADDRESS_2] [EMAIL_ADDRESS_1]"
