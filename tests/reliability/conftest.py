"""The reliability and security suite's shared parts: a figures recorder whose table pytest prints
in its terminal summary, the quick / full scale switch, and helpers to serve copies of the
session's tiny packages in-process.

Scale: every scenario runs once at a quick size (part of `make test`) and once at the issue's
full size (marked `slow`; `make reliability` runs it and skips the quick twins by setting
RELIABILITY_SCALE=full).
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

FULL = os.environ.get("RELIABILITY_SCALE", "") == "full"
SCALES = [pytest.param("quick", id="quick"), pytest.param("full", id="full", marks=pytest.mark.slow)]


def sized(scale: str, quick, full):
    return full if scale == "full" else quick


@dataclass
class Figure:
    test: str
    name: str
    value: str
    target: str
    passed: bool


_FIGURES: list[Figure] = []


class Figures:
    """figures.record("RSS growth", "1.2%", "<= 5%", growth <= 5): one row of the summary table."""

    def __init__(self, test: str):
        self.test = test

    def record(self, name: str, value, target: str = "", passed: bool | None = True) -> None:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        _FIGURES.append(Figure(self.test, name, text, target, bool(passed)))


@pytest.fixture
def figures(request) -> Figures:
    return Figures(request.node.name.removeprefix("test_"))


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: the reliability and security suite (tests/reliability)")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.reliability)
    if FULL:
        # The full run replaces the quick twins rather than repeating them.
        keep = [i for i in items if getattr(getattr(i, "callspec", None), "params", {}).get("scale") != "quick"]
        dropped = [i for i in items if i not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _FIGURES:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Reliability figures", show_lines=False)
    for column in ("test", "figure", "value", "target", "ok"):
        table.add_column(column, overflow="fold")
    for f in _FIGURES:
        table.add_row(f.test, f.name, f.value, f.target, "yes" if f.passed else "NO")
    out = io.StringIO()
    Console(file=out, width=150, force_terminal=False, color_system=None).print(table)
    terminalreporter.write_sep("=", "reliability figures")
    terminalreporter.write(out.getvalue())
    report = os.environ.get("RELIABILITY_REPORT")
    if report:
        Path(report).write_text(out.getvalue())


# ---- shared helpers -----------------------------------------------------------------------------

def rss_bytes(pid: int | str = "self") -> int:
    """A process's resident set; by default this one's (where an in-process daemon lives)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def copy_packages(models_dir: Path, root: Path, names: tuple[str, ...]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(models_dir / name, root / name)
    return root


def engine_clean(model) -> tuple[bool, str]:
    """(clean, description) of a decoder's engine: nothing running, waiting, prefilling or admitted."""
    engine = model.engine
    stats = engine.stats()
    admitted = sum(replica.admitted for replica in engine.replica_stats())
    text = f"running={stats.running} waiting={stats.waiting} prefilling={stats.prefilling} admitted={admitted}"
    return (stats.running == stats.waiting == stats.prefilling == admitted == 0 and not engine.busy), text
