"""Object storage under one root: a local folder or an S3 bucket and prefix.

Both backends share the key rules, URI mapping and the checks on untrusted URIs; they
differ only in how bytes are put, got and listed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr, field_validator

from imgpipeline import ConfigError
from imgpipeline.ingest.messages import sha256_hex
from imgpipeline.paths import durable_temp, environment, fsync_folder, replace_durably, state_dir
from imgpipeline.resources.settings import FromEnv, resolved, setting


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
                f"IMGPIPELINE_STORAGE_URI={uri!r}: a file URI needs three slashes, "
                "e.g. file:///var/lib/imgpipeline"
            )
        if not path:
            raise ConfigError("IMGPIPELINE_STORAGE_URI is empty; use file:///path or s3://bucket/prefix")
        return StorageLocation("file", None, "", Path(path).expanduser().resolve())
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        if not _valid_bucket_name(bucket):
            raise ConfigError(
                f"IMGPIPELINE_STORAGE_URI={uri!r}: {bucket!r} is not a valid S3 bucket name "
                "(3-63 lowercase letters, digits, dots and hyphens)"
            )
        return StorageLocation("s3", bucket, parsed.path.strip("/"), None)
    raise ConfigError(
        f"IMGPIPELINE_STORAGE_URI={uri!r}: unknown scheme {parsed.scheme!r}; "
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


# S3 answers about the store or the request, never one object: our credentials (or every frame would be
# dead-lettered while a key is expired), the bucket, the clock, throttling.
STORE_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
               "TokenRefreshRequired", "AuthorizationHeaderMalformed", "NoSuchBucket", "AllAccessDisabled",
               "AccountProblem", "RequestTimeTooSkewed", "RequestTimeout", "SlowDown"}
ARCHIVED = "InvalidObjectState"  # in an archive storage class (Glacier): restore it to read it
READ_CHECK = ".imgpipeline-read-check"  # the object of our own that tells whether a store reads
# errno values that say a key names no readable object (as opposed to a failing disk or root).
NOT_AN_OBJECT = {errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL}


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

    def put_new(self, key: str, data: bytes, *, sha256: str) -> str | None:
        """Write an object only if the key is free, atomically (two writers: one wins); None when
        written, else the sha256 of what the key already holds."""
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

    def versions(self, prefix: str) -> dict[str, str]:
        """Each key below a prefix with a tag of its version (from the listing, no read): a key written
        again gets another tag (S3: its ETag and size; a folder: its size, modification time and inode)."""
        raise NotImplementedError

    def written(self, prefix: str) -> dict[str, float]:
        """Each key below a prefix with the time it was last written (seconds since the epoch, the store's
        clock: a folder's modification time, S3's LastModified), from the listing, no read."""
        raise NotImplementedError

    def folders(self, prefix: str) -> list[str]:
        """The names of the folders right under `prefix` (a folder, ending in `/`), sorted: one listing
        request however many objects they hold."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def delete_many(self, keys: list[str]) -> None:
        """Delete objects (those already gone are no error)."""
        for key in keys:
            self.delete(key)

    def check(self) -> None:
        """Raise ConfigError when the root cannot be used."""
        raise NotImplementedError

    def require_conditional_writes(self) -> None:
        """Raise ConfigError when put_new cannot be trusted to refuse a taken key. A local folder's is a
        hard link, atomic or failing loudly; an S3 store is asked once."""

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
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.folder).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

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
        base = self._path(prefix.rstrip("/"))
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

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
                    "once); point IMGPIPELINE_STORAGE_URI at a local filesystem or S3") from None
            finally:
                probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"storage folder {self.folder} is not writable ({exc.strerror}); "
                "fix its permissions or point IMGPIPELINE_STORAGE_URI elsewhere"
            ) from None


