"""S3-compatible object storage (AWS S3, MinIO, Ceph, SeaweedFS) as a vault backend, through botocore
(boto3's core: its client, credential chain and profiles, without boto3's resource layer).

Location: `s3:http://HOST:PORT/BUCKET[/PREFIX]` or `s3:https://…`; object `name` is key `PREFIX/name`, so several
vaults can share a bucket. Credentials and region come from the usual AWS chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws, AWS_DEFAULT_REGION; us-east-1 when none is set); with no credentials
at all, requests go unsigned (a local SeaweedFS without identities takes them, a real service says access denied).
Path-style addressing, so any host name works.

`put_exclusive` is a conditional PUT with `If-None-Match: *`: the server creates the key only if it is absent and
answers 412 otherwise, atomically, so several machines append to one event log without a lock. Before its first
write a backend checks that the server really honours it: it puts one probe key twice (`PREFIX/.probe-<random>`,
a name no vault object has, removed afterwards) and refuses to write (ConditionalWritesUnsupported) unless the second
put fails with 412. Commands that only read never write, so they never probe.

Errors, each one line in the CLI: the first request checks the bucket, so a missing bucket is BucketNotFound (exit
10; `phonevault init` opens with `create_bucket=True` and creates it), a refused key StorageAccessDenied, an endpoint
that does not answer StorageUnavailable (not transient: a wrong address is said at once). Later connection resets,
timeouts, throttling (429, 503 SlowDown) and 5xx answers are StorageUnavailable(transient=True), which
`retrying.RetryingBackend` (wrapped around this backend by `open_backend`) retries with backoff; botocore's own
retries are off, so there is one retry policy, not two multiplied.

Memory: a put sends the caller's buffer (`put` takes a memoryview of the pack writer's buffer) without copying
it; a get holds the one object or range it returns. Pack uploads run in parallel: the blob sink keeps
`pack_writes` = PACK_WRITES (4) packs in flight, each one PUT on its own connection. An object of MULTIPART_FROM
(64 MiB) or more (no pack is: ≤ 16 MiB + one blob, see store/packs.py) goes up as a multipart upload whose parts
(PART_SIZE, 8 MiB; the last up to 12 MiB) are sent PARALLEL_PARTS (4) at once, each a slice of that same buffer; it
appears whole at completion or not at all, and a failed upload is aborted (one cut short by a kill stays as
invisible parts until the bucket's lifecycle rule for incomplete uploads removes them; it is never an object). So an
upload costs the object it sends plus socket buffers, and the blob sink's bound (store/blobsink.py: 2 open packs plus
PACK_WRITES in flight, each ≤ 16 MiB + one blob) is the whole write-side bound on S3 as on a disk.

Client CPU (the S3 server often shares the client's cores, and then every CPU second here is one it lacks): a pack
is one PUT, not a multipart upload of 3 parts (5 requests to sign and send, and 3 threads), which cost 0.6 CPU s
per 600 MB. Payloads are not SHA-256 hashed for the signature (`payload_signing_enabled` off, UNSIGNED-PAYLOAD; the
headers, If-None-Match among them, are still signed): botocore otherwise hashes every body it sends over http, 0.3
CPU s per 600 MB. What guards a vault's bytes is its own sealing instead:
every blob, index object and event segment is AES-GCM sealed and authenticated whenever it is opened, and a pack's
name is the BLAKE3 of its bytes (`check --read-data`), so a body damaged on the way is found when read, as it would
be on a disk. Over https botocore sends UNSIGNED-PAYLOAD already (TLS guards the body). No flexible checksums
(`when_required`): no aws-chunked trailers, which not every store parses, and no CRC32 pass over each body. A body
is handed over as the caller's buffer itself (a memoryview, which urllib3 gives the socket in one sendall), not as
a file object, which botocore reads 128 KiB at a time into new bytes and sends after an `Expect: 100-continue`
exchange (~0.1 CPU s per 600 MB); botocore's parameter validation would refuse a memoryview, so it is off
(`parameter_validation`: every request is built in this module, from fixed arguments).

Reads: a ranged read fetches at least READAHEAD (1 MiB) from its offset and keeps that window, so the next blobs of
the same pack (an export reads a pack's small blobs one after another; a log open reads each segment's first 12
bytes) cost no request; one request per blob would cost a round trip each. Windows are kept per object name, least
recently used dropped first, at most WINDOW_BYTES (16 MiB) in all: the read-side memory bound. An object this
handle puts or deletes loses its window; objects are immutable otherwise (packs and segments are never rewritten),
so a window cannot go stale except by another writer deleting the object, after which its bytes are still the ones
the name had.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import botocore.config
import botocore.exceptions
import botocore.loaders
import botocore.session
from botocore import UNSIGNED

from ..errors import (
    BucketNotFound,
    ConditionalWritesUnsupported,
    MissingObject,
    ObjectExists,
    PhonevaultError,
    StorageAccessDenied,
    StorageUnavailable,
    UnsupportedBackend,
)
from . import check_name, check_prefix

PACK_WRITES = 4  # packs uploaded at once (store/blobsink.py): each a round trip, so several hide the latency
MAX_CONNECTIONS = 16  # PACK_WRITES × PARALLEL_PARTS: every part of every object in flight has its own connection
MULTIPART_FROM = 64 << 20  # an object this large goes up in parts; a pack (≤ 16 MiB + one blob) is one PUT
PART_SIZE = 8 << 20  # what `aws s3 cp` uses (S3 takes 5 MiB or more but for the last part)
PARALLEL_PARTS = 4
READAHEAD = 1 << 20  # a ranged read fetches at least this much, kept for the next ranges of the same object
WINDOW_BYTES = 16 << 20  # the most read-ahead bytes kept, over every object
PROBE = ".probe-"  # a probe key's last component; no object name starts with "."

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "403"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
_RETRY_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "ConditionalRequestConflict",
    "OperationAborted",
}
_CONNECTION = (
    botocore.exceptions.ConnectionError,  # refused, timed out connecting (EndpointConnectionError, ConnectTimeout…)
    botocore.exceptions.HTTPClientError,  # closed, reset, read timed out, the body cut while being read
    botocore.exceptions.IncompleteReadError,
    ConnectionError,
    TimeoutError,
)
_BOTO = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, ConnectionError, TimeoutError)


@dataclass(frozen=True, slots=True)
class S3Location:
    endpoint: str  # scheme://host[:port]
    bucket: str
    prefix: str  # "" or "a/b", no slashes at either end

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


def parse_location(location: str) -> S3Location:
    """`s3:http(s)://host[:port]/bucket[/prefix]`; anything else is UnsupportedBackend with the expected form."""
    url = location[len("s3:") :] if location[:3].lower() == "s3:" else location
    form = "write s3:http://HOST:PORT/BUCKET/PREFIX or s3:https://HOST/BUCKET/PREFIX"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UnsupportedBackend(location, f"an S3 location names its endpoint: {form}")
    if parts.query or parts.fragment:
        raise UnsupportedBackend(location, f"an S3 location has no query or fragment: {form}")
    bucket, _, prefix = parts.path.strip("/").partition("/")
    if not bucket:
        raise UnsupportedBackend(location, f"no bucket named: {form}")
    prefix = prefix.strip("/")
    if prefix:
        try:
            check_name(prefix)
        except ValueError:
            raise UnsupportedBackend(location, f"invalid prefix {prefix!r} (empty or dot components)") from None
    return S3Location(f"{parts.scheme}://{parts.netloc}", bucket, prefix)


class _S3Models(botocore.loaders.Loader):
    """botocore's loader of its service models (the same search path: botocore's data, ~/.aws/models,
    AWS_DATA_PATH), less its check that "s3" is a service it knows: that check lists every service's folder of the
    data path (~420, each listed and its model files looked for), once per kind of model loaded (the API, its
    endpoint rules, its paginators), ~30 ms of CPU each, at the start of every S3 command. A session with this
    loader makes S3 clients only (`s3_session`)."""

    def list_available_services(self, type_name: str) -> list[str]:
        return ["s3"]


def s3_session() -> botocore.session.Session:
    """botocore's session (credential chain, profiles, region), with the model loader above: for S3 clients only."""
    session = botocore.session.Session()
    paths = session.get_config_variable("data_path")  # what botocore.loaders.create_loader reads, likewise
    extra = [os.path.expanduser(os.path.expandvars(p)) for p in paths.split(os.pathsep)] if paths else None
    session.register_component("data_loader", _S3Models(extra_search_paths=extra))
    return session


