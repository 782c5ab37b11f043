"""API keys, rights and limits, TLS and mutual TLS, usage metering and metrics, over loopback."""

import datetime
import shutil
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest

from appliance.client import ApplianceClient
from appliance.server.config import load_config
from appliance.server.keys import KeyRights, KeyStore
from appliance.server.usage import read_usage
from tests.conftest import InProcessDaemon, free_port, wait_for


@pytest.fixture(scope="module")
def served(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("secure-models")
    for name in ("llama", "minilm"):
        shutil.copytree(models_dir / name, root / name)
    return root


@pytest.fixture(scope="module")
def secured(served, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    store = KeyStore(state / "keys.db")
    tokens = {
        "full": store.add("full", KeyRights())[1],
        "llama-only": store.add("llama-only", KeyRights(models=("llama",)))[1],
        "slow": store.add("slow", KeyRights(requests_per_minute=2))[1],
        "once": store.add("once", KeyRights(requests_per_minute=1))[1],
        "single": store.add("single", KeyRights(max_concurrency=1))[1],
        "no-off": store.add("no-off", KeyRights(input_policies=("redact",)))[1],
    }
    revoked, tokens["revoked"] = store.add("revoked", KeyRights())
    store.revoke(revoked.id)
    metrics_port = free_port()
    config = load_config(None, {
        "server": {"models": served, "listen": f"127.0.0.1:{free_port()}", "metrics_listen": f"127.0.0.1:{metrics_port}",
                   "usage_db": state / "usage.db"},
        "auth": {"keys_db": state / "keys.db"},
    })
    with InProcessDaemon(config) as running:
        yield running, tokens, metrics_port, state


def client(secured, token=None, **kw):
    running, tokens, _, _ = secured
    return ApplianceClient(running.target, api_key=tokens[token] if token else None, timeout_s=60, **kw)


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


def test_a_missing_wrong_or_revoked_key_is_unauthenticated(secured):
    with client(secured) as anonymous:
        assert code_of(lambda: list(anonymous.generate("llama", "hi"))) == grpc.StatusCode.UNAUTHENTICATED
    with ApplianceClient(secured[0].target, api_key="apk_nope_wrong") as wrong:
        assert code_of(lambda: wrong.list_models()) == grpc.StatusCode.UNAUTHENTICATED
    with client(secured, "revoked") as revoked:
        assert code_of(lambda: revoked.embed("minilm", ["x"])) == grpc.StatusCode.UNAUTHENTICATED
    with client(secured, "full") as good:
        assert list(good.generate("llama", "hi", max_tokens=2))[-1].completion_tokens >= 1


def test_a_model_not_allowed_for_the_key_is_permission_denied(secured):
    with client(secured, "llama-only") as limited:
        assert code_of(lambda: limited.embed("minilm", ["hello"])) == grpc.StatusCode.PERMISSION_DENIED
        assert [m.name for m in limited.list_models()] == ["llama"]
        assert list(limited.generate("llama", "hi", max_tokens=2))[-1].finish_reason is not None


def test_a_redaction_policy_the_key_may_not_use_is_permission_denied(secured):
    with client(secured, "no-off") as careful:
        assert code_of(lambda: list(careful.generate("llama", "hi", redaction=("off", "")))) == \
            grpc.StatusCode.PERMISSION_DENIED
        assert list(careful.generate("llama", "hi", max_tokens=2, redaction=("redact", "")))


def test_request_rate_limit_is_resource_exhausted(secured):
    with client(secured, "slow") as slow:
        slow.embed("minilm", ["one"])
        slow.embed("minilm", ["two"])
        assert code_of(lambda: slow.embed("minilm", ["three"])) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_spent_rate_refuses_generate_before_its_prompt_is_redacted_or_tokenized(secured, monkeypatch):
    running = secured[0]
    redactor = running.daemon.service.redaction.redactor
    engine = running.daemon.registry.get("llama").engine
    calls = {"redact": 0, "tokenize": 0}

    def counted(name, work):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return work(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(redactor, "redact", counted("redact", redactor.redact))
    monkeypatch.setattr(engine, "tokenize", counted("tokenize", engine.tokenize))
    with client(secured, "once") as once:
        assert list(once.generate("llama", "hi", max_tokens=2, redaction=("redact", "")))
        assert calls["redact"] >= 1 and calls["tokenize"] >= 1  # the instruments see the admitted call
        before = dict(calls)
        assert code_of(lambda: list(once.generate("llama", "hi", max_tokens=2, redaction=("redact", "")))) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
    assert calls == before


def test_concurrency_limit_is_resource_exhausted_and_freed_after(secured):
    running = secured[0]
    with client(secured, "single") as single, client(secured, "single") as second:
        stream = single.generate("llama", "long", max_tokens=240, ignore_eos=True)
        next(stream)
        authenticator = running.daemon.service.auth
        assert wait_for(lambda: authenticator.active_total() == 1)
        assert code_of(lambda: list(second.generate("llama", "hi", max_tokens=2))) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
        list(stream)
        assert list(second.generate("llama", "hi", max_tokens=2))


def test_cancellation_after_the_third_token_frees_the_slot_and_is_metered(secured):
    running, _, _, state = secured
    engine = running.daemon.registry.get("llama").engine
    with client(secured, "llama-only") as limited:
        stream = limited.generate("llama", "cancel me", max_tokens=100_000, ignore_eos=True)
        for _ in range(3):
            next(stream)
        stream.close()
    assert wait_for(lambda: engine.stats().running == 0 and not engine.busy)
    key_id = next(k.id for k in KeyStore(state / "keys.db").list() if k.name == "llama-only")

    def cancelled():
        running.daemon.usage.flush()
        rows = {(r[1], r[2]): r for r in read_usage(state / "usage.db")}
        return rows.get((key_id, "llama"), (0,) * 8)[6]

    assert wait_for(lambda: cancelled() >= 1)


def test_usage_counts_requests_and_tokens_per_key_and_model(secured):
    running, _, _, state = secured
    store = KeyStore(state / "keys.db")
    key_id = next(k.id for k in store.list() if k.name == "full")
    running.daemon.usage.flush()
    before = {r[2]: r for r in read_usage(state / "usage.db") if r[1] == key_id}
    with client(secured, "full") as full:
        last = list(full.generate("llama", "count me", max_tokens=5, ignore_eos=True))[-1]
        full.embed("minilm", ["a", "b"])
        with pytest.raises(grpc.RpcError):
            list(full.generate("llama", ""))
    running.daemon.usage.flush()
    after = {r[2]: r for r in read_usage(state / "usage.db") if r[1] == key_id}
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert after["llama"][0] == today

    def delta(model, column):
        return after[model][column] - (before[model][column] if model in before else 0)

    assert delta("llama", 3) == 2  # requests: the good one and the rejected one
    assert delta("llama", 4) == last.prompt_tokens and delta("llama", 5) == 5
    assert delta("llama", 7) == 1  # rejected
    assert delta("minilm", 3) == 1


def test_usage_command_prints_and_exports_csv(secured):
    secured[0].daemon.usage.flush()
    db = secured[3] / "usage.db"
    done = subprocess.run([sys.executable, "-m", "appliance.cli", "usage", "--db", str(db), "--csv"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.splitlines()[0] == "day,key_id,model,requests,prompt_tokens,completion_tokens,cancelled,rejected"
    assert len(done.stdout.splitlines()) >= 2


def test_metrics_count_a_known_sequence(secured):
    _, _, port, _ = secured

    def scrape():
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    def value(text, name, **labels):
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = scrape()
    with client(secured, "full") as full:
        for _ in range(3):
            list(full.generate("llama", "metrics", max_tokens=4, ignore_eos=True))
        with pytest.raises(grpc.RpcError):
            list(full.generate("llama", "hi", temperature=-1))
        full.redact("mail alice@example.com")
    time.sleep(0.2)
    after = scrape()
    ok = dict(rpc="Generate", model="llama", status="OK")
    bad = dict(rpc="Generate", model="llama", status="INVALID_ARGUMENT")
    assert value(after, "appliance_requests_total", **ok) - value(before, "appliance_requests_total", **ok) == 3
    assert value(after, "appliance_requests_total", **bad) - value(before, "appliance_requests_total", **bad) == 1
    completion = dict(model="llama", kind="completion")
    assert value(after, "appliance_tokens_total", **completion) - value(before, "appliance_tokens_total", **completion) == 12
    ttft = dict(model="llama")
    assert value(after, "appliance_time_to_first_token_seconds_count", **ttft) - \
        value(before, "appliance_time_to_first_token_seconds_count", **ttft) == 3
    pii = dict(type="EMAIL_ADDRESS", direction="redact")
    assert value(after, "appliance_pii_entities_total", **pii) - value(before, "appliance_pii_entities_total", **pii) == 1
    assert "alice" not in after and "metrics" not in after.replace("# HELP", "").split("appliance_")[0]


def test_keys_command_adds_lists_and_revokes(tmp_path):
    db = tmp_path / "keys.db"

    def keys(*args):
        return subprocess.run([sys.executable, "-m", "appliance.cli", "keys", "--db", str(db), *args],
                              capture_output=True, text=True, timeout=60)

    added = keys("add", "support-bot", "--model", "llama", "--requests-per-minute", "60")
    assert added.returncode == 0
    token = added.stdout.strip().splitlines()[-1]
    assert token.startswith("apk_")
    key = KeyStore(db).verify(token)
    assert key is not None and key.rights.models == ("llama",) and key.rights.requests_per_minute == 60
    listed = keys("list")
    assert key.id in listed.stdout and token.split("_")[-1] not in listed.stdout
    assert keys("revoke", key.id).returncode == 0
    assert KeyStore(db).verify(token) is None
    assert keys("revoke", key.id).returncode == 1
    raw = db.read_bytes()
    assert token.split("_")[-1].encode() not in raw  # only the salted hash is stored


# ---- TLS ------------------------------------------------------------------------------------

def _certificates(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(common):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def cert(subject_key, subject, issuer_key, issuer, ca=False, san=None):
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def pem(c):
        return c.public_bytes(serialization.Encoding.PEM)

    ca_key, rogue_key, server_key, client_key, stranger_key = (key() for _ in range(5))
    ca = cert(ca_key, "appliance test CA", ca_key, "appliance test CA", ca=True)
    server = cert(server_key, "localhost", ca_key, "appliance test CA",
                  san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    files = {"ca.pem": pem(ca), "server.pem": pem(server), "server.key": pem_key(server_key),
             "client.pem": pem(cert(client_key, "client", ca_key, "appliance test CA")),
             "client.key": pem_key(client_key),
             "stranger.pem": pem(cert(stranger_key, "stranger", rogue_key, "rogue CA")),
             "stranger.key": pem_key(stranger_key)}
    for file_name, data in files.items():
        (tmp_path / file_name).write_bytes(data)
    return files


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_and_mutual_tls(served, tmp_path, mutual):
    files = _certificates(tmp_path)
    tls = {"cert_file": tmp_path / "server.pem", "key_file": tmp_path / "server.key"}
    if mutual:
        tls["client_ca_file"] = tmp_path / "ca.pem"
    config = load_config(None, {"server": {"models": served, "listen": f"127.0.0.1:{free_port()}"}, "tls": tls})
    with InProcessDaemon(config) as running:
        with ApplianceClient(running.target) as plaintext:
            assert code_of(lambda: plaintext.list_models()) == grpc.StatusCode.UNAVAILABLE
        own = {"client_certificate": files["client.pem"], "client_key": files["client.key"]} if mutual else {}
        with ApplianceClient(running.target, root_certificates=files["ca.pem"], server_name="localhost",
                             timeout_s=30, **own) as trusted:
            assert {m.name for m in trusted.list_models()} == {"llama", "minilm"}
        if mutual:
            with ApplianceClient(running.target, root_certificates=files["ca.pem"], server_name="localhost",
                                 timeout_s=10, client_certificate=files["stranger.pem"],
                                 client_key=files["stranger.key"]) as stranger:
                assert code_of(lambda: stranger.list_models()) == grpc.StatusCode.UNAVAILABLE
            with ApplianceClient(running.target, root_certificates=files["ca.pem"], server_name="localhost",
                                 timeout_s=10) as no_cert:
                assert code_of(lambda: no_cert.list_models()) == grpc.StatusCode.UNAVAILABLE


def test_tls_config_names_a_missing_file(tmp_path):
    from appliance.errors import ConfigError

    with pytest.raises(ConfigError, match="tls"):
        load_config(None, {"tls": {"cert_file": tmp_path / "nope.pem", "key_file": tmp_path / "nope.key"}})


def test_token_quota_is_charged_after_the_request_and_refuses_the_next():
    from appliance.errors import QueueFull
    from appliance.server.auth import Authenticator
    from appliance.server.keys import ApiKey

    auth = Authenticator(store=None)
    key = ApiKey("k", "k", KeyRights(tokens_per_minute=100))
    auth.admit(key).release(tokens_used=150)  # the quota may be overrun by the request that spends it
    with pytest.raises(QueueFull, match="tokens per minute"):
        auth.admit(key)


def test_the_key_cache_stays_bounded(tmp_path):
    from appliance.server import keys as keys_module

    store = KeyStore(tmp_path / "keys.db")
    for i in range(keys_module.CACHE_ENTRIES + 10):
        assert store.verify(f"garbage-{i}") is None
    assert 0 < store.cached() <= keys_module.CACHE_ENTRIES
