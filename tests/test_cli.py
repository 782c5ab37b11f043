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
    done = appliance("embed", "--target", daemon.target, "--model", "minilm", "退款", "refund")
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) == 2


def test_redact_command_locally_and_through_the_daemon(daemon):
    text = "Mail bob@example.org, 身份证11010519491231002X\n"
    local = subprocess.run([sys.executable, "-m", "appliance.cli", "redact"], input=text, capture_output=True,
                           text=True, timeout=60)
    remote = subprocess.run([sys.executable, "-m", "appliance.cli", "redact", "--target", daemon.target], input=text,
                            capture_output=True, text=True, timeout=60)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    assert local.stdout == remote.stdout == "Mail [EMAIL_ADDRESS], 身份证[CN_RESIDENT_ID]\n"
