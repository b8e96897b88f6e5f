"""The staged content of a snapshot: path -> FileEntry, and the rules every staged path obeys.

Safe paths (`check_path`, for every caller: a folder walk, a device, a test): "/"-separated and relative — not
empty, not absolute, no empty, `.` or `..` component, no NUL — at most MAX_PATH_BYTES bytes of UTF-8, at most
MAX_NAME_BYTES per name and MAX_DEPTH components, so that every snapshot can be exported to a real file system.
Anything else raises UnsafePath before it is staged.

Cost: no edit scans the whole tree. A folder import only sets entries (O(1) each). The first folder-level operation
(a move, copy, remove, count or listing) builds a folder index in O(entries); from then on a move, copy or remove
costs O(entries it touches × depth), a listing O(its children), `drop_nonempty_dirs` O(entries).
Memory: the state (~200 bytes per entry, held by the caller anyway) plus, once built, the index: one set per
folder with children, holding the children's path strings (shared with the state's keys), ~40 bytes per entry. A
folder import holds one shard of it at a time (the writer's `seal_shard`); a device backup, whose order is the
device's, uses store/spilled.py's SpillingTree, which keeps a bounded StagedTree in memory and spills the rest sealed.
"""

from __future__ import annotations

from dataclasses import replace

from .errors import UnsafePath
from .trees import FileEntry, shard_of

MAX_NAME_BYTES = 255  # NAME_MAX of every file system an export may land on
MAX_PATH_BYTES = 1024  # PATH_MAX on macOS; a MobileSync path is ~60 bytes
MAX_DEPTH = 64  # a MobileSync folder is 3 deep
STAGED = "the staged snapshot"


def check_path(path: str) -> None:
    """Raise UnsafePath unless `path` is a safe "/"-separated path relative to the snapshot's root."""
    if not isinstance(path, str) or not path:
        raise UnsafePath(repr(path), STAGED, "it is empty")
    if "\x00" in path:
        raise UnsafePath(path, STAGED, "it contains NUL")
    if path[0] == "/":
        raise UnsafePath(path, STAGED, "it is absolute")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise UnsafePath(path[:200], STAGED, f"it is {len(parts)} levels deep (limit {MAX_DEPTH})")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(path, STAGED, "it has an empty, '.' or '..' component")
        # A character is at most 4 UTF-8 bytes: encode only names that may be too long.
        if len(part) * 4 > MAX_NAME_BYTES and len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise UnsafePath(path[:200], STAGED, f"a name in it is longer than {MAX_NAME_BYTES} bytes")
    if len(path) * 4 > MAX_PATH_BYTES and len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise UnsafePath(path[:200], STAGED, f"it is longer than {MAX_PATH_BYTES} bytes")


