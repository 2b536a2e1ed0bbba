"""Durable writes: a file the project replaces (a stored object, a journal's window) is replaced so that
readers never see half of it and a crash never loses it (`replace_durably`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO


def durable_temp(path: Path, file: BinaryIO, mode: int = 0o600) -> str:
    """The bytes in a temp file of their own beside `path` (writers of one file never share one), on
    disk before it is renamed: readers never see half a file, and a crash after the rename never loses
    it. A kill before the rename leaves at most a stray `.<name>.<random>.tmp`, which nothing reads.
    `mode`: the file's permissions (its owner's alone unless said)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(file, out)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def replace_durably(path: Path, file: BinaryIO, mode: int = 0o600) -> None:
    """Replace `path` with the bytes of `file`, atomically and on disk: a kill leaves the old file or
    the new one."""
    tmp = durable_temp(path, file, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """A rename is durable once its folder is on disk."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
