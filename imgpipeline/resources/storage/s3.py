"""The S3 backend: the storage root as a bucket and key prefix, and the S3 client it is reached with."""

from __future__ import annotations

from typing import BinaryIO

import dagster as dg
from pydantic import Field

from imgpipeline import ConfigError
from imgpipeline.environment import environment
from imgpipeline.ingest.messages import sha256_hex
from imgpipeline.resources.settings import FromEnv, env_name, resolved, setting
from imgpipeline.resources.storage.base import ROOT_SETTING, BadObject, Storage, StorageLocation, clean_key

# S3 answers about the store or the request, never one object: our credentials (or every frame would be
# dead-lettered while a key is expired), the bucket, the clock, throttling.
STORE_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
               "TokenRefreshRequired", "AuthorizationHeaderMalformed", "NoSuchBucket", "AllAccessDisabled",
               "AccountProblem", "RequestTimeTooSkewed", "RequestTimeout", "SlowDown"}
ARCHIVED = "InvalidObjectState"  # in an archive storage class (Glacier): restore it to read it
READ_CHECK = ".imgpipeline-read-check"  # the object of our own that tells whether a store reads

# Per (endpoint, bucket): whether the store honours put-if-absent, once probed in this process.
_CONDITIONAL_WRITES: dict[tuple[str | None, str], bool] = {}


class S3Storage(Storage):
    """A bucket and key prefix, reached with a boto3 client (that of `S3ClientResource`)."""

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

    def named(self, folder: str, start: str) -> dict[str, str]:
        full = self._object_key(folder.rstrip("/")) + "/" + start
        return {key: f"{item['ETag']}:{item['Size']}" for key, item in sorted(self._listed(full).items())
                if "/" not in key[len(folder):]}

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

    def missing_permissions(self) -> list[tuple[str, str]]:
        """(action, why) of each S3 action the pipeline uses that the bucket refuses these keys, each tried
        on a probe object of its own: listed, written, read, then deleted (refused, it stays, a few bytes
        under `.imgpipeline-permission-check/`)."""
        import uuid

        from botocore.exceptions import ClientError

        probe = self._object_key(f".imgpipeline-permission-check/{uuid.uuid4().hex}")
        at = {"Bucket": self.bucket, "Key": probe}
        actions = {
            "s3:ListBucket": ("listing landing records, tables and what retention deletes",
                              lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=probe)),
            "s3:PutObject": ("storing frames, landing records, tables and marks",
                             lambda: self.client.put_object(**at, Body=b"permission check")),
            "s3:GetObject": ("reading frames, records and tables", lambda: self.client.get_object(**at)),
            "s3:DeleteObject": ("retention, compaction and released claims delete objects",
                                lambda: self.client.delete_object(**at)),
        }
        missing = []
        for action, (why, call) in actions.items():
            try:
                call()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("NoSuchKey", "404") and action == "s3:GetObject":
                    continue  # allowed: the probe was not written (PutObject refused)
                if code not in ("AccessDenied", "403"):
                    raise
                if action == "s3:GetObject" and {"s3:ListBucket", "s3:PutObject"} <= {m for m, _ in missing}:
                    why += " (or only not proven: S3 refuses a key that is not there to whoever may not list)"
                missing.append((action, why))
        return missing

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        try:
            if missing := self.missing_permissions():
                raise ConfigError(
                    f"bucket {self.bucket!r}{where} refuses these keys what the pipeline does there "
                    "(docs/operations.md, \"Permissions\"):\n" + "\n".join(
                        f"  {action}: {why}" for action, why in missing)
                    + f"\nAllow them on arn:aws:s3:::{self.bucket}/{self._object_key('*')} (s3:ListBucket on "
                    f"arn:aws:s3:::{self.bucket}) to the user or role of "
                    f"{env_name(S3ClientResource, 'aws_access_key_id')}")
            self.require_conditional_writes()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigError(
                    f"bucket {self.bucket!r} does not exist{where}; create it or fix "
                    f"{ROOT_SETTING}"
                ) from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                keys = " and ".join(env_name(S3ClientResource, f) for f in ("aws_access_key_id",
                                                                           "aws_secret_access_key"))
                raise ConfigError(f"access to bucket {self.bucket!r}{where} was denied ({code}); check "
                                  f"{keys}") from None
            raise ConfigError(f"bucket {self.bucket!r}{where} cannot be used: {exc}") from None
        except BotoCoreError as exc:
            raise ConfigError(
                f"S3 endpoint{where or ' (AWS)'} cannot be reached ({exc}); check "
                f"{env_name(S3ClientResource, 'endpoint_url')} or start the local one with "
                "`imgpipeline services up`"
            ) from None


class S3ClientResource(FromEnv, dg.ConfigurableResource):
    """The S3 client of the storage root: the fields of dagster-aws's `S3Resource` (not imported: it costs
    each process that loads the code location about a second), its endpoint, region and keys declared as
    settings (the keys as `dg.EnvVar`s), and what a store beside AWS needs on top: connect and read
    timeouts, and path-style addressing on a custom endpoint (an S3-compatible store seldom serves a
    bucket as a host name). Without keys, boto3's own chain is used."""

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
    max_attempts: int = Field(3, description="attempts of each request (Botocore's standard retries)")
    profile_name: str | None = Field(None, description="an AWS profile to take the session from")
    use_ssl: bool = Field(True, description="whether to use TLS")
    verify: bool | None = Field(None, description="whether to verify TLS certificates (Botocore's default)")
    aws_session_token: str | None = Field(None, description="a session token for temporary keys")
    connect_timeout: float = Field(5, description="seconds to connect")
    read_timeout: float = Field(30, description="seconds to wait for an answer")

    def get_client(self):
        """A boto3 S3 client; the keys resolved here too, outside a run (the command line)."""
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": self.max_attempts, "mode": "standard"},
                        connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                        s3={"addressing_style": "path"} if self.endpoint_url else None)
        session = botocore_session()
        return boto3.session.Session(botocore_session=session, profile_name=self.profile_name).client(
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


def botocore_session():
    """A new botocore session (it reads the environment's settings and credentials afresh) that shares
    the process's one loader of the service's model: the S3 model's JSON parsed once a process, not once a
    client (a client in 4 ms instead of 90)."""
    import botocore.session

    global _LOADER
    session = botocore.session.Session()
    if _LOADER is None:
        _LOADER = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _LOADER)
    return session


_LOADER = None


# The S3 settings by the names the storage resource gives them, and their fields on its S3 client.
S3_SETTINGS = {"endpoint_url": "endpoint_url", "region": "region_name", "access_key_id": "aws_access_key_id",
               "secret_access_key": "aws_secret_access_key"}
