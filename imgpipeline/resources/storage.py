"""Object storage under one root: a local folder or an S3 bucket and prefix.

Both backends share the key rules, URI mapping and the checks on untrusted URIs; they
differ only in how bytes are put, got and listed.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import shutil
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

import dagster as dg
from pydantic import PrivateAttr

from imgpipeline.config import (
    ConfigError,
    Settings,
    StorageLocation,
    env_secret,
    parse_storage_uri,
    resolved,
)


class BadObject(Exception):
    """An object that must not or cannot be read: outside the root, missing or too big."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def clean_key(key: str) -> str:
    """A key relative to the root, in posix form; anything that could leave the root is refused."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise BadObject(f"invalid key {key!r}")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadObject(f"invalid key {key!r}: empty, '.' or '..' segment")
    return key


class Storage:
    """Shared logic of both backends. Keys are relative posix paths below the root."""

    location: StorageLocation

    @property
    def root_uri(self) -> str:
        raise NotImplementedError

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

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def put(self, key: str, data: bytes, *, sha256: str | None = None) -> str:
        """Write an object (replacing it) and return its URI."""
        raise NotImplementedError

    def put_file(self, key: str, file: BinaryIO, *, sha256: str) -> str:
        """Write an object from a binary file read from its current position, in chunks."""
        raise NotImplementedError

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        raise NotImplementedError

    def size(self, key: str) -> int | None:
        raise NotImplementedError

    def stored_sha256(self, key: str) -> str | None:
        """The sha256 of a stored object, or None when there is none."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Keys below a prefix, sorted."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Raise ConfigError when the root cannot be used."""
        raise NotImplementedError

    def _check_size(self, key: str, size: int, max_bytes: int | None) -> None:
        if max_bytes is not None and size > max_bytes:
            raise BadObject(f"object {key} is {size} bytes, over the limit of {max_bytes}")


class LocalStorage(Storage):
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

    def put_file(self, key: str, file: BinaryIO, *, sha256: str) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so readers never see half a file.
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as out:
            shutil.copyfileobj(file, out)
        tmp.replace(path)
        return self.uri(key)

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        try:
            self._check_size(key, path.stat().st_size, max_bytes)
            return path.read_bytes()
        except FileNotFoundError:
            raise BadObject(f"object {key} does not exist in {self.root_uri}") from None

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
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.folder).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / ".imgpipeline-write-check"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"storage folder {self.folder} is not writable ({exc.strerror}); "
                "fix its permissions or point IMGPIPELINE_STORAGE_URI elsewhere"
            ) from None


class S3Storage(Storage):
    def __init__(self, location: StorageLocation, client, endpoint_url: str | None):
        self.location = location
        self.bucket: str = location.bucket  # type: ignore[assignment]
        self.prefix = location.prefix
        self.client = client
        self.endpoint_url = endpoint_url

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _object_key(self, key: str) -> str:
        key = clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def put(self, key: str, data: bytes, *, sha256: str | None = None) -> str:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._object_key(key),
            Body=data,
            Metadata={"sha256": sha256 or sha256_hex(data)},
        )
        return self.uri(key)

    def put_file(self, key: str, file: BinaryIO, *, sha256: str) -> str:
        # A managed transfer: large files go up in parts, never whole in memory.
        self.client.upload_fileobj(file, self.bucket, self._object_key(key),
                                   ExtraArgs={"Metadata": {"sha256": sha256}})
        return self.uri(key)

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise BadObject(f"object {key} does not exist in {self.root_uri}") from None
            raise
        body = response["Body"]
        self._check_size(key, response["ContentLength"], max_bytes)
        try:
            return body.read()
        finally:
            body.close()

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else head["ContentLength"]

    def stored_sha256(self, key: str) -> str | None:
        head = self._head(key)
        if head is None:
            return None
        return head.get("Metadata", {}).get("sha256") or sha256_hex(self.get(key))

    def list(self, prefix: str = "") -> list[str]:
        if prefix:
            full = self._object_key(prefix.rstrip("/")) + ("/" if prefix.endswith("/") else "")
        else:
            full = f"{self.prefix}/" if self.prefix else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full
        ):
            keys.extend(item["Key"][strip:] for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigError(
                    f"bucket {self.bucket!r} does not exist{where}; create it or fix "
                    "IMGPIPELINE_STORAGE_URI"
                ) from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ConfigError(
                    f"access to bucket {self.bucket!r}{where} was denied ({code}); check "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ) from None
            raise ConfigError(f"bucket {self.bucket!r}{where} cannot be used: {exc}") from None
        except BotoCoreError as exc:
            raise ConfigError(
                f"S3 endpoint{where or ' (AWS)'} cannot be reached ({exc}); check AWS_ENDPOINT_URL "
                "or start the local one with `imgpipeline services up`"
            ) from None


class StorageResource(dg.ConfigurableResource):
    """Where frames, landing metadata and the warehouse live.

    `uri` is `file:///folder` (the default) or `s3://bucket/prefix`; `endpoint_url` points
    at an S3-compatible store (MinIO, Hetzner Object Storage, a local endpoint). The keys
    come from the environment as `dg.EnvVar`s; without them boto3's own chain is used.
    """

    uri: str
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    max_frame_bytes: int = 20 * 1024 * 1024

    _storage: Storage | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> StorageResource:
        return cls(
            uri=settings.storage_uri,
            endpoint_url=settings.aws_endpoint_url,
            region=settings.aws_region,
            access_key_id=env_secret("AWS_ACCESS_KEY_ID"),
            secret_access_key=env_secret("AWS_SECRET_ACCESS_KEY"),
        )

    @property
    def location(self) -> StorageLocation:
        return parse_storage_uri(self.uri)

    def open(self) -> Storage:
        """The backend for this root (built once per resource instance)."""
        if self._storage is None:
            location = self.location
            if location.scheme == "file":
                self._storage = LocalStorage(location)
            else:
                self._storage = S3Storage(location, self._s3_client(), self.endpoint_url)
        return self._storage

    def preload(self) -> None:
        """Import the S3 client ahead of runs forked from this process."""
        if self.location.scheme != "file":
            import boto3  # noqa: F401
            from botocore.config import Config  # noqa: F401

    def _s3_client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=resolved(self.access_key_id),
            aws_secret_access_key=resolved(self.secret_access_key),
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                s3={"addressing_style": "path"} if self.endpoint_url else None,
            ),
        )

