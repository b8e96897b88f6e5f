"""Damage is contained, as a user meets it: the real `phonevault` command on a real vault whose files are flipped,
truncated or deleted in tmp_path.

`check` names the lost files by the phone's names; `export`/`extract`/`restore` of a damaged snapshot write all
that is intact, name the rest and exit 3, or with `--strict` leave nothing behind; the emulator refuses a restore
missing a file, which is said in one line; `check --repair-index` brings back a lost index object; a damaged event
segment hides nothing after it. The DeviceLink answer to a file the vault cannot give is checked on the wire.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from pathlib import Path

import pytest
from pymobiledevice3.service_connection import ServiceConnection

from phonevault.store.backends.local import LocalBackend
from phonevault.store.packs import pack_name
from phonevault.store.records import DeviceRecord
from phonevault.store.repository import Repository
from phonevault.store.trees import load_tree, read_root
from phonevault.store.writer import SnapshotWriter
from phonevault.sync.devicelink import VaultDeviceLink
from phonevault.sync.emulator import Emulator
from phonevault.sync.emulator.devicelink import DeviceLink
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.emulator.wire import Link
from phonevault.sync.export import export_snapshot
from phonevault.sync.writeout import FileWriters
from tests.conftest import PASSWORD, js
from tests.sync.test_mobilesync import tree_digest


def no_traceback(r, code: int) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr


def open_vault(cli_env, tmp_path) -> Repository:
    """The CLI's vault, opened in this process (its own cache) to find where a file's bytes lie."""
    return Repository.open(LocalBackend(Path(cli_env["PHONEVAULT_REPO"])), PASSWORD, cache_root=tmp_path / "probe")


def flip_file_bytes(cli_env, tmp_path, backup_path: str) -> None:
    """Flip one byte inside the first chunk of a file of the vault's latest snapshot, where it lies in its pack."""
    with open_vault(cli_env, tmp_path) as repo:
        view = repo.devices()[0]
        chunk = load_tree(view.head_record.tree, repo.get_blob)[backup_path].chunks[0]
        loc = repo.locate(chunk)
        path = Path(cli_env["PHONEVAULT_REPO"]) / pack_name(loc.pack)
    raw = bytearray(path.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def phone():
    return SyntheticPhone(seed=21, size=4 << 20)


def a_photo(pv) -> dict:
    items = js(pv("ls", "latest", "CameraRollDomain/Media/DCIM/100APPLE", "--json"))
    return next(x for x in items if x["type"] == "file" and x["size"] > 0)


def test_one_damaged_photo_costs_that_photo_and_nothing_else(pv, phone, cli_env, tmp_path):
    dev = phone.write_backup(tmp_path / "src", day=0)
    pv("init", check=True)
    pv("import", str(dev), check=True)
    photo = a_photo(pv)
    stored = f"{photo['file_id'][:2]}/{photo['file_id']}"
    flip_file_bytes(cli_env, tmp_path, stored)

    r = pv("check", "--read-data")
    no_traceback(r, 1)
    assert photo["path"] in r.stderr and "damaged: snapshot" in r.stderr
    doc = json.loads(pv("check", "--read-data", "--json").stdout)
    snap = js(pv("snapshots", "--json"))[0]
    assert doc["damaged"] == [{"snapshot": snap["id"], "device": phone.udid, "paths": [photo["path"]]}]
    assert doc["ok"] is False and doc["repaired"] == []
    # without --read-data a flipped byte is not seen (the blob is where the index says): nothing is named
    assert json.loads(pv("check", "--json").stdout)["damaged"] == []

    # export: everything else, bit for bit; the photo named; exit 3
    r = pv("export", "latest", "--to", str(tmp_path / "out"))
    no_traceback(r, 3)
    assert photo["path"] in r.stderr and "not exported" in r.stderr
    expected = {k: v for k, v in tree_digest(dev).items() if k != stored}
    assert tree_digest(tmp_path / "out" / phone.udid) == expected
    # --strict: nothing at all, not even the folder it would have made
    r = pv("export", "latest", "--to", str(tmp_path / "strict-out"), "--strict")
    no_traceback(r, 1)
    assert photo["path"] in r.stderr and "with --strict nothing was exported" in r.stderr
    assert not (tmp_path / "strict-out").exists()

    # extract: the folder's other files; the photo named; exit 3
    folder = photo["path"].rsplit("/", 1)[0]
    r = pv("extract", "latest", folder, "--to", str(tmp_path / "ex"))
    no_traceback(r, 3)
    assert photo["path"] in r.stderr
    got = {p.relative_to(tmp_path / "ex").as_posix() for p in (tmp_path / "ex").rglob("*") if p.is_file()}
    listed = {x["path"] for x in js(pv("ls", "latest", folder, "--json")) if x["type"] == "file"}
    assert got == listed - {photo["path"]} and got
    r = pv("extract", "latest", folder, "--to", str(tmp_path / "ex-strict"), "--strict")
    no_traceback(r, 1)
    assert photo["path"] in r.stderr and "with --strict nothing was extracted" in r.stderr
    assert not any(p.is_file() for p in (tmp_path / "ex-strict").rglob("*"))


def test_a_deleted_pack_is_named_file_by_file_and_export_keeps_the_rest(pv, phone, cli_env, tmp_path):
    dev = phone.write_backup(tmp_path / "src", day=0)
    pv("init", check=True)
    pv("import", str(dev), check=True)
    photo = a_photo(pv)
    stored = f"{photo['file_id'][:2]}/{photo['file_id']}"
    with open_vault(cli_env, tmp_path) as repo:
        tree = load_tree(repo.devices()[0].head_record.tree, repo.get_blob)
        pack = repo.locate(tree[stored].chunks[0]).pack
        lost = {p for p, e in tree.items() if any(repo.locate(c).pack == pack for c in e.chunks)}
    (Path(cli_env["PHONEVAULT_REPO"]) / pack_name(pack)).unlink()
    doc = json.loads(pv("check", "--json").stdout)
    assert len(doc["damaged"]) == 1 and photo["path"] in doc["damaged"][0]["paths"]
    assert len(doc["damaged"][0]["paths"]) == len(lost)
    r = pv("export", "latest", "--to", str(tmp_path / "out"))
    no_traceback(r, 3)
    assert set(tree_digest(tmp_path / "out" / phone.udid)) >= set(tree_digest(dev)) - lost - {
        p.rsplit("/", 1)[0] for p in lost
    }
    for p in lost:
        assert not (tmp_path / "out" / phone.udid / p).exists()


def test_a_damaged_tree_node_costs_no_file_while_the_deltas_fold(pv, phone, cli_env, tmp_path):
    dev = phone.write_backup(tmp_path / "src", day=0)
    pv("init", check=True)
    pv("import", str(dev), check=True)
    photo = a_photo(pv)
    with open_vault(cli_env, tmp_path) as repo:
        root = repo.devices()[0].head_record.tree
        node = next(r.node for r in read_root(root, repo.get_blob) if r.shard == photo["file_id"][:2])
        loc = repo.locate(node)
    pack = Path(cli_env["PHONEVAULT_REPO"]) / pack_name(loc.pack)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 1
    pack.write_bytes(bytes(raw))
    doc = json.loads(pv("check", "--json").stdout)
    assert not doc["ok"] and doc["damaged"] == [] and any(node.hex()[:16] in e for e in doc["errors"])
    pv("export", "latest", "--to", str(tmp_path / "out"), check=True)
    assert tree_digest(tmp_path / "out" / phone.udid) == tree_digest(dev)
    pv("extract", "latest", photo["path"], "--to", str(tmp_path / "ex"), check=True)
    assert (tmp_path / "ex" / photo["path"]).read_bytes() == (
        dev / photo["file_id"][:2] / photo["file_id"]
    ).read_bytes()


def test_repair_index_brings_back_a_lost_index_object(pv, phone, cli_env, tmp_path):
    dev = phone.write_backup(tmp_path / "src", day=0)
    pv("init", check=True)
    pv("import", str(dev), check=True)
    index = sorted((Path(cli_env["PHONEVAULT_REPO"]) / "index").iterdir())[0]
    index.unlink()
    fresh = dict(cli_env, PHONEVAULT_CACHE_DIR=str(tmp_path / "cache2"))
    r = pv("check", env=fresh)
    no_traceback(r, 1)
    assert "--repair-index" in r.stderr
    r = pv("check", "--repair-index", "--read-data", "--json", env=fresh)
    doc = js(r)
    assert doc["repaired"] == [{"index": f"index/{index.name}", "reason": "missing"}] and doc["ok"]
    assert index.exists()
    pv("export", "latest", "--to", str(tmp_path / "out"), env=fresh, check=True)
    assert tree_digest(tmp_path / "out" / phone.udid) == tree_digest(dev)
    assert js(pv("check", "--repair-index", "--json", env=fresh))["repaired"] == []


def test_a_damaged_event_segment_hides_nothing_after_it(pv, phone, cli_env, tmp_path):
    dev = phone.write_backup(tmp_path / "src", day=0)
    pv("init", check=True)
    pv("import", str(dev), check=True)
    first = js(pv("snapshots", "--json"))[0]["id"]
    pv("tag", first[:8], "kept", check=True)  # segment 1
    phone.write_backup(tmp_path / "src", day=1)
    pv("import", str(dev), check=True)  # segment 2
    pv("tag", first[:8], "after", check=True)  # segment 3
    (segment,) = (Path(cli_env["PHONEVAULT_REPO"]) / "events").rglob("0000000001")
    segment.write_bytes(segment.read_bytes()[:-7])  # truncated
    fresh = dict(cli_env, PHONEVAULT_CACHE_DIR=str(tmp_path / "cache2"))
    r = pv("snapshots", "--json", env=fresh)
    no_traceback(r, 1)  # damage met while reading: said, and not an ok exit
    assert "0000000001" in r.stderr
    snaps = json.loads(r.stdout)
    assert len(snaps) == 2 and snaps[1]["current"]  # the import after the damage is there
    assert snaps[0]["tags"] == ["after"]  # the tag after the damage too; the damaged one's is lost
    r = pv("check", env=fresh)
    no_traceback(r, 1)
    assert "0000000001" in r.stderr


# --- restore ------------------------------------------------------------------------------------------------


@pytest.fixture
def emu(tmp_path: Path):
    with Emulator(tmp_path / "emulator", seed=5, size=4 << 20) as e:
        yield e


def test_restore_of_a_damaged_snapshot_is_refused_by_the_emulator_in_one_line(pv, cli_env, emu, tmp_path):
    env = dict(cli_env, USBMUXD_SOCKET_ADDRESS=emu.address)
    pv("init", check=True)
    pv("backup", env=env, check=True)
    photo = a_photo(pv)
    flip_file_bytes(cli_env, tmp_path, f"{photo['file_id'][:2]}/{photo['file_id']}")
    emu.set_day(1)  # the phone moves on; a restore that happened would bring day 0 back
    before = tree_digest(emu.device_dir)

    r = pv("restore", "latest", "--yes", env=env)
    no_traceback(r, 1)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("phonevault:")]
    assert len(lines) == 1 and "refused to restore" in lines[0] and "1 damaged file" in lines[0]
    assert photo["path"] in r.stderr
    assert tree_digest(emu.device_dir) == before

    r = pv("restore", "latest", "--strict", "--yes", env=env)
    no_traceback(r, 1)
    assert photo["path"] in r.stderr and "with --strict nothing was restored" in r.stderr
    assert tree_digest(emu.device_dir) == before
    assert js(pv("devices", "--json"))[0]["snapshots"] == 1


