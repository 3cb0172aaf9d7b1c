"""Writing artifacts whole or not at all, the metadata every artifact carries, and where
this machine keeps downloads and staged files."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

PACKAGE = "resnet-tune"
# Where downloads (CIFAR-10) and staged copies of cloud experiments live on this machine.
CACHE_ROOT = Path(os.environ.get("RESNET_TUNE_CACHE", "~/.cache/resnet-tune")).expanduser()


@cache
def code_version() -> str:
    """Package version plus the git commit (and '-dirty' for uncommitted changes) when known.

    RESNET_TUNE_CODE_VERSION overrides it, for copies of the tree without git metadata (a
    container build context, a working tree copied to another machine)."""
    if os.environ.get("RESNET_TUNE_CODE_VERSION"):
        return os.environ["RESNET_TUNE_CODE_VERSION"]
    try:
        base = version(PACKAGE)
    except PackageNotFoundError:
        base = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+g{commit}{'-dirty' if dirty else ''}"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`.

    A reader sees the previous version or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give it a normal file's mode
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(
        path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
