"""Progress of an export's phases (load, export, quantize, validate, publish) on stderr.

Each phase gets a bar when it knows its size (the builder's layers, validation's tokens) and a
spinner otherwise; the durations are kept for the --json summary either way.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class Phases:
    def __init__(self, quiet: bool):
        self.timings: dict[str, float] = {}
        self._progress = None
        if not quiet:
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description:<9}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      console=Console(file=sys.stderr), transient=False)
            self._progress.start()
        self._name = ""
        self._task = None
        self._start = 0.0

    def begin(self, name: str) -> None:
        self.end()
        self._name, self._start = name, time.perf_counter()
        if self._progress is not None:
            self._task = self._progress.add_task(name, total=None)

    def set_total(self, total: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, steps)

    def end(self) -> None:
        if not self._name:
            return
        self.timings[self._name] = round(time.perf_counter() - self._start, 3)
        if self._progress is not None and self._task is not None:
            task = self._progress.tasks[self._task]
            total = task.total if task.total is not None else 1
            self._progress.update(self._task, total=total, completed=total)
        self._name, self._task = "", None

    def close(self) -> None:
        self.end()
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
