"""In-process daemons over copies of the session's tiny packages, for the reliability tests."""

from __future__ import annotations

import contextlib
from pathlib import Path

from appliance.server.config import load_config
from tests.conftest import InProcessDaemon, free_port
from tests.reliability.conftest import copy_packages

SERVED = ("llama", "intents", "minilm")


@contextlib.contextmanager
def in_process(models_dir: Path, root: Path, names=SERVED, server: dict | None = None, engine: dict | None = None,
               **sections):
    """An InProcessDaemon serving copies of `names`; extra config sections as keyword dicts."""
    served = copy_packages(models_dir, root / "models", names)
    config = load_config(None, {
        "server": {"models": served, "listen": f"127.0.0.1:{free_port()}", **(server or {})},
        "runtime": {"intra_op_threads": 1},
        "engine": {**(engine or {})},
        **sections,
    })
    with InProcessDaemon(config) as running:
        yield running
