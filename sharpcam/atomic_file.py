"""Atomic file writes: the data goes to a temporary file beside the target, is flushed to
disk, then renamed over it, so an interrupted write never leaves a half-written file where
a complete one was (or is expected). Here, in the torch-free package, so the runtime's saved
frames and the training side's checkpoints, models and reports share one implementation."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    # The umask can only be read by setting it; done once, at import, so no file that
    # another thread creates later can catch the process with a umask of 0.
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def readable_mode() -> int:
    """The mode a plain open() would give a new file; mkstemp's 0600 would make shipped
    models unreadable to other users."""
    return 0o666 & ~_UMASK


def write_atomically(path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, readable_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if os.name == "posix":  # makes the rename itself durable; Windows has no directory fsync
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path
