"""Writing a file all or nothing, with its permissions from the first byte: keys, certificates."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data``: complete or not at all, even across a power cut.

    The bytes go to a temporary file beside it, created with ``mode`` (so a private key is never
    readable by others, whatever the umask), flushed to disk, then renamed over ``path``; the
    directory is flushed too, so the rename itself survives.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is narrowed by the umask, an old file's kept
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    temporary.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
