import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonevault.store import keys as keyring
from phonevault.store.backends.local import LocalBackend
from phonevault.store.crypto import MasterKey
from phonevault.store.errors import CorruptObject, RepositoryNotFound, WrongPassword
from phonevault.store.packs import open_blob, seal_blob
from phonevault.store.records import DeviceRecord
from phonevault.store.repository import Repository

KEY = MasterKey(bytes(range(32)))


@given(st.binary(max_size=5000), st.binary(max_size=40))
def test_seal_open_round_trip(data, ad):
    assert KEY.open(KEY.seal(data, ad), ad, "x") == data


@given(st.binary(min_size=1, max_size=2000), st.data())
def test_any_flipped_bit_is_detected(data, draw):
    sealed = bytearray(KEY.seal(data, b"ad"))
    pos = draw.draw(st.integers(0, len(sealed) - 1))
    sealed[pos] ^= 1 << draw.draw(st.integers(0, 7))
    with pytest.raises(CorruptObject):
        KEY.open(bytes(sealed), b"ad", "x")


def test_wrong_associated_data_is_detected():
    with pytest.raises(CorruptObject, match="authentication failed"):
        KEY.open(KEY.seal(b"segment", b"events/a/0000000001"), b"events/a/0000000002", "x")


@given(st.binary(max_size=20000), st.booleans())
def test_blob_round_trip_with_and_without_compression(data, compress):
    bid = KEY.blob_id(data)
    sealed = seal_blob(KEY, bid, data, compress)
    assert open_blob(KEY, bid, sealed, "pack") == data
    if compress and len(data) > 1000 and len(set(data)) == 1:
        assert len(sealed) < len(data)


def test_blob_ids_are_keyed():
    other = MasterKey(bytes(32))
    assert KEY.blob_id(b"photo") != other.blob_id(b"photo")
    assert KEY.blob_id(b"photo") == KEY.blob_id(b"photo")


def test_several_passwords_open_the_same_master(tmp_path):
    backend = LocalBackend(tmp_path / "r")
    master = MasterKey.generate()
    keyring.add_key(backend, master, "one", scrypt_n=2**10)
    second = keyring.add_key(backend, master, "two", scrypt_n=2**10)
    assert keyring.unlock(backend, "one")[1].secret == master.secret
    assert keyring.unlock(backend, "two")[1].secret == master.secret
    with pytest.raises(WrongPassword):
        keyring.unlock(backend, "three")
    keyring.remove_key(backend, second)
    with pytest.raises(WrongPassword):
        keyring.unlock(backend, "two")


def test_open_with_wrong_password_and_missing_repo(repo, tmp_path):
    with pytest.raises(WrongPassword):
        Repository.open(LocalBackend(repo.backend.root), "nope", cache_root=tmp_path / "c")
    with pytest.raises(RepositoryNotFound):
        Repository.open(LocalBackend(tmp_path / "nothing"), "x", cache_root=tmp_path / "c")


def test_no_object_name_leaks_the_udid(repo):
    from phonevault.store.writer import SnapshotWriter

    w = SnapshotWriter(repo, "00008030-001A2B3C4D5E6F70", DeviceRecord("Ada's iPhone"), incremental=False)
    fw = w.open_file("Manifest.db")
    fw.write(b"SQLite format 3\x00" + b"x" * 100)
    fw.close()
    w.commit("test")
    names = [n for n, _ in repo.backend.list("")]
    assert names and not any("00008030" in n or "Ada" in n or "Manifest" in n for n in names)
    raw = b"".join((repo.backend.root / n).read_bytes() for n in names)
    assert b"00008030-001A2B3C4D5E6F70" not in raw and b"Ada's iPhone" not in raw


def test_a_key_file_with_an_unknown_kdf_does_not_lock_out_the_other_passwords(tmp_path):
    """Each password has its own key file and a damaged one must not stop the others from being tried (keys.unlock
    says so). A flipped byte in the "kdf" field of the key file that sorts first is enough today."""
    backend = LocalBackend(tmp_path / "v")
    master = MasterKey.generate()
    ids = {keyring.add_key(backend, master, pw, scrypt_n=2**10): pw for pw in ("first password", "second password")}
    damaged, intact = sorted(ids)
    path = tmp_path / "v" / "keys" / damaged
    path.write_text(path.read_text().replace('"scrypt"', '"scryqt"'))
    key_id, unlocked = keyring.unlock(backend, ids[intact])
    assert key_id == intact and unlocked.secret == master.secret


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: text.replace('"scrypt"', '"scryqt"'),  # one bit in its KDF
        lambda text: text.replace('"wrapped": "', '"wrapped": "!'),  # not base64 any more
        lambda text: text.replace('"n": 1024', '"n": 1000'),  # not a power of two
    ],
)
def test_check_names_the_damaged_key_file_of_another_password(tmp_path, damage):
    """The vault opens with the first password, so nothing else would ever notice that the second one stopped
    working; `phonevault check` (cli/repo_cmds.py) reports keys.damaged_keys, which reads every key file's shape."""
    backend = LocalBackend(tmp_path / "v")
    master = MasterKey.generate()
    first = keyring.add_key(backend, master, "first password", scrypt_n=2**10)
    second = keyring.add_key(backend, master, "second password", scrypt_n=2**10)
    assert keyring.damaged_keys(backend) == []
    path = tmp_path / "v" / "keys" / second
    path.write_text(damage(path.read_text()))
    (line,) = keyring.damaged_keys(backend)
    assert f"keys/{second}" in line and "no longer opens the vault" in line and "\n" not in line
    assert keyring.unlock(backend, "first password")[0] == first