# Per (endpoint, bucket): whether the store honours put-if-absent, once probed in this process.
_CONDITIONAL_WRITES: dict[tuple[str | None, str], bool] = {}


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

    def put_new(self, key: str, data: bytes, *, sha256: str) -> str | None:
        self.require_conditional_writes()
        return self._put_if_absent(key, data, sha256)

    def conditional_writes(self) -> bool:
        """Whether the store refuses to overwrite a key written with put-if-absent (`If-None-Match: *`),
        as AWS S3 and current S3-compatible stores do; a store that ignores the header overwrites
        silently. Probed once per process and store with an object of its own, written twice."""
        import uuid

        where = (self.endpoint_url, self.bucket)
        if where not in _CONDITIONAL_WRITES:
            probe = f".imgpipeline-conditional-write-check/{uuid.uuid4().hex}"
            try:
                first = self._put_if_absent(probe, b"first", sha256_hex(b"first"))
                second = self._put_if_absent(probe, b"second", sha256_hex(b"second"))
            finally:
                self.delete(probe)
            _CONDITIONAL_WRITES[where] = first is None and second is not None
        return _CONDITIONAL_WRITES[where]

    def require_conditional_writes(self) -> None:
        """Raise ConfigError on a store that ignores put-if-absent: what depends on it (a stored frame is
        never replaced, alert numbers are given once) refuses to run rather than silently break."""
        if not self.conditional_writes():
            where = f" at {self.endpoint_url}" if self.endpoint_url else ""
            raise ConfigError(
                f"the S3 store{where} (bucket {self.bucket!r}) ignores conditional writes (`If-None-Match: "
                "*` overwrote an object it should have refused): frames could be replaced and alert numbers "
                "given twice, so nothing is written there; use a store that honours it (AWS S3, or an "
                "S3-compatible server of 2024 or later)")

    def _put_if_absent(self, key: str, data: bytes, sha256: str) -> str | None:
        import time

        from botocore.exceptions import ClientError

        for attempt in range(8):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data,
                                       Metadata={"sha256": sha256}, IfNoneMatch="*")
                return None
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 412:  # the key exists: never None, even before its metadata shows
                    return self.stored_sha256(key) or ""
                if status != 409:
                    raise
                # 409: a write to the key raced ours and is still in flight; ask again once it landed
                time.sleep(0.05 * 2**attempt)
        return self.stored_sha256(key) or ""

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
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = exc.response.get("Error", {}).get("Code") or ""
            if self.refused_alone(code, status):
                reason = f"object {key} cannot be read from {self.root_uri}: {code} ({status})"
                raise BadObject(reason) from None
            raise  # the store's problem (credentials, 5xx, throttling): the caller's environment fails
        body = response["Body"]
        self._check_size(key, response["ContentLength"], max_bytes)
        try:
            return body.read()
        finally:
            body.close()

    def refused_alone(self, code: str, status: int) -> bool:
        """Whether an S3 error reading one object is that object's: it is archived, or it is refused
        (a policy denying its key, a KMS key we may not use, any other 4xx) while the store reads an
        object of its own. A store that refuses every read, and answers about the store, are not."""
        if code == ARCHIVED:
            return True
        if code in STORE_CODES or status in (408, 429) or not 400 <= status < 500:
            return False
        return self.reads()

    def reads(self) -> bool:
        """Whether the store reads at all: READ_CHECK read back (written first when it cannot be). Asked
        after each refusal, so credentials revoked mid-run fail the run instead of dead-lettering the
        rest of it."""
        from botocore.exceptions import ClientError

        probe = self._object_key(READ_CHECK)

        def read() -> bool:
            try:
                self.client.get_object(Bucket=self.bucket, Key=probe)["Body"].close()
            except ClientError:
                return False
            return True

        if read():
            return True
        try:
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
        except ClientError:
            return False
        return read()

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
        return sorted(self._listed(full))

    def versions(self, prefix: str) -> dict[str, str]:
        full = self._object_key(prefix.rstrip("/")) + ("/" if prefix.endswith("/") else "")
        return {key: f"{item['ETag']}:{item['Size']}" for key, item in sorted(self._listed(full).items())}

    def written(self, prefix: str) -> dict[str, float]:
        full = self._object_key(prefix.rstrip("/")) + ("/" if prefix.endswith("/") else "")
        return {key: item["LastModified"].timestamp() for key, item in sorted(self._listed(full).items())}

    def _listed(self, full: str) -> dict[str, dict]:
        """The listing's entries below a full object-key prefix, by key."""
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            found.update((item["Key"][strip:], item) for item in page.get("Contents", []))
        return found

    def folders(self, prefix: str) -> list[str]:
        full = self._object_key(prefix.rstrip("/")) + "/"
        names = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full, Delimiter="/"
        ):
            names.extend(item["Prefix"][len(full):].rstrip("/") for item in page.get("CommonPrefixes", []))
        return sorted(names)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def delete_many(self, keys: list[str]) -> None:
        """DeleteObjects, a thousand keys a request; a key S3 would not delete raises OSError."""
        for first in range(0, len(keys), 1000):
            batch = [{"Key": self._object_key(k)} for k in keys[first:first + 1000]]
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if errors := answer.get("Errors"):
                shown = "; ".join(f"{e.get('Key')}: {e.get('Code')}" for e in errors[:5])
                raise OSError(f"S3 did not delete {len(errors)} of {len(batch)} objects: {shown}")

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.require_conditional_writes()
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


