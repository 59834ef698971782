"""Durability helpers shared by every writer of files that must survive a crash (checkpoints,
search indexes)."""
from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (a directory's entry list makes a rename durable). Some
    filesystems cannot fsync a directory; the order of renames still holds there, so that error
    is ignored."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
