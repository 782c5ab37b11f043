"""The Containerfile: installs the daemon from a wheelhouse only, runs as the non-root user that
deploy/kubernetes expects; built and started (read-only root) where an image builder works."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.proxies import REPO

CONTAINERFILE = REPO / "Containerfile"


def _uid() -> str:
    return re.search(r"^ARG APPLIANCE_UID=(\d+)$", CONTAINERFILE.read_text(), re.M).group(1)


def test_the_image_installs_from_the_wheelhouse_only_and_runs_as_the_manifests_user():
    text = CONTAINERFILE.read_text()
    install = re.search(r"pip install (.+)", text).group(1)
    assert "--no-index" in install and "--find-links /tmp/wheelhouse" in install
    assert "sha256sum --check" in text
    assert re.search(r"^USER \$\{APPLIANCE_UID\}:\$\{APPLIANCE_UID\}$", text, re.M)
    deployment = yaml.safe_load((REPO / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    assert str(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == _uid() != "0"


def _builder() -> tuple[str, str]:
    """(builder, why it cannot be used) for the first of podman, buildah, docker that can build here."""
    reasons = []
    for name, probe in (("podman", ["info"]), ("buildah", ["info"]), ("docker", ["info"])):
        path = shutil.which(name)
        if path is None:
            reasons.append(f"no {name}")
            continue
        done = subprocess.run([path, *probe], capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            return path, ""
        last = (done.stderr.strip().splitlines() or ["it fails"])[-1]
        reasons.append(f"{name} cannot build here ({last[:120]})")
    return "", "; ".join(reasons)


@pytest.mark.slow
def test_the_image_builds_from_a_wheelhouse_and_serves_read_only(tmp_path):
    builder, why_not = _builder()
    if not builder:
        pytest.skip(f"no image builder works on this host: {why_not}")
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", CONTAINERFILE.read_text(), re.M).group(1)
    pulled = subprocess.run([builder, "pull", base], capture_output=True, text=True, timeout=600)
    if pulled.returncode != 0:
        last = (pulled.stderr.strip().splitlines() or ["it fails"])[-1]
        pytest.skip(f"{Path(builder).name} works, but the base image {base} cannot be pulled here ({last[:160]})")
    context = tmp_path / "image"
    made = subprocess.run(["make", "wheelhouse", f"WHEELHOUSE={context / 'wheelhouse'}", "EXTRA=cpu",
                           f"PYTHON={sys.executable}"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert made.returncode == 0, made.stderr[-2000:]
    tag = "localhost/appliance-test:latest"
    built = subprocess.run([builder, "build", "-f", str(CONTAINERFILE), "-t", tag, str(context)],
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    runner = builder if not builder.endswith("buildah") else shutil.which("podman")
    if runner is None:
        pytest.skip("buildah built the image; running it needs podman, which is not installed")
    ran = subprocess.run([runner, "run", "--rm", "--read-only", "--tmpfs", "/tmp", tag, "serve", "--help"],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0 and "--config" in ran.stdout, ran.stderr[-2000:]
    whoami = subprocess.run([runner, "run", "--rm", "--read-only", "--entrypoint", "id", tag, "-u"],
                            capture_output=True, text=True, timeout=300)
    assert whoami.stdout.strip() == _uid()
