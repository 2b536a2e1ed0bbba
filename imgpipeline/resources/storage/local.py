"""The local backend: the storage root as a folder."""

from __future__ import annotations

import contextlib
import errno
import io
import os
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

from imgpipeline import ConfigError
from imgpipeline.durable import durable_temp, fsync_folder, replace_durably
from imgpipeline.ingest.messages import sha256_hex
from imgpipeline.resources.storage.base import ROOT_SETTING, BadObject, Storage, StorageLocation, clean_key

# errno values that say a key names no readable object (as opposed to a failing disk or root).
NOT_AN_OBJECT = {errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL}


class LocalStorage(Storage):
    """A folder: each key a file below it, written durably (on disk before it is renamed into place)."""

    def __init__(self, location: StorageLocation):
        self.location = location
        self.folder: Path = location.folder  # type: ignore[assignment]

    @property
    def root_uri(self) -> str:
        return self.folder.as_uri()

    def _path(self, key: str) -> Path:
        return self.folder / clean_key(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def put(self, key: str, data: bytes, *, sha256: str | None = None) -> str:
        return self.put_file(key, io.BytesIO(data), sha256=sha256 or "")

    def put_new(self, key: str, data: bytes, *, sha256: str) -> str | None:
        path = self._path(key)
        tmp = durable_temp(path, io.BytesIO(data))
        try:
            os.link(tmp, path)  # fails, atomically, when the key exists
        except FileExistsError:
            return self.stored_sha256(key)
        finally:
            Path(tmp).unlink(missing_ok=True)
        fsync_folder(path.parent)
        return None

    def put_file(self, key: str, file: BinaryIO, *, sha256: str) -> str:
        # On disk before it is renamed: a crash after a Kafka commit never loses what it counted as landed.
        replace_durably(self._path(key), file)
        return self.uri(key)

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        try:
            self._check_size(key, path.stat().st_size, max_bytes)
            return path.read_bytes()
        except FileNotFoundError:
            raise BadObject(f"object {key} does not exist in {self.root_uri}") from None
        except OSError as exc:
            if exc.errno in NOT_AN_OBJECT:  # names a folder, too long a name, …: this key's problem
                raise BadObject(f"object {key} cannot be read: {exc.strerror}") from None
            raise  # the disk's or the root's problem: the caller's environment fails

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def stored_sha256(self, key: str) -> str | None:
        path = self._path(key)
        return sha256_hex(path.read_bytes()) if path.is_file() else None

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.folder
        if base.is_file():
            return [prefix]
        # os.walk, not rglob: a folder another process empties and removes meanwhile (delete_many) is
        # skipped, where rglob raised FileNotFoundError in the middle of the listing.
        return sorted(
            Path(folder, name).relative_to(self.folder).as_posix()
            for folder, _, names in os.walk(base)
            for name in names
            if not name.startswith(".") and os.path.isfile(os.path.join(folder, name))
        )

    def named(self, folder: str, start: str) -> dict[str, str]:
        try:
            names = sorted(entry.name for entry in os.scandir(self._path(folder.rstrip("/")))
                           if entry.name.startswith(start) and not entry.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        found = {}
        for name in names:
            key = f"{folder.rstrip('/')}/{name}"
            try:
                stat = self._path(key).stat()
            except FileNotFoundError:
                continue  # deleted since the listing
            if S_ISREG(stat.st_mode):
                found[key] = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
        return found

    def versions(self, prefix: str) -> dict[str, str]:
        found = {}
        for key in self.list(prefix):
            try:
                stat = self._path(key).stat()
            except FileNotFoundError:
                continue  # deleted since the listing
            found[key] = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"  # a rename gives a new inode
        return found

    def written(self, prefix: str) -> dict[str, float]:
        found = {}
        for key in self.list(prefix):
            try:
                found[key] = self._path(key).stat().st_mtime
            except FileNotFoundError:
                continue  # deleted since the listing
        return found

    def folders(self, prefix: str) -> list[str]:
        try:
            with os.scandir(self._path(prefix.rstrip("/"))) as entries:
                return sorted(entry.name for entry in entries if entry.is_dir())
        except (FileNotFoundError, NotADirectoryError):  # none, or removed meanwhile (delete_many)
            return []

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_many(self, keys: list[str]) -> None:
        """Delete the files, then each folder they leave empty up to the root (a day's folder goes with
        its last file, so listings of folders no longer show it)."""
        emptied = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            emptied.update(path.parents)
        root = self.folder.resolve()
        for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
            if folder.resolve() != root and root in folder.resolve().parents:
                with contextlib.suppress(OSError):  # not empty, or gone
                    folder.rmdir()

    def check(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / ".imgpipeline-write-check"
            probe.write_bytes(b"")
            try:  # put-if-absent is a hard link, which fails when the name is taken
                os.link(probe, probe.with_name(probe.name + ".link"))
                probe.with_name(probe.name + ".link").unlink()
            except OSError as exc:
                raise ConfigError(
                    f"storage folder {self.folder} is on a filesystem without hard links ({exc.strerror}), "
                    "which put-if-absent needs (a stored frame is never replaced, alert numbers are given "
                    f"once); point {ROOT_SETTING} at a local filesystem or S3") from None
            finally:
                probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"storage folder {self.folder} is not writable ({exc.strerror}); "
                f"fix its permissions or point {ROOT_SETTING} elsewhere"
            ) from None
