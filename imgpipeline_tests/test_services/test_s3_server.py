"""The local S3 endpoint's conditional writes (services/s3_server.py) against a hostile sender."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from imgpipeline.services.s3_endpoint import BUCKET
from imgpipeline_tests.conftest import s3_storage_resource

pytestmark = pytest.mark.integration


def test_a_conditional_put_whose_body_never_comes_holds_no_other_write_up(services):
    store = s3_storage_resource(services).open()
    address = urlsplit(services.s3.address(services.s3.ports))
    with socket.create_connection((address.hostname, address.port), timeout=10) as stalled:
        stalled.sendall(f"PUT /{BUCKET}/stalled HTTP/1.1\r\nHost: {address.netloc}\r\nIf-None-Match: *\r\n"
                        "Content-Length: 1000\r\n\r\n".encode())  # and not one byte of the body
        # Another writer's put-if-absent is answered meanwhile, once only.
        assert store.put_new("written", b"data", sha256="x") is None
        assert store.put_new("written", b"other", sha256="y") is not None
