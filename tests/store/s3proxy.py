"""A real S3 server that ignores conditional writes, for tests: a reverse proxy on loopback in front of the real
SeaweedFS (tests/seaweed.py) that drops the `If-None-Match` header from every request on its way through.

Through it, `If-None-Match: *` PUTs reach SeaweedFS as plain PUTs, which is what an object store without
conditional writes does with them: the second one succeeds and replaces the object. Requests are signed (SigV4), and
the signature covers If-None-Match, so the proxy signs each request again, without the header, with the server's
credentials, as a gateway with its own identity would. Everything else passes through unchanged: reads, listings,
deletes, multipart uploads. One request at a time per connection, bodies held whole (tests send small objects).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.seaweed import Seaweed

DROPPED = {"if-none-match"}
# Not passed on: hop-by-hop headers, and what the proxy's own signature replaces.
_REQUEST_SKIP = {"host", "connection", "keep-alive", "authorization", "x-amz-date", "x-amz-content-sha256", "expect"}
_RESPONSE_SKIP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@contextmanager
def strip_conditional_writes(server: Seaweed) -> Iterator[tuple[str, list[int]]]:
    """A proxy to `server` that strips If-None-Match; yields its endpoint (http://127.0.0.1:PORT) and a one-item
    list counting the headers it dropped (a test checks the refusal came from the stripping)."""
    upstream = urlsplit(server.endpoint)
    credentials = Credentials(server.access_key, server.secret_key)
    stripped = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet: the test's output is the CLI's
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {}
            for name, value in self.headers.items():
                if name.lower() in DROPPED:
                    stripped[0] += 1
                elif name.lower() not in _REQUEST_SKIP:
                    headers[name] = value
            request = AWSRequest(self.command, f"{server.endpoint}{self.path}", data=body, headers=headers)
            S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=dict(request.headers.items()))
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in _RESPONSE_SKIP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    proxy.daemon_threads = True
    thread = threading.Thread(target=proxy.serve_forever, name="s3-strip-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", stripped
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join()