UDID = "00008030-000A1B2C3D4E5F60"


def test_a_file_the_vault_cannot_give_is_a_file_error_on_the_wire_and_the_next_file_still_arrives(repo, tmp_path):
    """DeviceLink as the device sees it (the emulator's framing over a socket pair): the damaged file, failing
    after some of its frames went out, ends in a file error the device drops; the next file arrives intact."""
    db = b"SQLite format 3\x00" + bytes(range(256)) * 800  # small chunks: the damage lands after the first frames
    good = b"intact" * 5000
    with SnapshotWriter(repo, UDID, DeviceRecord("p"), incremental=False) as w:
        for path, data in (("ab/damaged", db), ("cd/good", good)):
            fw = w.open_file(path)
            fw.write(data)
            fw.close()
        snap = w.commit("test")
    state = load_tree(snap.tree, repo.get_blob)
    assert len(state["ab/damaged"].chunks) > 3
    loc = repo.locate(state["ab/damaged"].chunks[3])
    pack = Path(repo.backend.location) / pack_name(loc.pack)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + 20] ^= 1
    pack.write_bytes(bytes(raw))

    host_sock, device_sock = socket.socketpair()
    got: dict = {}

    def device() -> None:
        dl = DeviceLink(Link(device_sock, "device"))
        try:
            dl.version_exchange()
            paths = [f"{UDID}/ab/damaged", f"{UDID}/cd/good"]
            got["errors"] = dl.download_files(paths, lambda p: tmp_path / "dev" / p.rsplit("/", 1)[1], 0.0)
            dl.finish(0)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            got["device_error"] = e
        finally:
            device_sock.close()

    async def host() -> VaultDeviceLink:
        service = await ServiceConnection.from_socket(host_sock)
        try:
            link = VaultDeviceLink(service, repo, UDID, snapshot_state=state)
            await link.version_exchange()
            await link.dl_loop(lambda _p: None)
            return link
        finally:
            await service.close()

    thread = threading.Thread(target=device, daemon=True)
    thread.start()
    link = asyncio.run(host())
    thread.join(30)
    assert "device_error" not in got
    assert set(got["errors"]) == {f"{UDID}/ab/damaged"} and "Input/output error" in got["errors"][f"{UDID}/ab/damaged"]
    assert not (tmp_path / "dev" / "damaged").exists()
    assert (tmp_path / "dev" / "good").read_bytes() == good
    assert set(link.unreadable) == {"ab/damaged"} and "corrupt object" in link.unreadable["ab/damaged"]
    assert link.bytes_sent > len(good)  # the first chunks of the damaged file did go out before the error


