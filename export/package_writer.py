"""Writing a package so that it only ever appears complete.

Everything goes into a hidden staging folder beside the destination; the folder is renamed into
place after the manifest is written. An interrupted or failed export leaves at most a
`.<name>.partial-*` folder, which the daemon ignores (it has no manifest until the very end, and
its name starts with a dot).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from appliance.model_package import MANIFEST_NAME
from export.source import ExportError

# A package is read by the daemon's own account, often after `sudo cp -r`, which keeps the modes:
# folders 0755 and files 0644, whatever the exporting user's umask (tempfile.mkdtemp alone makes
# the staging folder 0700, and a umask of 077 makes every file 0600). Nothing in a package is
# secret (weights, tokenizer, a manifest of hashes) and its integrity rests on the hashes, not on
# modes; who may reach it at all is up to the folder it is exported into, whose mode stays as it was.
PACKAGE_FOLDER_MODE = 0o755
PACKAGE_FILE_MODE = 0o644

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "merges.txt", "vocab.json", "tokenizer.model", "added_tokens.json", "chat_template.jinja")


def check_destination(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output} exists and is not a folder")
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not (output / MANIFEST_NAME).is_file():
        raise ExportError(f"{output} is a non-empty folder that is not a model package; refusing to replace it")
    if not overwrite:
        raise ExportError(f"{output} already holds a package; pass --overwrite to replace it")


@contextmanager
def staging_folder(output: Path) -> Iterator[Path]:
    """Yields a scratch folder on the destination's file system; removes it unless published."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def copy_tokenizer(source_dir: Path, staging: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file() and not (staging / name).exists():
            shutil.copy2(source_dir / name, staging / name)
    if not (staging / "tokenizer.json").is_file():
        raise ExportError("the source has no fast tokenizer (tokenizer.json); the daemon needs one")


def open_to_readers(staging: Path) -> None:
    for path in [staging, *staging.rglob("*")]:
        if not path.is_symlink():
            path.chmod(PACKAGE_FOLDER_MODE if path.is_dir() else PACKAGE_FILE_MODE)


def publish(staging: Path, output: Path) -> None:
    """Moves the finished package into place, readable by the service, replacing an older package atomically."""
    open_to_readers(staging)
    if output.exists():
        retired = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.rename(output, retired)
        os.rename(staging, output)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, output)