class S3ClientResource(FromEnv, S3Resource):
    """The S3 client of the storage root: dagster-aws's `S3Resource` with its endpoint, region and keys
    declared as settings (the keys as `dg.EnvVar`s), and what a store beside AWS needs on top: connect
    and read timeouts, and path-style addressing on a custom endpoint (an S3-compatible store seldom
    serves a bucket as a host name). Without keys, boto3's own chain is used."""

    endpoint_url: str | None = setting(
        "AWS_ENDPOINT_URL", None, "an S3-compatible store: MinIO, Hetzner Object Storage, the local endpoint",
        shown="AWS")
    region_name: str = setting("AWS_REGION", description="S3 region",
                               default_factory=lambda: environment().get("AWS_DEFAULT_REGION") or "us-east-1",
                               shown="`AWS_DEFAULT_REGION`, else `us-east-1`")
    aws_access_key_id: str | None = setting("AWS_ACCESS_KEY_ID", None, "S3 key id", secret=True,
                                            shown="boto3's chain")
    aws_secret_access_key: str | None = setting("AWS_SECRET_ACCESS_KEY", None, "S3 secret key (a secret)",
                                                secret=True, shown="boto3's chain")
    max_attempts: int = 3
    connect_timeout: float = 5
    read_timeout: float = 30

    def get_client(self):
        """A boto3 S3 client; the keys resolved here too, outside a run (the command line)."""
        import boto3
        from botocore.config import Config
        from dagster_aws.utils import construct_boto_client_retry_config

        config = construct_boto_client_retry_config(self.max_attempts).merge(Config(
            connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
            s3={"addressing_style": "path"} if self.endpoint_url else None))
        return boto3.session.Session(profile_name=self.profile_name).client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=resolved(self.aws_access_key_id),
            aws_secret_access_key=resolved(self.aws_secret_access_key),
            aws_session_token=resolved(self.aws_session_token),
            config=config,
        )


# The S3 settings by the names the storage resource gives them, and their fields on its S3 client.
S3_SETTINGS = {"endpoint_url": "endpoint_url", "region": "region_name", "access_key_id": "aws_access_key_id",
               "secret_access_key": "aws_secret_access_key"}


class StorageResource(FromEnv, dg.ConfigurableResource):
    """Where frames, landing metadata and the warehouse live.

    `uri` is `file:///folder` (the default) or `s3://bucket/prefix`. An S3 root is reached through
    the nested resource `s3` (`S3ClientResource`, dagster-aws's S3 resource: the endpoint of an
    S3-compatible store such as MinIO, Hetzner Object Storage or the local endpoint, the region and the
    keys); a local folder never uses it. Its settings read and may be given here under the names
    `endpoint_url`, `region`, `access_key_id` and `secret_access_key`.
    """

    uri: str = setting("IMGPIPELINE_STORAGE_URI", description="`file:///folder` or `s3://bucket/prefix`",
                       default_factory=lambda: (state_dir() / "data").as_uri(),
                       shown="`file://<project>/.imgpipeline/data`")
    s3: S3ClientResource
    max_frame_bytes: int = 20 * 1024 * 1024

    _storage: Storage | None = PrivateAttr(default=None)

    def __init__(self, **data):
        # Always given to Dagster as the nested resource (the UI shows it), with any S3 setting given here.
        given = {field: data.pop(name) for name, field in S3_SETTINGS.items() if name in data}
        s3 = data.pop("s3", None)
        if isinstance(s3, S3ClientResource) and not given:
            data["s3"] = s3
        else:
            data["s3"] = S3ClientResource(**{**(dict(s3) if s3 is not None else {}), **given})
        super().__init__(**data)

    @classmethod
    def from_env(cls, **overrides):
        return super().from_env(**{"s3": S3ClientResource.from_env(), **overrides})

    @field_validator("uri")
    @classmethod
    def _valid_root(cls, value: str) -> str:
        try:
            parse_storage_uri(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def location(self) -> StorageLocation:
        return parse_storage_uri(self.uri)

    @property
    def endpoint_url(self) -> str | None:
        return self.s3.endpoint_url

    @property
    def region(self) -> str:
        return self.s3.region_name

    @property
    def access_key_id(self) -> str | None:
        return self.s3.aws_access_key_id

    @property
    def secret_access_key(self) -> str | None:
        return self.s3.aws_secret_access_key

    def open(self) -> Storage:
        """The backend for this root (built once per resource instance, its S3 client with it)."""
        if self._storage is None:
            location = self.location
            if location.scheme == "file":
                self._storage = LocalStorage(location)
            else:
                self._storage = S3Storage(location, self.s3.get_client(), self.endpoint_url)
        return self._storage

    def preload(self) -> None:
        """Import the S3 client ahead of runs forked from this process."""
        if self.location.scheme != "file":
            import boto3  # noqa: F401
            from botocore.config import Config  # noqa: F401
