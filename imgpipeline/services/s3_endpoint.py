"""A local S3 HTTP endpoint (moto server, its conditional writes atomic: s3_server.py) with the project
bucket created.

It keeps objects in memory: they are gone when it stops. Point the storage root at a real store
for data that must last.
"""

from __future__ import annotations

import sys

from imgpipeline.services.base import LocalService

BUCKET = "imgpipeline"
# Any key pair works against the local endpoint; these are not secrets.
LOCAL_KEY_ID = "imgpipeline-local"
LOCAL_SECRET = "imgpipeline-local-secret"
REGION = "us-east-1"


def s3_client(endpoint_url: str):
    """A client for probing the endpoint: short timeouts, one attempt."""
    from imgpipeline.resources.storage import S3ClientResource

    return S3ClientResource(endpoint_url=endpoint_url, region_name=REGION, aws_access_key_id=LOCAL_KEY_ID,
                            aws_secret_access_key=LOCAL_SECRET, connect_timeout=2, read_timeout=5,
                            max_attempts=1).get_client()


class S3Endpoint(LocalService):
    name = "s3"
    start_timeout_s = 60.0

    def argv(self, ports: dict[str, int]) -> list[str]:
        return [sys.executable, "-m", "imgpipeline.services.s3_server", "-H", self.host, "-p",
                str(ports["port"])]

    def address(self, ports: dict[str, int]) -> str:
        return f"http://{self.host}:{ports['port']}"

    def env(self, ports: dict[str, int]) -> dict[str, str]:
        from imgpipeline.resources.settings import env_name
        from imgpipeline.resources.storage import S3ClientResource

        values = {"endpoint_url": self.address(ports), "aws_access_key_id": LOCAL_KEY_ID,
                  "aws_secret_access_key": LOCAL_SECRET, "region_name": REGION}
        return {env_name(S3ClientResource, field): value for field, value in values.items()}

    def ready(self, ports: dict[str, int]) -> bool:
        """Ready when the project bucket answers (created on first contact)."""
        from botocore.exceptions import BotoCoreError, ClientError

        if not ports:
            return False
        client = s3_client(self.address(ports))
        try:
            try:
                client.head_bucket(Bucket=BUCKET)
            except ClientError:
                client.create_bucket(Bucket=BUCKET)
                client.head_bucket(Bucket=BUCKET)
            return True
        except (BotoCoreError, ClientError):
            return False
