"""Start-up failures: ports in use, addresses not on this host, bad TLS files, missing folders.

Each one stops the daemon at start with one line naming the field or file, exit code 2 from
`appliance serve`, and nothing left serving; none leaves it sitting NOT_SERVING or prints a trace.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from appliance.errors import ConfigError
from appliance.server.app import Daemon
from appliance.server.config import load_config
from appliance.server.sd_notify import Notifier
from tests.conftest import DaemonProcess, free_port, wait_for

START_TIMEOUT_S = 60  # a daemon that hangs instead of exiting fails the test here


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", "serve", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=START_TIMEOUT_S)


def assert_refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 with one line on stderr holding every word, and no traceback anywhere."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("appliance serve: "), done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def empty_models(tmp_path) -> Path:
    # An empty models folder: the daemon binds and runs without loading anything.
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


def write_config(path: Path, **server: str) -> Path:
    path.write_text("[server]\n" + "".join(f'{key} = "{value}"\n' for key, value in server.items()))
    return path


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def health_answers(target: str) -> bool:
    from appliance.client import ApplianceClient

    with ApplianceClient(target, timeout_s=2) as client:
        try:
            client.health()
            return True
        except grpc.RpcError:
            return False


# ---- item 1: a second daemon on ports already serving -------------------------------------------

def test_a_second_daemon_on_serving_ports_exits_2_and_serves_nothing(empty_models, tmp_path):
    metrics = f"127.0.0.1:{free_port()}"
    first = DaemonProcess(empty_models, "--config", str(write_config(tmp_path / "first.toml", metrics_listen=metrics)))
    try:
        assert wait_for(lambda: health_answers(first.target) and answers(f"http://{metrics}/metrics"), 60)
        second_models = tmp_path / "m2"
        second_models.mkdir()
        # Same gRPC port: gRPC's default SO_REUSEPORT would have let both listen and split clients.
        assert_refused(serve("--models", str(second_models), "--listen", first.target),
                       "server.listen", first.target, "address already in use")
        # Same metrics port, own gRPC port.
        own = f"127.0.0.1:{free_port()}"
        second_config = write_config(tmp_path / "second.toml", metrics_listen=metrics)
        assert_refused(serve("--config", str(second_config), "--models", str(second_models), "--listen", own),
                       "server.metrics_listen", metrics, "address already in use")
        assert not health_answers(own)  # nothing of the second daemon is left listening
        assert first.proc.poll() is None and health_answers(first.target)
    finally:
        assert first.stop() == 0


def test_metrics_listen_equal_to_listen_exits_2(empty_models, tmp_path):
    listen = f"127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "appliance.toml", metrics_listen=listen)
    assert_refused(serve("--config", str(config), "--models", str(empty_models), "--listen", listen),
                   "server.metrics_listen", "address already in use")


def test_a_listen_address_not_on_this_host_is_named(empty_models):
    # 192.0.2.0/24 is TEST-NET-1: documentation only, never a local address.
    line = assert_refused(serve("--models", str(empty_models), "--listen", "192.0.2.1:50999"),
                          "server.listen", "192.0.2.1:50999", "not an address of this host")
    assert "already in use" not in line


# ---- item 2: a start-up task that fails stops the daemon ----------------------------------------

class RecordingNotifier(Notifier):
    def __init__(self):
        super().__init__(None)
        self.sent: list[tuple[str, ...]] = []

    def notify(self, *fields: str) -> None:
        self.sent.append(fields)


def run_until_it_stops(build) -> BaseException:
    """Runs the Daemon that `build()` makes (inside the loop, as grpc.aio needs) until it gives up."""
    async def scenario():
        with pytest.raises(BaseException) as failure:
            await asyncio.wait_for(build().run(), 20)
        return failure.value

    failure = asyncio.run(scenario())
    assert not isinstance(failure, asyncio.TimeoutError), "the daemon did not stop after a failed start"
    return failure


def test_a_metrics_port_in_use_stops_the_start_and_tells_systemd(empty_models):
    listen = f"127.0.0.1:{free_port()}"
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        metrics = f"127.0.0.1:{occupant.getsockname()[1]}"
        config = load_config(None, {"server": {"models": empty_models, "listen": listen, "metrics_listen": metrics}})
        notifier = RecordingNotifier()
        failure = run_until_it_stops(lambda: Daemon(config, notifier))
    assert isinstance(failure, ConfigError)
    assert "server.metrics_listen" in str(failure) and "address already in use" in str(failure)
    statuses = [field for fields in notifier.sent for field in fields if field.startswith("STATUS=")]
    assert statuses and "server.metrics_listen" in statuses[-1]
    assert not any("READY=1" in fields for fields in notifier.sent)
    with socket.socket() as rebind:  # the gRPC port was let go
        rebind.bind(("127.0.0.1", int(listen.rpartition(":")[2])))


def test_any_failed_start_task_stops_the_daemon_with_its_reason(empty_models):
    config = load_config(None, {"server": {"models": empty_models, "listen": f"127.0.0.1:{free_port()}"}})
    notifier = RecordingNotifier()

    def build():
        daemon = Daemon(config, notifier)
        daemon.registry.load_all = broken_load
        return daemon

    def broken_load():
        raise RuntimeError("the loader broke")

    failure = run_until_it_stops(build)
    assert isinstance(failure, RuntimeError)
    assert any("the loader broke" in field for fields in notifier.sent for field in fields)


def test_an_unexpected_start_failure_exits_1_with_one_line(empty_models):
    # Not a config problem (a bug, a broken install): exit 1, still one line and no trace.
    script = ("import sys, appliance.server.app as app\n"
              "def broken(*args, **kwargs):\n    raise RuntimeError('something broke')\n"
              "app.serve = broken\n"
              "from appliance.cli import main\n"
              f"sys.exit(main(['serve', '--models', {str(empty_models)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == ["appliance serve: RuntimeError: something broke"]


# ---- item 3: TLS files and config encoding --------------------------------------------------------

def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _tls_error(**tls: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"tls": tls})
    return str(info.value)


def test_a_key_that_does_not_match_its_certificate_is_named(tmp_path):
    cert, _ = _self_signed(tmp_path, "server")
    _, other_key = _self_signed(tmp_path, "other")
    message = _tls_error(cert_file=cert, key_file=other_key)
    assert "tls.key_file" in message and str(other_key) in message and "does not match" in message


def test_swapped_certificate_and_key_are_named(tmp_path):
    cert, key = _self_signed(tmp_path, "server")
    message = _tls_error(cert_file=key, key_file=cert)
    assert "tls.cert_file" in message and str(key) in message and "no PEM certificate" in message


def test_a_tls_file_that_is_a_folder_or_not_pem_is_named(tmp_path):
    cert, key = _self_signed(tmp_path, "server")
    message = _tls_error(cert_file=cert, key_file=tmp_path)
    assert "tls.key_file" in message and "is a folder" in message
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    message = _tls_error(cert_file=cert, key_file=key, client_ca_file=garbage)
    assert "tls.client_ca_file" in message and str(garbage) in message


def test_an_unreadable_tls_file_is_named(tmp_path, monkeypatch):
    # Tests may run as root, which reads any file: the refusal is simulated at the read.
    cert, key = _self_signed(tmp_path, "server")
    real_open = Path.open

    def refusing_open(self, *args, **kwargs):
        if self == key:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing_open)
    message = _tls_error(cert_file=cert, key_file=key)
    assert "tls.key_file" in message and str(key) in message and "permission denied" in message


def test_a_good_pair_loads(tmp_path):
    cert, key = _self_signed(tmp_path, "server")
    assert load_config(None, {"tls": {"cert_file": cert, "key_file": key}}).tls.key_file == key


def test_a_mismatched_tls_pair_exits_2_from_the_command(empty_models, tmp_path):
    cert, _ = _self_signed(tmp_path, "server")
    _, other_key = _self_signed(tmp_path, "other")
    config = tmp_path / "appliance.toml"
    config.write_text(f'[tls]\ncert_file = "{cert}"\nkey_file = "{other_key}"\n')
    assert_refused(serve("--config", str(config), "--models", str(empty_models), "--listen",
                         f"127.0.0.1:{free_port()}"), "tls.key_file", "does not match")


def test_a_config_file_that_is_not_utf8_exits_2(empty_models, tmp_path):
    config = tmp_path / "appliance.toml"
    config.write_bytes('[server]\nlisten = "127.0.0.1:1"  # caf\u00e9\n'.encode("latin-1"))
    assert_refused(serve("--config", str(config), "--models", str(empty_models)), str(config), "UTF-8")


# ---- item 4: folders and the bound port -------------------------------------------------------------

def test_a_missing_models_folder_exits_2(tmp_path):
    missing = tmp_path / "nowhere"
    assert_refused(serve("--models", str(missing), "--listen", f"127.0.0.1:{free_port()}"),
                   "server.models", str(missing), "does not exist")


def _daemon_error(tmp_path: Path, **sections: dict) -> str:
    config = load_config(None, {"server": {"listen": f"127.0.0.1:{free_port()}", **sections.pop("server", {})},
                                **sections})

    async def build():
        Daemon(config)

    with pytest.raises(ConfigError) as info:
        asyncio.run(build())
    return str(info.value)


def test_a_models_path_that_is_a_file_is_not_a_folder(tmp_path):
    file = tmp_path / "models"
    file.write_text("")
    message = _daemon_error(tmp_path, server={"models": file})
    assert "server.models" in message and "is not a folder" in message


@pytest.mark.parametrize("section,field", [("auth", "keys_db"), ("server", "usage_db")])
def test_a_database_in_a_missing_folder_is_refused_not_created(empty_models, tmp_path, section, field):
    missing = tmp_path / "no-such-folder"
    sections = {"server": {"models": empty_models}}
    sections.setdefault(section, {})[field] = missing / "x.db"
    message = _daemon_error(tmp_path, **sections)
    assert f"{section}.{field}" in message and str(missing) in message and "does not exist" in message
    assert not missing.exists()


def test_listen_on_port_0_reports_the_bound_port(empty_models, caplog):
    import logging

    config = load_config(None, {"server": {"models": empty_models, "listen": "127.0.0.1:0"}})
    notifier = RecordingNotifier()

    async def scenario():
        daemon = Daemon(config, notifier)
        await daemon.start()
        try:
            return daemon.port
        finally:
            await daemon.drain()

    with caplog.at_level(logging.INFO, logger="appliance.server.app"):
        port = asyncio.run(scenario())
    assert port != 0
    ready = [field for fields in notifier.sent if "READY=1" in fields for field in fields if field.startswith("STATUS=")]
    assert ready and f"127.0.0.1:{port}" in ready[0]
    assert f"listening on 127.0.0.1:{port}" in caplog.text and "127.0.0.1:0" not in caplog.text