def test_a_large_file_failing_midway_leaves_no_half_file_in_the_export(repo, tmp_path):
    """Files above FileWriters.SMALL are written a chunk at a time: one whose third chunk is damaged is removed
    again, named, and the export goes on."""
    big, small = os.urandom(FileWriters.SMALL + (6 << 20)), b"small" * 100
    with SnapshotWriter(repo, UDID, DeviceRecord("p"), incremental=False) as w:
        for path, data in (("ab/big", big), ("cd/small", small)):
            fw = w.open_file(path)
            fw.write(data)
            fw.close()
        snap = w.commit("test")
    chunks = load_tree(snap.tree, repo.get_blob)["ab/big"].chunks
    assert len(chunks) > 3
    loc = repo.locate(chunks[2])
    pack = Path(repo.backend.location) / pack_name(loc.pack)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + 100] ^= 1
    pack.write_bytes(bytes(raw))
    view = repo.view(snap.device_key, refresh=True)
    result = export_snapshot(repo, view, snap, tmp_path / "out")
    assert len(result.damaged) == 1 and result.damaged[0].startswith("ab/big: not exported")
    assert not (tmp_path / "out" / UDID / "ab" / "big").exists()
    assert (tmp_path / "out" / UDID / "cd" / "small").read_bytes() == small
    assert result.files == 1