def client_config(unsigned: bool = False) -> botocore.config.Config:
    """The botocore configuration of every S3 client phonevault makes (why each setting: the module docstring)."""
    return botocore.config.Config(
        retries={"total_max_attempts": 1},  # RetryingBackend retries; botocore's own would multiply it
        max_pool_connections=MAX_CONNECTIONS,
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        signature_version=UNSIGNED if unsigned else None,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        parameter_validation=False,  # a memoryview body is refused by it
    )


class S3Backend:
    pack_writes = PACK_WRITES

    def __init__(self, location: str, *, create_bucket: bool = False) -> None:
        self.location = location
        self.where = parse_location(location)
        self._create_bucket = create_bucket
        # botocore's session, not boto3's: the same credential chain, profile and region, without importing boto3
        # and the s3transfer it pulls in (~60 ms of CPU at every start, for nothing this module calls)
        session = s3_session()
        self._unsigned = unsigned = session.get_credentials() is None
        config = client_config(unsigned)
        region = session.get_config_variable("region") or "us-east-1"
        self._client = session.create_client("s3", endpoint_url=self.where.endpoint, region_name=region, config=config)
        self._lock = threading.Lock()
        self._reached = False  # the server has answered once: later connection failures are transient
        self._checked = False
        self._probed = False
        self._windows: OrderedDict[str, tuple[int, bytes]] = OrderedDict()  # name -> (offset, bytes read ahead)
        self._window_bytes = 0
        self._windows_lock = threading.Lock()

    # --- errors -----------------------------------------------------------------------------------------------
    def _fail(self, e: Exception, name: str) -> Exception:
        """The typed error for a boto3 failure on object `name` (MissingObject and ObjectExists are the callers')."""
        where = f"{self.location}: {name}" if name else self.location
        if isinstance(e, botocore.exceptions.ClientError):
            self._reached = True
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            message = e.response.get("Error", {}).get("Message") or code
            if code == "NoSuchBucket":
                return BucketNotFound(self.location, self.where.bucket)
            if code in _DENIED or status == 403:
                why = "no AWS credentials were found, so the request was unsigned" if self._unsigned else message
                return StorageAccessDenied(self.location, f"{code}: {why}" if code != "403" else "HTTP 403")
            if code in _THROTTLED or status == 429:
                return StorageUnavailable(errno.EAGAIN, f"throttled by the server ({code})", where, transient=True)
            if code in _RETRY_CODES or status >= 500 or status == 409:
                return StorageUnavailable(errno.EIO, f"server error {status} {code}", where, transient=True)
            return PhonevaultError(f"{where}: the server refused the request ({status} {code}: {message})")
        if isinstance(e, _CONNECTION):
            if not self._reached:
                return StorageUnavailable(
                    errno.ECONNREFUSED, f"cannot reach {self.where.endpoint} ({e})", self.location, transient=False
                )
            return StorageUnavailable(errno.ECONNRESET, f"connection failed ({e})", where, transient=True)
        if isinstance(e, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
            return StorageAccessDenied(self.location, str(e))
        return e

    @staticmethod
    def _code(e: botocore.exceptions.ClientError) -> tuple[str, int]:
        return str(e.response.get("Error", {}).get("Code", "")), e.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode", 0
        )

    # --- first contact ----------------------------------------------------------------------------------------
    def _check_bucket(self) -> None:
        """Once per backend: the bucket exists (or is created, for init), reachable with these credentials."""
        if self._checked:
            return
        with self._lock:
            if self._checked:
                return
            try:  # a listing, not head_bucket: its error names the cause (a HEAD answer has no body)
                self._client.list_objects_v2(Bucket=self.where.bucket, Prefix=self.where.key(""), MaxKeys=1)
            except botocore.exceptions.ClientError as e:
                self._reached = True
                code, status = self._code(e)
                if status != 404 and code not in ("NoSuchBucket", "NotFound", "404"):
                    raise self._fail(e, "") from None
                if not self._create_bucket:
                    raise BucketNotFound(self.location, self.where.bucket) from None
                try:
                    self._client.create_bucket(Bucket=self.where.bucket)
                except botocore.exceptions.ClientError as e2:
                    if self._code(e2)[0] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise self._fail(e2, "") from None
                except _BOTO as e2:
                    raise self._fail(e2, "") from None
            except _BOTO as e:
                raise self._fail(e, "") from None
            self._reached = True
            self._checked = True

    def _check_writes(self) -> None:
        """Once per backend, before its first write: the server must refuse a second `If-None-Match: *` PUT."""
        self._check_bucket()
        if self._probed:
            return
        with self._lock:
            if self._probed:
                return
            key = self.where.key(PROBE + secrets.token_hex(8))
            try:
                self._client.put_object(Bucket=self.where.bucket, Key=key, Body=b"probe", IfNoneMatch="*")
                try:
                    self._client.put_object(Bucket=self.where.bucket, Key=key, Body=b"again", IfNoneMatch="*")
                    honoured = False
                except botocore.exceptions.ClientError as e:
                    code, status = self._code(e)
                    if status != 412 and code != "PreconditionFailed":
                        raise
                    honoured = True
                self._client.delete_object(Bucket=self.where.bucket, Key=key)
            except _BOTO as e:
                raise self._fail(e, key) from None
            if not honoured:
                raise ConditionalWritesUnsupported(self.location)
            self._probed = True

    # --- the backend ------------------------------------------------------------------------------------------
    def get(self, name: str) -> bytes:
        key = self.where.key(check_name(name))
        self._check_bucket()
        try:
            response = self._client.get_object(Bucket=self.where.bucket, Key=key)
            return response["Body"].read()
        except botocore.exceptions.ClientError as e:
            if self._code(e)[0] in _MISSING:
                raise MissingObject(name) from None
            raise self._fail(e, name) from None
        except _BOTO as e:
            raise self._fail(e, name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range of {name!r}: offset {offset}, length {length}")
        key = self.where.key(check_name(name))
        if (hit := self._window_hit(name, offset, length)) is not None:
            return hit
        if length == 0:  # no HTTP range is empty: the object only has to exist
            if not self.exists(name):
                raise MissingObject(name)
            return b""
        self._check_bucket()
        window = max(length, READAHEAD)
        try:
            response = self._client.get_object(
                Bucket=self.where.bucket, Key=key, Range=f"bytes={offset}-{offset + window - 1}"
            )
            data = response["Body"].read()
        except botocore.exceptions.ClientError as e:
            code, status = self._code(e)
            if code in _MISSING:
                raise MissingObject(name) from None
            if code == "InvalidRange" or status == 416:  # starts at or past the end
                raise MissingObject(name, f"short read: 0 of {length} bytes at offset {offset}") from None
            raise self._fail(e, name) from None
        except _BOTO as e:
            raise self._fail(e, name) from None
        self._window_keep(name, offset, data)
        if len(data) < length:
            raise MissingObject(name, f"short read: {len(data)} of {length} bytes at offset {offset}")
        return data[:length]

    def _window_hit(self, name: str, offset: int, length: int) -> bytes | None:
        with self._windows_lock:
            if (found := self._windows.get(name)) is None:
                return None
            start, data = found
            if not (start <= offset and offset + length <= start + len(data)):
                return None
            self._windows.move_to_end(name)
        return data[offset - start : offset - start + length]

    def _window_keep(self, name: str, start: int, data: bytes) -> None:
        if len(data) > WINDOW_BYTES:
            return
        with self._windows_lock:
            if (old := self._windows.pop(name, None)) is not None:
                self._window_bytes -= len(old[1])
            self._windows[name] = (start, data)
            self._window_bytes += len(data)
            while self._window_bytes > WINDOW_BYTES:
                _, (_, dropped) = self._windows.popitem(last=False)
                self._window_bytes -= len(dropped)

    def _window_drop(self, name: str) -> None:
        with self._windows_lock:
            if (old := self._windows.pop(name, None)) is not None:
                self._window_bytes -= len(old[1])

    def _put(self, name: str, data: bytes | memoryview, **conditions: str) -> None:
        key = self.where.key(check_name(name))
        self._check_writes()
        self._window_drop(name)
        body = data if isinstance(data, bytes) else memoryview(data).cast("B")  # bytes go out with the headers
        if not conditions and len(body) >= MULTIPART_FROM:
            self._put_parts(key, memoryview(body))
        else:
            self._client.put_object(Bucket=self.where.bucket, Key=key, Body=body, **conditions)

    def _put_parts(self, key: str, view: memoryview) -> None:
        """A large object as a multipart upload whose parts go up at once, PART_SIZE each, slices of the
        caller's buffer: it appears whole at completion or not at all, and a failure aborts the upload."""
        bucket = self.where.bucket
        upload = self._client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        bounds = [(i, min(i + PART_SIZE, len(view))) for i in range(0, len(view), PART_SIZE)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < PART_SIZE // 2:
            bounds[-2:] = [(bounds[-2][0], bounds[-1][1])]  # no runt last part

        def send(n: int) -> dict:
            start, end = bounds[n]
            r = self._client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload, PartNumber=n + 1, Body=view[start:end]
            )
            return {"PartNumber": n + 1, "ETag": r["ETag"]}

        try:
            with ThreadPoolExecutor(min(PARALLEL_PARTS, len(bounds)), thread_name_prefix="s3-part") as pool:
                parts = list(pool.map(send, range(len(bounds))))
            self._client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            except _BOTO:
                pass  # left for the bucket's lifecycle rule; it is never an object
            raise

    def put(self, name: str, data: bytes | memoryview) -> None:
        try:
            self._put(name, data)
        except _BOTO as e:
            raise self._fail(e, name) from None

    def put_exclusive(self, name: str, data: bytes | memoryview) -> None:
        try:
            self._put(name, data, IfNoneMatch="*")
        except botocore.exceptions.ClientError as e:
            code, status = self._code(e)
            if status == 412 or code == "PreconditionFailed":
                raise ObjectExists(name) from None
            raise self._fail(e, name) from None
        except _BOTO as e:
            raise self._fail(e, name) from None

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        check_prefix(prefix)
        self._check_bucket()
        strip = len(self.where.prefix) + 1 if self.where.prefix else 0
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.where.bucket, Prefix=self.where.key(prefix)
        )
        found: list[tuple[str, int]] = []
        try:
            for page in pages:  # gathered first, so a failure mid-listing is one error, before anything is yielded
                for obj in page.get("Contents", ()):
                    name = obj["Key"][strip:]
                    try:
                        check_name(name)  # a probe, a folder marker ("a/") another tool made: not objects
                    except ValueError:
                        continue
                    found.append((name, int(obj["Size"])))
        except _BOTO as e:
            raise self._fail(e, prefix) from None
        return iter(found)

    def delete(self, name: str) -> None:
        key = self.where.key(check_name(name))
        try:
            self._check_writes()
            self._window_drop(name)
            self._client.delete_object(Bucket=self.where.bucket, Key=key)  # a missing key is not an error in S3
        except _BOTO as e:
            raise self._fail(e, name) from None

    def exists(self, name: str) -> bool:
        key = self.where.key(check_name(name))
        self._check_bucket()
        try:
            self._client.head_object(Bucket=self.where.bucket, Key=key)
            return True
        except botocore.exceptions.ClientError as e:
            if self._code(e)[0] in _MISSING:
                return False
            raise self._fail(e, name) from None
        except _BOTO as e:
            raise self._fail(e, name) from None

    def free_space(self) -> int | None:
        return None  # an object store has no disk to fill, as far as a client can tell

    def close(self) -> None:
        self._client.close()
