"""The systemd unit, sysusers.d and tmpfiles.d files, and their install / uninstall procedure.

Each test installs into its own temporary DESTDIR with systemd/install.sh (what `make
install-service` runs) and checks the installed files with systemd's own tools.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

INSTALL_SH = REPO / "systemd" / "install.sh"
UNIT = Path("usr/lib/systemd/system/appliance.service")
SYSUSERS = Path("usr/lib/sysusers.d/appliance.conf")
TMPFILES = Path("usr/lib/tmpfiles.d/appliance.conf")
CONFIG = Path("etc/appliance/appliance.toml")
DOCS = (Path("usr/share/doc/appliance/README.md"), Path("usr/share/doc/appliance/appliance.toml.example"))
SERVICE_FILES = (UNIT, SYSUSERS, TMPFILES, *DOCS)

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt-get install --no-install-recommends systemd)",
)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="systemd-tmpfiles --create chowns to the service account: needs root"
)


def daemon_binary() -> str:
    """An executable for ExecStart: the venv's console script (systemd-analyze verify checks it)."""
    return shutil.which("appliance", path=str(Path(sys.executable).parent)) or sys.executable


def run_install(action: str, destdir: Path, **variables: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DESTDIR": str(destdir), **variables}
    for name in ("APPLIANCE_BIN", "UNITDIR", "SYSUSERSDIR", "TMPFILESDIR", "DOCDIR", "PURGE"):
        if name not in variables:
            env.pop(name, None)
    return subprocess.run([str(INSTALL_SH), action], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def destdir(tmp_path) -> Path:
    # A space in the path catches unquoted variables in the script.
    root = tmp_path / "stage root"
    done = run_install("install", root, APPLIANCE_BIN=daemon_binary())
    assert done.returncode == 0, done.stderr
    return root


def unit_settings(path: Path) -> list[tuple[str, str]]:
    """(key, value) for every assignment, in order; keys repeat as systemd allows."""
    pairs = []
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if not p.is_dir()}


def test_install_puts_each_file_in_place_with_the_binary_path(destdir):
    assert files_under(destdir) == {*SERVICE_FILES, CONFIG}
    assert all((destdir / f).stat().st_mode & 0o777 == 0o644 for f in files_under(destdir))
    exec_start = dict(unit_settings(destdir / UNIT))["ExecStart"]
    assert exec_start == f"{daemon_binary()} serve --config /etc/appliance/appliance.toml"
    assert (destdir / CONFIG).read_text() == (REPO / "systemd" / "appliance.toml").read_text()
    assert (destdir / SYSUSERS).read_text() == (REPO / "systemd" / "appliance.sysusers.conf").read_text()


def test_install_defaults_exec_start_to_the_opt_venv(tmp_path):
    done = run_install("install", tmp_path)
    assert done.returncode == 0, done.stderr
    exec_start = dict(unit_settings(tmp_path / UNIT))["ExecStart"]
    assert exec_start.startswith("/opt/appliance/.venv/bin/appliance serve ")


def test_install_never_overwrites_an_existing_config(tmp_path):
    config = tmp_path / CONFIG
    config.parent.mkdir(parents=True)
    config.write_text('[server]\nlisten = "10.0.0.5:50051"\n')
    done = run_install("install", tmp_path)
    assert done.returncode == 0, done.stderr
    assert config.read_text() == '[server]\nlisten = "10.0.0.5:50051"\n'
    assert "kept the existing" in done.stdout
    assert (tmp_path / DOCS[1]).read_text() == (REPO / "systemd" / "appliance.toml").read_text()


@pytest.mark.parametrize("binary", ["relative/appliance", "/opt/my appliance/bin/appliance", "/opt/a|b"])
def test_install_refuses_a_binary_path_systemd_or_sed_would_mangle(tmp_path, binary):
    done = run_install("install", tmp_path, APPLIANCE_BIN=binary)
    assert done.returncode == 2
    assert "APPLIANCE_BIN" in done.stderr
    assert not tmp_path.joinpath("usr").exists()


def test_uninstall_removes_what_install_put_and_keeps_the_config(destdir):
    done = run_install("uninstall", destdir)
    assert done.returncode == 0, done.stderr
    assert files_under(destdir) == {CONFIG}
    assert not (destdir / "usr/share/doc/appliance").exists()
    # Folders that are not ours (usr/lib/systemd/system ...) stay.
    assert (destdir / UNIT.parent).is_dir()


def test_uninstall_with_purge_also_removes_config_and_state(destdir):
    state = destdir / "var/lib/appliance/models"
    state.mkdir(parents=True)
    (state.parent / "usage.db").write_bytes(b"")
    done = run_install("uninstall", destdir, PURGE="1")
    assert done.returncode == 0, done.stderr
    assert files_under(destdir) == set()
    assert not (destdir / "etc/appliance").exists() and not (destdir / "var/lib/appliance").exists()


def test_make_targets_call_the_script_and_leave_make_install_alone(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("APPLIANCE_BIN", "PURGE", "MAKEFLAGS")}
    done = subprocess.run([make, "-s", "-C", str(REPO), "install-service", f"DESTDIR={tmp_path}",
                           "APPLIANCE_BIN=/usr/local/bin/appliance"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert dict(unit_settings(tmp_path / UNIT))["ExecStart"].startswith("/usr/local/bin/appliance serve ")
    done = subprocess.run([make, "-s", "-C", str(REPO), "uninstall-service", f"DESTDIR={tmp_path}", "PURGE=1"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path) == set()
    # `make install` still means "build the venv".
    dry = subprocess.run([make, "-n", "-C", str(REPO), "install"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert "install.sh" not in dry.stdout


@needs_systemd
def test_installed_unit_passes_systemd_analyze_verify(destdir):
    done = subprocess.run(["systemd-analyze", "verify", str(destdir / UNIT)], capture_output=True, text=True,
                          timeout=60)
    # On a clean unit systemd 252 prints nothing at all; any line naming our unit is a finding.
    findings = [line for line in (done.stdout + done.stderr).splitlines()
                if "appliance" in line or str(destdir) in line]
    assert findings == []
    assert done.returncode == 0, done.stderr


@needs_systemd
def test_verify_would_catch_a_mistake_in_the_unit(destdir, tmp_path):
    # The check above is only worth something if verify reports errors in this setup.
    broken = tmp_path / "appliance.service"
    broken.write_text((destdir / UNIT).read_text().replace("WatchdogSec=30", "WatchdogSecs=30"))
    done = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True,
                          timeout=60)
    assert "WatchdogSecs" in done.stderr


@needs_systemd
def test_security_exposure_is_at_most_2(destdir):
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager",
                           str(destdir / UNIT)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for appliance\.service: (\d+\.\d)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout
    assert done.returncode == 0, done.stderr


@needs_systemd
def test_unit_hardening_leaves_the_gpu_and_cuda_working(destdir):
    """As systemd itself reads the installed unit: the hardening that would raise the score but
    break CUDA or onnxruntime stays out, and the NVIDIA devices are on the device allow list."""
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--json=short", "--no-pager",
                           str(destdir / UNIT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assessed = {entry["json_field"]: entry for entry in json.loads(done.stdout)}
    assert not assessed["PrivateDevices"]["set"]  # would hide /dev/nvidia*
    assert not assessed["MemoryDenyWriteExecute"]["set"]  # CUDA's PTX JIT needs W+X pages
    assert not assessed["ProcSubset"]["set"]  # the driver reads /proc/driver/nvidia
    devices = assessed["DeviceAllow"]["description"]
    assert all(f"{device}:rw" in devices for device in ("char-nvidia", "char-nvidia-frontend", "char-nvidia-uvm"))
    assert "char-nvidia-caps:r" in devices
    # Clients on private networks reach it; nothing else does.
    assert assessed["IPAddressDeny"]["description"].endswith("allow list with non-localhost entries")


def test_a_bad_config_is_not_restarted():
    """The CLI exits 2 for bad config, files, flags or addresses: a restart would fail the same way."""
    settings = dict(unit_settings(REPO / "systemd" / "appliance.service"))
    assert settings["Restart"] == "on-failure" and settings["RestartPreventExitStatus"] == "2"


@needs_systemd
def test_sysusers_file_declares_the_service_account(destdir):
    done = subprocess.run(["systemd-sysusers", f"--root={destdir}", "--dry-run"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "Creating group 'appliance'" in output and "Creating user 'appliance'" in output


@needs_systemd
@needs_root
def test_sysusers_and_tmpfiles_create_account_and_folders_in_a_root(destdir):
    (destdir / "etc").mkdir(exist_ok=True)
    done = subprocess.run(["systemd-sysusers", f"--root={destdir}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    passwd = (destdir / "etc/passwd").read_text()
    account = next(line.split(":") for line in passwd.splitlines() if line.startswith("appliance:"))
    assert account[5] == "/var/lib/appliance" and account[6].endswith("nologin")
    # tmpfiles resolves the account from the root's /etc/passwd and reports a bad line as an error.
    done = subprocess.run(["systemd-tmpfiles", f"--root={destdir}", "--create", str(destdir / TMPFILES)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    for folder, mode, uid in (("var/lib/appliance", 0o750, int(account[2])),
                              ("var/lib/appliance/models", 0o750, int(account[2])),
                              ("etc/appliance", 0o755, 0)):
        info = (destdir / folder).stat()
        assert (info.st_mode & 0o777, info.st_uid) == (mode, uid), folder
