"""The S3 backend's own behaviour on a real SeaweedFS (the contract every backend shares is tests/store/
test_backends.py): locations, the one-line errors of a first contact, prefixes as separate vaults, the write probe,
and the retrying wrapper around it (faults injected by FaultyBackend between the two, over the real server)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from phonevault.store.backends import open_backend
from phonevault.store.backends import s3 as s3mod
from phonevault.store.backends.faulty import Fail, FaultyBackend
from phonevault.store.backends.memory import MemoryBackend
from phonevault.store.backends.retrying import RETRY_LOG, RetryingBackend
from phonevault.store.backends.s3 import PART_SIZE, PROBE, S3Backend, S3Location, parse_location
from phonevault.store.errors import (
    BucketNotFound,
    MissingObject,
    ObjectExists,
    RepositoryNotFound,
    StorageAccessDenied,
    StorageUnavailable,
    UnsupportedBackend,
)
from tests.seaweed import Seaweed, free_ports


def test_locations() -> None:
    assert parse_location("s3:http://127.0.0.1:8333/bucket/a/b") == S3Location("http://127.0.0.1:8333", "bucket", "a/b")
    assert parse_location("s3:https://s3.example.com/bucket") == S3Location("https://s3.example.com", "bucket", "")
    assert parse_location("S3:http://h:1/bucket/vault/") == S3Location("http://h:1", "bucket", "vault")
    for bad in (
        "s3:bucket/vault",
        "s3://bucket/vault",
        "s3:ftp://h/b",
        "s3:http://h",
        "s3:http://h/",
        "s3:http://h/b/./x",
    ):
        with pytest.raises(UnsupportedBackend):
            open_backend(bad)
    with pytest.raises(UnsupportedBackend, match="query"):
        open_backend("s3:http://h/b/v?x=1")


def test_the_s3_session_loads_botocores_own_s3_model(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """s3_session skips botocore's scan of every service's folder, not anything it loads: the client's model is
    the one a plain botocore session gives, operations, shapes and endpoint rules alike; AWS_DATA_PATH still
    counts."""
    import botocore.session

    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    ours = s3mod.s3_session().create_client("s3", region_name="us-east-1")
    theirs = botocore.session.Session().create_client("s3", region_name="us-east-1")
    assert ours.meta.service_model.operation_names == theirs.meta.service_model.operation_names
    assert ours.meta.service_model.shape_names == theirs.meta.service_model.shape_names
    assert ours.can_paginate("list_objects_v2")
    loader = s3mod.s3_session().get_component("data_loader")
    assert str(tmp_path) in loader.search_paths


def test_prefixes_are_separate_vaults(seaweed: Seaweed) -> None:
    a, b = open_backend(seaweed.location("a")), open_backend(seaweed.location("b"))
    a.put("config", b"a's")
    b.put("config", b"b's")
    assert a.get("config") == b"a's" and b.get("config") == b"b's"
    assert dict(a.list("")) == {"config": 3}
    b.delete("config")
    assert a.exists("config") and not b.exists("config")


def test_the_write_probe_leaves_nothing_behind(seaweed: Seaweed) -> None:
    location = seaweed.location()
    b = open_backend(location)
    b.put_exclusive("keys/k", b"key")
    prefix = parse_location(location).prefix + "/"
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=seaweed.bucket, Prefix=prefix)["Contents"]]
    assert keys == [prefix + "keys/k"]
    assert not any(PROBE in k for k in keys)


def test_a_missing_bucket_is_one_error_and_init_creates_it(seaweed: Seaweed) -> None:
    location = f"s3:{seaweed.endpoint}/no-such-bucket-{os.urandom(3).hex()}/vault"
    b = open_backend(location)
    for call in (
        lambda: b.exists("config"),
        lambda: b.get("config"),
        lambda: list(b.list("")),
        lambda: b.put("x", b""),
    ):
        with pytest.raises(BucketNotFound) as e:
            call()
        assert isinstance(e.value, RepositoryNotFound) and e.value.exit_code == 10
        assert "does not exist" in str(e.value) and "\n" not in str(e.value)
    created = open_backend(location, create=True)
    assert not created.exists("config")
    created.put_exclusive("config", b"c")
    assert open_backend(location).get("config") == b"c"


def test_refused_credentials_are_one_error(seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch) -> None:
    location = seaweed.location()
    open_backend(location).put("config", b"c")
    for var, value, code in (
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret", "SignatureDoesNotMatch"),
        ("AWS_ACCESS_KEY_ID", "nobody", "InvalidAccessKeyId"),
    ):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            b = open_backend(location)
            with pytest.raises(StorageAccessDenied, match=code) as e:
                b.get("config")
            assert "\n" not in str(e.value) and b.retries == 0  # type: ignore[attr-defined]


def test_an_unreachable_endpoint_is_one_error_said_at_once() -> None:
    (port,) = free_ports(1)  # nothing listens there
    b = open_backend(f"s3:http://127.0.0.1:{port}/bucket/vault")
    with pytest.raises(StorageUnavailable) as e:
        b.exists("config")
    assert e.value.errno == errno.ECONNREFUSED and not e.value.transient
    assert "cannot reach" in e.value.strerror
    assert b.retries == 0  # type: ignore[attr-defined]  # a wrong address is not worth 11 s of backoff


class _Waits:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)  # recorded instead of slept: the policy is checked, not the clock


def _retrying(seaweed: Seaweed, rules, **kw) -> tuple[RetryingBackend, S3Backend, _Waits]:
    s3 = S3Backend(seaweed.location())
    waits = _Waits()
    return RetryingBackend(FaultyBackend(s3, rules), sleep=waits, **kw), s3, waits


def test_transient_failures_are_retried_with_bounded_backoff(seaweed: Seaweed) -> None:
    b, s3, waits = _retrying(seaweed, [Fail("put", nth=n, errno=errno.ECONNRESET) for n in (1, 2, 3)])
    b.put("packs/00/p", b"pack")
    assert s3.get("packs/00/p") == b"pack"
    assert b.retries == 3 and len(waits.delays) == 3
    assert all(0.05 * 2**i <= d <= 0.1 * 2**i for i, d in enumerate(waits.delays))  # doubling, with jitter in [0.5, 1]

    b, s3, waits = _retrying(seaweed, [Fail("get", errno=errno.ETIMEDOUT)], attempts=5, max_delay=0.3)
    s3.put("config", b"c")
    with pytest.raises(OSError) as e:
        b.get("config")
    assert e.value.errno == errno.ETIMEDOUT
    assert b.retries == 4 and max(waits.delays) <= 0.3  # gave up after 5 tries, each wait capped


def test_what_is_not_transient_is_raised_at_once(seaweed: Seaweed) -> None:
    b, s3, waits = _retrying(seaweed, [Fail("put", errno=errno.EIO)])
    with pytest.raises(OSError):
        b.put("packs/00/p", b"x")
    with pytest.raises(MissingObject):
        b.get("nothing")
    s3.put_exclusive("events/d/0000000001", b"theirs")
    with pytest.raises(ObjectExists):
        b.put_exclusive("events/d/0000000001", b"mine")
    assert b.retries == 0 and waits.delays == []


def test_a_put_exclusive_whose_answer_was_lost_is_a_success(seaweed: Seaweed) -> None:
    """The conditional PUT reached the server, then the connection broke: the retry meets 412 for its own object.
    Its bytes are the caller's, so it created it; a commit must not be reported as lost to another writer."""
    b, s3, _ = _retrying(seaweed, [Fail("put_exclusive", nth=1, errno=errno.ECONNRESET, after=True)])
    b.put_exclusive("events/d/0000000001", b"sealed segment, random nonce")
    assert s3.get("events/d/0000000001") == b"sealed segment, random nonce" and b.retries == 1

    # Another writer won meanwhile (its bytes differ): still ObjectExists after the retry.
    b, s3, _ = _retrying(seaweed, [Fail("put_exclusive", nth=1, errno=errno.ECONNRESET)])
    s3.put_exclusive("events/d/0000000002", b"the other writer's segment")
    with pytest.raises(ObjectExists):
        b.put_exclusive("events/d/0000000002", b"this writer's segment")
    assert b.retries == 1


