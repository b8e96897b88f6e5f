"""The device path: a backup over usbmux/lockdown/MobileBackup2 from the emulator, phonevault against pymobiledevice3.

`phonevault emulator serve --port P --data DIR --size S` runs as a background process (it writes the synthetic
phone's folder, then prints its address); both clients reach it with `USBMUXD_SOCKET_ADDRESS=127.0.0.1:P` and an
empty HOME of their own, so pairing starts fresh for each. Measured: `phonevault backup` into a new vault, and
`pymobiledevice3 backup2 backup --full DIR` into a plain folder — wall time, MB/s of the phone's backup size, peak
RSS and CPU of the client process (the emulator's own cost is not counted; it is the phone).

Verified: the pymobiledevice3 folder, and a `phonevault export` of the new snapshot, equal the phone's folder file
for file by hash, except Info.plist, which the host writes itself.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dataset import compare, folder_digest
from measure import Measurement, StepFailed, timed, tree_bytes
from tools import VENV_BIN, Phonevault, base_env

START_TIMEOUT = 1800.0


@dataclass(slots=True)
class Emulator:
    process: subprocess.Popen[str]
    address: str
    udid: str
    folder: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(data: Path, size: str, log: Path, many_files: int = 0) -> Emulator:
    """Start `phonevault emulator serve` and wait (with a deadline) for the line announcing its address."""
    port = free_port()
    argv = [str(VENV_BIN / "phonevault"), "emulator", "serve", "--port", str(port), "--data", str(data), "--size", size]
    argv += ["--many-files", str(many_files)] if many_files else []
    env = base_env(data.parent / "emulator-home")
    with open(log, "a") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    fields = announced(proc, log)
    udid = fields["udid"]
    return Emulator(proc, fields["USBMUXD_SOCKET_ADDRESS"], udid, data / "device" / udid)


def announced(proc: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> dict[str, str]:
    """The key=value fields of the line in which an emulator announces its address, waited for `timeout` s."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise StepFailed(f"emulator exited ({proc.wait()}) before printing its address (see {log})")
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "USBMUXD_SOCKET_ADDRESS" in fields:
            return fields
    proc.kill()
    raise StepFailed(f"emulator did not announce its address within {timeout:.0f} s")


def stop_emulator(emu: Emulator) -> None:
    emu.process.send_signal(signal.SIGINT)
    try:
        emu.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        emu.process.kill()
        emu.process.wait()


def without_info(digest: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in digest.items() if k != "Info.plist"}


def bench_device(work: Path, size: str, log: Path, many_files: int = 0) -> dict:
    """Both clients against one emulator (of a phone with `many_files` small plists, if given); returns
    {'phone_bytes', 'phone_files', 'phonevault': m, 'pymobiledevice3': m}."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    emu = start_emulator(work / "emulator", size, log, many_files)
    try:
        phone_bytes = tree_bytes(emu.folder)
        expected = without_info(folder_digest(emu.folder))
        out: dict = {"phone_bytes": phone_bytes, "phone_files": len(expected), "udid": emu.udid}
        for name, run in (("phonevault", _phonevault), ("pymobiledevice3", _pmd3)):
            try:
                out[name] = run(work / name, emu, phone_bytes, expected, log).to_json()
            except StepFailed as e:
                out[name] = {"error": str(e)}
        return out
    finally:
        stop_emulator(emu)


def _phonevault(work: Path, emu: Emulator, nbytes: int, expected: dict[str, str], log: Path) -> Measurement:
    pv = Phonevault(work / "repo", work)
    env = pv.env | {"USBMUXD_SOCKET_ADDRESS": emu.address}
    subprocess.run(pv.init().argv, env=env, check=True, capture_output=True)
    m = timed("device backup", [str(VENV_BIN / "phonevault"), "backup"], env=env, nbytes=nbytes, log=log)
    export = work / "export"
    subprocess.run(pv.restore(export).argv, env=env, check=True, capture_output=True)
    _verify(m, expected, export / emu.udid)
    m.extra["repo_bytes"] = tree_bytes(work / "repo")
    shutil.rmtree(work)
    return m


def _pmd3(work: Path, emu: Emulator, nbytes: int, expected: dict[str, str], log: Path) -> Measurement:
    env = base_env(work / "home") | {"USBMUXD_SOCKET_ADDRESS": emu.address}
    target = work / "backup"
    target.mkdir(parents=True)
    argv = [str(VENV_BIN / "pymobiledevice3"), "backup2", "backup", "--full", str(target)]
    m = timed("device backup", argv, env=env, nbytes=nbytes, log=log)
    _verify(m, expected, target / emu.udid)
    shutil.rmtree(work)
    return m


def _verify(m: Measurement, expected: dict[str, str], folder: Path) -> None:
    problem = compare(expected, without_info(folder_digest(folder))) if folder.is_dir() else f"no {folder}"
    m.ok, m.note = not problem, problem
