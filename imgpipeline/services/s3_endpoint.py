"""A local S3 HTTP endpoint (moto server) with the project bucket created.

It keeps objects in memory: they are gone when it stops. Point IMGPIPELINE_STORAGE_URI at
a real store for data that must last.
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
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=LOCAL_KEY_ID,
        aws_secret_access_key=LOCAL_SECRET,
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
    )


class S3Endpoint(LocalService):
    name = "s3"
    start_timeout_s = 60.0

    def argv(self, ports: dict[str, int]) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["port"])]

    def address(self, ports: dict[str, int]) -> str:
        return f"http://127.0.0.1:{ports['port']}"

    def env(self, ports: dict[str, int]) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.address(ports),
            "AWS_ACCESS_KEY_ID": LOCAL_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET,
            "AWS_REGION": REGION,
        }

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