def test_the_retry_log_holds_one_line_per_closed_wrapper(tmp_path, monkeypatch) -> None:
    """PHONEVAULT_RETRY_LOG: closing a wrapper appends its counts, once; without the variable nothing is written.
    (A memory backend behind the faults: the counting does not depend on the server.)"""
    log = tmp_path / "retries.jsonl"
    rules = [Fail("put", nth=n, errno=errno.ECONNRESET) for n in (1, 2)]
    b = RetryingBackend(FaultyBackend(MemoryBackend(), rules), sleep=_Waits())
    b.put("packs/00/p", b"pack")
    assert b.get("packs/00/p") == b"pack" and not b.exists("config")
    b.close()
    assert not log.exists()

    monkeypatch.setenv(RETRY_LOG, str(log))
    b = RetryingBackend(FaultyBackend(MemoryBackend(), rules), sleep=_Waits())
    b.put("packs/00/p", b"pack")
    b.get("packs/00/p")
    with pytest.raises(MissingObject):
        b.get("config")
    b.close()
    b.close()
    (line,) = log.read_text().splitlines()
    assert json.loads(line) == {"pid": os.getpid(), "location": "memory:", "calls": 3, "retries": 2}


def test_a_large_object_goes_up_in_parts_and_reads_back_whole(seaweed: Seaweed, monkeypatch) -> None:
    """An object of MULTIPART_FROM or more is a multipart upload (parts of the caller's buffer sent at once): the
    same bytes come back, whole and across part boundaries, and no upload is left open. (The threshold is lowered
    to 16 MiB here so the test stays small: a real one is above any pack.)"""
    monkeypatch.setattr(s3mod, "MULTIPART_FROM", 16 << 20)
    data = bytearray(os.urandom(1 << 20) * 17 + b"tail")
    b = open_backend(seaweed.location())
    b.put("packs/ab/big", memoryview(data))
    assert b.get("packs/ab/big") == data
    for offset in (0, PART_SIZE - 3, 2 * PART_SIZE - 1, len(data) - 10):
        assert b.get_range("packs/ab/big", offset, 10) == data[offset : offset + 10]
    assert dict(b.list("packs/")) == {"packs/ab/big": len(data)}
    assert seaweed.client().list_multipart_uploads(Bucket=seaweed.bucket).get("Uploads", []) == []
