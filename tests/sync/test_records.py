"""Typed records in the event log: encode -> decode is the identity, maps written before records were typed read
into the same classes, and a record from a newer format is refused rather than silently cut."""

from __future__ import annotations

from dataclasses import asdict, fields

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonevault.store.errors import CorruptObject, UnsupportedFormat
from phonevault.store.events import DeviceSeen, SnapshotCommitted, decode_events, encode_events
from phonevault.store.records import DeviceRecord, SnapshotStats, decode_record, encode_record, unpack_record
from phonevault.sync.plists import DeviceInfo
from phonevault.sync.records import BackupMeta

counts = st.integers(0, 2**63 - 1)
texts = st.none() | st.text(max_size=40)
stats = st.builds(SnapshotStats, *[counts] * len(fields(SnapshotStats)))
metas = st.builds(
    BackupMeta, st.booleans(), texts, texts, texts, st.none() | st.booleans(), st.none() | st.booleans(), counts
)
infos = st.builds(DeviceInfo, st.text(max_size=40), *[texts] * (len(fields(DeviceInfo)) - 1))


@given(st.one_of(stats, metas, infos))
def test_a_record_decodes_to_itself(record):
    assert decode_record(type(record), encode_record(record), "test") == record


@given(st.one_of(stats, metas, infos))
def test_a_map_from_before_typed_records_reads_as_the_same_record(record):
    as_map = {k: v for k, v in asdict(record).items() if v is not None}  # the old writers left out None fields
    assert decode_record(type(record), msgpack.packb(as_map), "test") == record


@given(stats, st.text(max_size=30), infos, st.binary(max_size=64))
def test_events_carry_records_through_a_segment(stat, name, info, meta):
    events = [
        DeviceSeen("udid", DeviceRecord(name, encode_record(info)), 1),
        SnapshotCommitted(b"s" * 16, 2, "folder:/x", None, (b"d" * 32,), b"t" * 32, ("p",), stat, meta),
    ]
    assert decode_events(encode_events(events), "events/x/0000000000") == events


def test_a_segment_written_with_maps_reads_as_records():
    legacy = msgpack.packb(
        [1, [["DeviceSeen", ["udid", {"udid": "udid", "name": "Ada’s iPhone", "imei": "35"}, 1]],
             ["SnapshotCommitted", [b"s" * 16, 2, "folder:/x", None, [], b"t" * 32, [], {"files": 3, "size": 9},
                                    {"encrypted": True, "ios_version": "17.4"}]]]]
    )  # fmt: skip
    seen, committed = decode_events(legacy, "events/x/0000000000")
    assert seen.info.name == "Ada’s iPhone"
    assert decode_record(DeviceInfo, seen.info.data, "x") == DeviceInfo("udid", name="Ada’s iPhone", imei="35")
    assert committed.stats == SnapshotStats(files=3, size=9)
    assert decode_record(BackupMeta, committed.meta, "x") == BackupMeta(encrypted=True, ios_version="17.4")


def test_a_newer_or_malformed_record_is_refused():
    with pytest.raises(UnsupportedFormat):
        unpack_record(SnapshotStats, [SnapshotStats.FORMAT + 1, 1, 2], "x")
    with pytest.raises(CorruptObject):
        unpack_record(SnapshotStats, [1, *range(len(fields(SnapshotStats)) + 1)], "x")
    with pytest.raises(CorruptObject):
        unpack_record(SnapshotStats, "not a record", "x")
    with pytest.raises(CorruptObject):
        decode_record(BackupMeta, b"\xc1", "x")