class StagedTree:
    """The content of a snapshot being staged: `state` (path -> FileEntry), and a folder index built on first need.

    Folders are implicit (any prefix of a path) or explicit (a FileEntry with a directory mode, e.g. an empty
    folder). The index maps each folder with children to the set of its children's paths ("" is the root), so a
    subtree is walked in O(its size) and a listing costs O(its children). It is built only when a folder-level
    operation first needs it (a folder import never does) and kept up to date from then on.
    """

    def __init__(self, state: dict[str, FileEntry] | None = None) -> None:
        self.state: dict[str, FileEntry] = state if state is not None else {}
        self._kids: dict[str, set[str]] | None = None

    def __len__(self) -> int:
        return len(self.state)

    def get(self, path: str) -> FileEntry | None:
        return self.state.get(path)

    # --- the folder index -------------------------------------------------------------------------------------
    def _index(self) -> dict[str, set[str]]:
        if self._kids is None:
            self._kids = {"": set()}
            for path in self.state:
                self._link(path)
        return self._kids

    def _link(self, path: str) -> None:
        kids = self._kids
        while True:
            parent = path.rpartition("/")[0]
            siblings = kids.get(parent)
            if siblings is not None:
                siblings.add(path)
                return
            kids[parent] = {path}
            path = parent  # a folder that had no children: make sure it hangs from its own parent

    def _unlink(self, path: str) -> None:
        """Detach `path` (which has no children left) from its parent, and parents left empty and implicit."""
        kids = self._kids
        while path:
            parent = path.rpartition("/")[0]
            siblings = kids.get(parent)
            if siblings is None:
                return
            siblings.discard(path)
            if siblings or not parent:
                return
            del kids[parent]
            if parent in self.state:
                return  # an explicit folder stays, empty
            path = parent

    def _nodes(self, path: str) -> list[str]:
        """`path` and every path below it (entries and implicit folders); O(the subtree)."""
        kids = self._index()
        out, stack = [], [path]
        while stack:
            p = stack.pop()
            out.append(p)
            stack.extend(kids.get(p, ()))
        return out

    # --- reads ------------------------------------------------------------------------------------------------
    def count(self, path: str, stop_at: int) -> int:
        """How many entries lie at or under `path` ("" is everything), counting no further than `stop_at`."""
        kids = self._index()
        n, stack = 0, [path]
        while stack and n < stop_at:
            p = stack.pop()
            n += p in self.state
            stack.extend(kids.get(p, ()))
        return min(n, stop_at)

    def children(self, path: str) -> list[tuple[str, FileEntry | None, bool]]:
        """(name, entry or None for an implicit folder, whether it has children) of each child of `path`."""
        kids = self._index()
        cut = len(path) + 1 if path else 0
        return [(c[cut:], self.state.get(c), bool(kids.get(c))) for c in sorted(kids.get(path, ()))]

    def take_shard(self, shard: str) -> list[FileEntry]:
        """Remove and return the entries of one shard (store/trees.py `shard_of`). O(entries staged)."""
        out = [e for p, e in self.state.items() if shard_of(p) == shard]
        for e in out:
            del self.state[e.path]
        if out:
            self._kids = None  # rebuilt on next need
        return out

    def take_all(self) -> dict[str, FileEntry]:
        """Remove and return every entry."""
        state, self.state, self._kids = self.state, {}, None
        return state

    # --- edits ------------------------------------------------------------------------------------------------
    def set(self, entry: FileEntry) -> None:
        if entry.path not in self.state:
            check_path(entry.path)
        self._put(entry)

    def set_checked(self, entry: FileEntry) -> None:
        """`set` for an entry whose path was checked before (a parent's shard, store/writer.py `put_parent_shard`)."""
        self._put(entry)

    def _put(self, entry: FileEntry) -> None:
        """`set` for a path already checked."""
        if self._kids is not None and entry.path not in self.state:
            self._link(entry.path)
        self.state[entry.path] = entry

    def remove(self, path: str) -> int:
        """Remove a path and everything under it ("" is everything); returns how many entries went."""
        if not path:
            n = len(self.state)
            self.state.clear()
            self._kids = None
            return n
        kids = self._index()
        n = 0
        for p in self._nodes(path):
            kids.pop(p, None)
            n += self.state.pop(p, None) is not None
        self._unlink(path)
        return n

    def check_relocation(self, src: str, dst: str, what: str) -> None:
        """Raise UnsafePath unless a subtree may be `what` ("copied", "moved") from `src` to `dst`."""
        for p in (src, dst):
            if not p:
                raise UnsafePath(p, STAGED, f"the backup folder itself cannot be {what}")
            check_path(p)
        if dst.startswith(src + "/"):
            raise UnsafePath(dst, src, f"a folder cannot be {what} into itself")

    def _relocated(self, src: str, dst: str, what: str) -> list[FileEntry]:
        """The entries at or under `src`, re-rooted at `dst`; every new path checked before anything changes."""
        self.check_relocation(src, dst, what)
        cut = len(src)
        out = [
            replace(e, path=dst + e.path[cut:])  # every field kept (a cipher_key too)
            for p in self._nodes(src)
            if (e := self.state.get(p)) is not None
        ]
        for e in out:
            if len(e.path) != len(dst) and e.path not in self.state:  # dst itself was checked above
                check_path(e.path)
        return out

    def move(self, src: str, dst: str) -> int:
        """Move a path (or a subtree) to `dst`, replacing what was there; returns how many entries moved."""
        if src == dst:
            return self.count(src, len(self.state))
        moved = self._relocated(src, dst, "moved")
        if not moved:
            return 0
        self.remove(src)
        self.remove(dst)
        for e in moved:
            self._put(e)
        return len(moved)

    def copy(self, src: str, dst: str) -> int:
        """Copy a path (or a subtree) to `dst`, merging into what is there; the chunks are shared, nothing is
        re-read. Returns how many entries were copied."""
        if src == dst:
            raise UnsafePath(dst, src, "a path cannot be copied onto itself")
        copied = self._relocated(src, dst, "copied")
        for e in copied:
            self._put(e)
        return len(copied)

    def drop_nonempty_dirs(self) -> None:
        """Keep directory entries only where nothing lies under them: a folder on disk records no others, so a
        device backup and an import of the same folder stage the same tree. O(entries)."""
        kids = self._index()
        for p in [p for p, e in self.state.items() if e.is_dir and kids.get(p)]:
            del self.state[p]  # it stays in the index as an implicit folder: it has children

    def drop_nonempty_dirs_under(self, path: str) -> None:
        """`drop_nonempty_dirs` for `path` and what lies below it only. O(that subtree)."""
        kids = self._index()
        for p in self._nodes(path):
            e = self.state.get(p)
            if e is not None and e.is_dir and kids.get(p):
                del self.state[p]

    def by_shard(self) -> dict[str, list[FileEntry]]:
        """Take every entry, grouped by shard (`pop(shard, [])` each, `keys()` the shards): the commit's rest."""
        rest: dict[str, list[FileEntry]] = {}
        for entry in self.take_all().values():
            rest.setdefault(shard_of(entry.path), []).append(entry)
        return rest
