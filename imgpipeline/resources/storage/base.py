"""What every backend of the storage root is: keys, URIs, the checks on untrusted URIs and the
operations a backend provides (`Storage`), and the parsed root (`StorageLocation`).

Keys are relative posix paths below the root. A backend differs from another only in how bytes are
put, got and listed; what the pipeline relies on of each is proven on all of them by one contract test.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from imgpipeline import ConfigError

ROOT_SETTING = "IMGPIPELINE_STORAGE_URI"  # the setting that names the root, for messages that say what to fix


@dataclass(frozen=True)
class StorageLocation:
    """A parsed storage root: `file` with a folder, or `s3` with a bucket and key prefix."""

    scheme: str
    bucket: str | None
    prefix: str
    folder: Path | None


def parse_storage_uri(uri: str) -> StorageLocation:
    """Parse `file:///abs/folder`, a plain folder path, or `s3://bucket/prefix`."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"{ROOT_SETTING}={uri!r}: a file URI needs three slashes, "
                "e.g. file:///var/lib/imgpipeline"
            )
        if not path:
            raise ConfigError(f"{ROOT_SETTING} is empty; use file:///path or s3://bucket/prefix")
        return StorageLocation("file", None, "", Path(path).expanduser().resolve())
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        if not _valid_bucket_name(bucket):
            raise ConfigError(
                f"{ROOT_SETTING}={uri!r}: {bucket!r} is not a valid S3 bucket name "
                "(3-63 lowercase letters, digits, dots and hyphens)"
            )
        return StorageLocation("s3", bucket, parsed.path.strip("/"), None)
    raise ConfigError(
        f"{ROOT_SETTING}={uri!r}: unknown scheme {parsed.scheme!r}; "
        "use file:///path/to/folder or s3://bucket/prefix"
    )


def _valid_bucket_name(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return (
        3 <= len(name) <= 63
        and set(name) <= allowed
        and name[0].isalnum()
        and name[-1].isalnum()
        and ".." not in name
    )


class BadObject(Exception):
    """An object that must not or cannot be read: outside the root, missing or too big."""


def clean_key(key: str) -> str:
    """A key relative to the root, in posix form; anything that could leave the root is refused."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise BadObject(f"invalid key {key!r}")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadObject(f"invalid key {key!r}: empty, '.' or '..' segment")
    return key


class Storage(ABC):
    """A storage root, as the pipeline uses it: every backend provides the abstract methods and shares
    the rest. Keys are relative posix paths below the root."""

    location: StorageLocation

    @property
    @abstractmethod
    def root_uri(self) -> str:
        """The URI of the root: what `uri` puts before a key."""

    def uri(self, key: str) -> str:
        return f"{self.root_uri}/{clean_key(key)}"

    def key_for(self, uri: str) -> str:
        """The key of a URI that lies inside the root; anything else is a BadObject."""
        root = self.root_uri + "/"
        parsed = urlparse(uri)
        if parsed.query or parsed.fragment:
            raise BadObject(f"URI {uri!r} has a query or fragment")
        if not uri.startswith(root):
            raise BadObject(f"URI {uri!r} is outside the storage root {self.root_uri}")
        key = unquote(uri[len(root) :])
        if posixpath.normpath(key) != key:
            raise BadObject(f"URI {uri!r} is not a normalized path")
        return clean_key(key)

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under the key."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, sha256: str | None = None) -> str:
        """Write an object (replacing it) and return its URI."""

    @abstractmethod
    def put_file(self, key: str, file: BinaryIO, *, sha256: str) -> str:
        """Write an object from a binary file read from its current position, in chunks."""

    @abstractmethod
    def put_new(self, key: str, data: bytes, *, sha256: str) -> str | None:
        """Write an object only if the key is free, atomically (two writers: one wins); None when
        written, else the sha256 of what the key already holds."""

    @abstractmethod
    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The object's bytes; a BadObject when it is missing, over `max_bytes` or refused alone (the
        store's own failures raise as they are)."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is none."""

    @abstractmethod
    def stored_sha256(self, key: str) -> str | None:
        """The sha256 of a stored object, or None when there is none."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys below a prefix, sorted."""

    @abstractmethod
    def versions(self, prefix: str) -> dict[str, str]:
        """Each key below a prefix with a tag of its version (from the listing, no read): a key written
        again gets another tag (S3: its ETag and size; a folder: its size, modification time and inode)."""

    def named(self, folder: str, start: str) -> dict[str, str]:
        """The keys right in `folder` (ending in `/`) whose names start with `start`, each with the tag of
        its version (as `versions`): a listing of those names alone where the store can (S3, a folder's
        names), here the folder's, filtered."""
        return {key: tag for key, tag in self.versions(folder).items()
                if key[len(folder):].startswith(start) and "/" not in key[len(folder):]}

    @abstractmethod
    def written(self, prefix: str) -> dict[str, float]:
        """Each key below a prefix with the time it was last written (seconds since the epoch, the store's
        clock: a folder's modification time, S3's LastModified), from the listing, no read."""

    @abstractmethod
    def folders(self, prefix: str) -> list[str]:
        """The names of the folders right under `prefix` (a folder, ending in `/`), sorted: one listing
        request however many objects they hold."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object (one already gone is no error)."""

    def delete_many(self, keys: list[str]) -> None:
        """Delete objects (those already gone are no error)."""
        for key in keys:
            self.delete(key)

    @abstractmethod
    def check(self) -> None:
        """Raise ConfigError when the root cannot be used."""

    def require_conditional_writes(self) -> None:
        """Raise ConfigError when put_new cannot be trusted to refuse a taken key. A local folder's is a
        hard link, atomic or failing loudly (and memory's a lock); an S3 store is asked once."""
        return None  # trusted unless a backend says otherwise

    def _check_size(self, key: str, size: int, max_bytes: int | None) -> None:
        if max_bytes is not None and size > max_bytes:
            raise BadObject(f"object {key} is {size} bytes, over the limit of {max_bytes}")
