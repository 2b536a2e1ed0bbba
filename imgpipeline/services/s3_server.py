"""The local S3 endpoint's server (`python -m imgpipeline.services.s3_server -H HOST -p PORT`): moto's, with
its conditional writes made atomic as S3's are.

moto answers a PUT with `If-None-Match: *` (or `If-Match`) by looking for the object, then writing it, in
whichever of its threads took the request: two such PUTs of one key at once could both succeed, where S3
refuses the second with 412. What the project gives once only on that promise (a stored frame, an alert's
number: defs/alerts/ledger.py) was then given twice, seldom (one number given to two of 45 alerts, once in
many runs of its test). Here such PUTs are answered one at a time; every other request as moto does.
"""

from __future__ import annotations

import io
import threading

from moto import server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

CONDITIONS = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MATCH")


class ConditionalWritesAtomic(DomainDispatcherApplication):
    """moto's application, answering conditional PUTs one at a time."""

    writing = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "PUT" and any(name in environ for name in CONDITIONS):
            if environ.get("CONTENT_LENGTH"):  # read before the lock: a slow sender holds no one else up
                environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
            with self.writing:  # the check and the write, and the answer read out, under the lock
                return list(super().__call__(environ, start_response))
        return super().__call__(environ, start_response)


if __name__ == "__main__":
    server.DomainDispatcherApplication = ConditionalWritesAtomic  # what moto's main() builds its app from
    server.main()
