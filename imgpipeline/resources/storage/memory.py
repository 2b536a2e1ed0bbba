"""The in-memory backend: a storage root held by one process, for tests where the backend plays no part
and for code that wants a scratch root. Nothing of it outlives the process or is seen by another, so no
setting names it: a run in a process of its own would write into a root no one reads."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

from imgpipeline.ingest.messages import sha256_hex
from imgpipeline.resources.storage.base import BadObject, Storage, StorageLocation, clean_key

_VERSIONS = itertools.count(1)  # every write in the process gets a tag of its own


@dataclass(frozen=True)
class Stored:
    data: bytes
    version: int
    written: float


class MemoryStorage(Storage):
    """Objects in a dict under one lock, with the semantics of a folder: `list("a/b")` lists the key `a/b`
    or the keys below `a/b/`, names starting with a dot are not listed, and a folder exists while a key
    lies below it."""

    def __init__(self, name: str = "scratch"):
        self.location = StorageLocation("memory", None, clean_key(name), None)
        self._objects: dict[str, Stored] = {}
        self._lock = threading.Lock()

    @property
    def root_uri(self) -> str:
        return f"memory://{self.location.prefix}"

    def _stored(self, key: str) -> Stored | None:
        with self._lock:
            return self._objects.get(clean_key(key))

    def _write(self, key: str, data: bytes) -> None:
        self._objects[clean_key(key)] = Stored(data, next(_VERSIONS), time.time())

    def exists(self, key: str) -> bool:
        return self._stored(key) is not None

    def put(self, key: str, data: bytes, *, sha256: str | None = None) -> str:
        with self._lock:
            self._write(key, bytes(data))
        return self.uri(key)

    def put_file(self, key: str, file: BinaryIO, *, sha256: str) -> str:
        chunks = iter(lambda: file.read(1 << 20), b"")
        return self.put(key, b"".join(chunks), sha256=sha256)

    def put_new(self, key: str, data: bytes, *, sha256: str) -> str | None:
        with self._lock:
            held = self._objects.get(clean_key(key))
            if held is not None:
                return sha256_hex(held.data)
            self._write(key, bytes(data))
        return None

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        held = self._stored(key)
        if held is None:
            raise BadObject(f"object {key} does not exist in {self.root_uri}")
        self._check_size(key, len(held.data), max_bytes)
        return held.data

    def size(self, key: str) -> int | None:
        held = self._stored(key)
        return None if held is None else len(held.data)

    def stored_sha256(self, key: str) -> str | None:
        held = self._stored(key)
        return None if held is None else sha256_hex(held.data)

    def _below(self, prefix: str) -> dict[str, Stored]:
        """The listed keys below a prefix (as a folder's: the key itself or those under it), sorted."""
        folder = clean_key(prefix.rstrip("/")) if prefix else ""
        with self._lock:
            found = {key: held for key, held in self._objects.items()
                     if not folder or key == folder or key.startswith(folder + "/")}
        return {key: found[key] for key in sorted(found) if not key.rsplit("/", 1)[-1].startswith(".")}

    def list(self, prefix: str = "") -> list[str]:
        return list(self._below(prefix))

    def versions(self, prefix: str) -> dict[str, str]:
        return {key: f"{len(held.data)}:{held.version}" for key, held in self._below(prefix).items()}

    def written(self, prefix: str) -> dict[str, float]:
        return {key: held.written for key, held in self._below(prefix).items()}

    def folders(self, prefix: str) -> list[str]:
        folder = clean_key(prefix.rstrip("/")) + "/"
        with self._lock:
            keys = [key[len(folder):] for key in self._objects if key.startswith(folder)]
        return sorted({rest.split("/", 1)[0] for rest in keys if "/" in rest})

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(clean_key(key), None)

    def check(self) -> None:
        return None  # a dict is always writable
