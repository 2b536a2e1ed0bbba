"""Object storage under one root: what every backend is (`Storage`, in `base`), the backends (a local
folder, an S3 bucket and prefix, and memory for one process), and the resource that opens the root
configured (`StorageResource`).

The pipeline's code takes a `Storage` and never asks which backend it is; one contract test proves each
backend does what the code relies on.
"""

from imgpipeline.resources.storage.base import (
           BadObject,
           Storage,
           StorageLocation,
           clean_key,
           parse_storage_uri,
)
from imgpipeline.resources.storage.local import LocalStorage
from imgpipeline.resources.storage.memory import MemoryStorage
from imgpipeline.resources.storage.resource import StorageResource
from imgpipeline.resources.storage.s3 import S3ClientResource, S3Storage

__all__ = ["BadObject", "LocalStorage", "MemoryStorage", "S3ClientResource", "S3Storage", "Storage",
           "StorageLocation", "StorageResource", "clean_key", "parse_storage_uri"]
