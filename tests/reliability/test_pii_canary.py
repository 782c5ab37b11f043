"""The PII canary: known fake personal data through every path of a real daemon process (keys,
usage metering, metrics, audit), then every log line, metric, usage row and error message returned
is searched for the raw values. Zero hits."""

from __future__ import annotations

import re
import sqlite3
import urllib.request

import grpc

from appliance.client import ApplianceClient
from appliance.server.keys import KeyRights, KeyStore
from appliance.v1 import inference_pb2 as pb
from tests.conftest import DaemonProcess, free_port
from tests.reliability.conftest import copy_packages

CANARIES = {
    "email": "canary.wong@example.org",
    "phone": "+1 415 555 0132",
    "cn_mobile": "13912345678",
    "card": "4539 1488 0343 6467",  # valid by Luhn
    "iban": "DE89370400440532013000",
    "cn_id": "11010519491231002X",
    "ssn": "536-22-8475",
    "name": "Zhang Weiqiang",
    # Names and addresses written without a trigger phrase, as support traffic has them.
    "en_person": "Sarah Miller",
    "zh_person": "张伟强",
    "en_address": "42 Oak Avenue, Austin, TX 78701",
    "zh_address": "北京市朝阳区建国路88号",
}
TEXT = (f"My name is {CANARIES['name']}, mail {CANARIES['email']}, call {CANARIES['phone']} or "
        f"{CANARIES['cn_mobile']}; card {CANARIES['card']}, IBAN {CANARIES['iban']}, "
        f"身份证 {CANARIES['cn_id']}, SSN {CANARIES['ssn']}; {CANARIES['en_person']} asked to ship to "
        f"{CANARIES['en_address']}; 客户{CANARIES['zh_person']}来电，寄到{CANARIES['zh_address']}。")


def needles() -> list[str]:
    """Each value as written and with its separators dropped (how a digit string may reappear)."""
    found = set(CANARIES.values())
    found |= {re.sub(r"[\s\-+]", "", v) for v in CANARIES.values()}
    return sorted(found)


def hits(text: str) -> list[str]:
    return [n for n in needles() if n in text]


def test_no_raw_pii_in_logs_metrics_usage_or_errors(models_dir, tmp_path, figures):
    served = copy_packages(models_dir, tmp_path / "models", ("llama", "intents", "minilm"))
    store = KeyStore(tmp_path / "keys.db")
    _, token = store.add("canary", KeyRights(input_policies=("off", "redact", "pseudonymize"),
                                             output_policies=("off", "redact", "restore")))
    metrics_port = free_port()
    (tmp_path / "audit.key").write_text("a-secret-of-enough-bytes-1234567890")
    (tmp_path / "appliance.toml").write_text(f"""
[server]
usage_db = "{tmp_path / 'usage.db'}"
metrics_listen = "127.0.0.1:{metrics_port}"
[auth]
keys_db = "{tmp_path / 'keys.db'}"
[redaction]
input = "pseudonymize"
output = "redact"
audit_key_file = "{tmp_path / 'audit.key'}"
""")
    daemon = DaemonProcess(served, "--config", str(tmp_path / "appliance.toml")).wait_serving()
    errors, paths = [], 0
    try:
        with ApplianceClient(daemon.target, api_key=token, timeout_s=60) as client:
            for policies in (("redact", "redact"), ("pseudonymize", "restore"), ("off", "redact"), ("", "")):
                list(client.generate("llama", TEXT, max_tokens=8, redaction=policies))
                list(client.generate("llama", "", messages=[("user", TEXT)], max_tokens=4,
                                     redaction=policies))
                paths += 2
            client.embed("minilm", [TEXT, TEXT[:40]])
            # TEXT is longer than the tiny classifier reads (refused: see bad_calls); in two parts
            # every canary still goes through whole.
            client.classify("intents", TEXT.split("; "))
            client.classify("minilm", [TEXT], labels={"pii": TEXT, "other": "parcel"})
            for operator in ("replace", "mask", "pseudonymize"):
                client.redact(TEXT, operator=operator)
            paths += 6
            stream = client.generate("llama", TEXT, max_tokens=200, ignore_eos=True)  # cancelled
            next(stream)
            stream.close()
            bad_calls = [
                lambda: list(client.generate("llama", TEXT, temperature=-1.0)),
                lambda: list(client.generate("llama", TEXT * 300)),  # longer than the context
                lambda: list(client.generate("llama", TEXT, stop=[TEXT * 10])),
                lambda: list(client.generate("llama", "", messages=[(CANARIES["email"], TEXT)])),
                lambda: list(client.generate("llama", TEXT, messages=[("user", TEXT)])),
                lambda: list(client.generate(CANARIES["email"], TEXT)),
                lambda: list(client.generate(CANARIES["cn_mobile"], TEXT)),
                lambda: client.embed("minilm", [TEXT, ""]),
                lambda: client.embed(CANARIES["iban"], [TEXT]),
                lambda: client.embed("llama", [TEXT]),
                lambda: client.classify("intents", [TEXT], labels={"x": TEXT}),
                lambda: client.classify("intents", [TEXT * 3]),  # more tokens than the model reads
                lambda: client.classify("minilm", [TEXT], labels={"": TEXT, "b": TEXT}),
                lambda: client.get_model(CANARIES["card"]),
                lambda: client.stub.Redact(pb.RedactRequest(text=TEXT, operator=9), metadata=client.metadata),
            ]
            for call in bad_calls:
                try:
                    call()
                    errors.append(("no error", ""))
                except grpc.RpcError as exc:
                    errors.append((exc.code().name, exc.details() or ""))
                paths += 1
        with ApplianceClient(daemon.target, api_key="apk_" + CANARIES["card"].replace(" ", ""), timeout_s=30) as bad:
            try:
                bad.list_models()
            except grpc.RpcError as exc:
                errors.append((exc.code().name, exc.details() or ""))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    finally:
        code = daemon.stop()
    log = daemon.log()
    with sqlite3.connect(tmp_path / "usage.db") as db:
        usage = "\n".join(repr(row) for row in db.execute("SELECT * FROM usage"))
    audit = "\n".join(line for line in log.splitlines() if "appliance.audit" in line)
    places = {"daemon log (stdout+stderr)": log, "metrics": metrics, "usage rows": usage, "audit records": audit,
              "error messages": "\n".join(d for _, d in errors)}
    found = {place: hits(text) for place, text in places.items()}
    total = sum(len(v) for v in found.values())
    figures.record("paths exercised (ok + error calls)", paths, "", True)
    figures.record("audit records written", audit.count('"event"') or audit.count("pii"), "> 0", bool(audit))
    for place, values in found.items():
        figures.record(f"canary hits: {place}", len(values), "0", not values)
    assert bool(audit) and code == 0
    assert all(code_name != "no error" for code_name, _ in errors), errors
    assert total == 0, {p: v for p, v in found.items() if v}
