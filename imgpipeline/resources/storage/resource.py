"""The storage resource: which root (a folder or an S3 bucket) the pipeline keeps its objects under,
and the backend it opens for it."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr, field_validator

from imgpipeline import ConfigError
from imgpipeline.paths import state_dir
from imgpipeline.resources.settings import FromEnv, setting
from imgpipeline.resources.storage.base import ROOT_SETTING, Storage, StorageLocation, parse_storage_uri
from imgpipeline.resources.storage.local import LocalStorage
from imgpipeline.resources.storage.s3 import S3_SETTINGS, S3ClientResource, S3Storage


class StorageResource(FromEnv, dg.ConfigurableResource):
    """Where frames, landing metadata and the warehouse live.

    `uri` is `file:///folder` (the default) or `s3://bucket/prefix`. An S3 root is reached through
    the nested resource `s3` (`S3ClientResource`: the endpoint of an S3-compatible store such as MinIO,
    Hetzner Object Storage or the local endpoint, the region and the keys); a local folder never uses it.
    Its settings read and may be given here under the names `endpoint_url`, `region`, `access_key_id`
    and `secret_access_key`.
    """

    uri: str = setting(ROOT_SETTING, description="`file:///folder` or `s3://bucket/prefix`",
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
        """Import the S3 client, and what pyarrow imports on a table's first use and its first Parquet
        file read (its pandas layer with pandas, its datasets: ~0.4 s), ahead of runs forked from this
        process."""
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(pa.schema([("preload", pa.int8())]).empty_table(), buffer)
        pq.read_table(io.BytesIO(buffer.getvalue()), columns=["preload"])
        if self.location.scheme != "file":
            import boto3  # noqa: F401
            from botocore.config import Config  # noqa: F401
