"""Where a name from a backup may land on this machine: the one check every path leaving the vault goes through.

A phone writes its own Manifest.db (`domain`, `relativePath`) and Info.plist (its UDID), so every such string is
untrusted input. Extract, export, restore and import turn them into local paths only through this module:

- `relative_parts(rel)`: a relative path is `/`-separated components. Refused: an empty path, an absolute one
  (leading `/`, or `\\` and drives on Windows), a component that is empty, `.` or `..`, and NUL anywhere. Nothing
  is normalised away: a path that needs normalising is not one a device writes.
- `safe_component(name)`: exactly one such component (a UDID naming a backup folder); `/` and `\\` are refused on
  every platform, since the name must mean one folder wherever the export is later copied.
- `Target(root).join(rel)`: `root/rel`, refused unless it stays inside root once symbolic links already under
  root are followed: the parent folder must resolve inside root's real path, and an existing final component that
  is a symbolic link must point inside too (writers replace the final component by rename, which never follows it;
  refusing it anyway keeps "resolves outside" a single rule). Resolved parents are memoised per Target, so a
  folder of 60 000 files in 256 shards costs 256 `realpath` calls and one `lstat` per file.
- `Target(root, fresh=True)`: root is an empty folder the caller just made and writes into only regular files and
  folders (an export's working folder): nothing under it can be a symbolic link, so `join` checks the path's text
  and touches the disk no more. The per-file `lstat` cost 3 s of a 12 s export of 60 000 files, and more while the
  writer threads create files in the same folder (a lookup waits for the folder's lock).

Every refusal is `UnsafePath` (one line, the offending string quoted). Names shown to people go through `shown`,
which quotes anything a terminal could interpret.
"""

from __future__ import annotations

import os
from pathlib import Path

from phonevault.store.errors import UnsafePath

_WINDOWS = os.name == "nt"
# Bytes in one folder name made from an outside string (a UDID is 25 to 40): file systems allow 255 (NAME_MAX, NTFS,
# APFS), and the temporary names built from it (export's `.<udid>.phonevault-partial`) need room beside it.
MAX_NAME = 200


def shown(text: str) -> str:
    """`text` as is when it is plain printable text, else its quoted repr (no terminal escapes reach the screen)."""
    return text if text.isprintable() else repr(text)


def unsafe_reason(rel: str, *, component: bool = False) -> str | None:
    """Why `rel` cannot be a relative path (or, with `component`, one path component), or None if it can."""
    if not isinstance(rel, str) or not rel:
        return "the path is empty"
    if "\x00" in rel:
        return "the path contains NUL"
    if component and ("/" in rel or "\\" in rel):
        return "it must be one folder name, without '/' or '\\'"
    if component and len(rel.encode(errors="surrogateescape")) > MAX_NAME:
        return f"it is longer than a folder name may be ({MAX_NAME} bytes)"
    if rel.startswith("/") or (_WINDOWS and (rel.startswith("\\") or (len(rel) > 1 and rel[1] == ":"))):
        return "the path is absolute"
    for p in rel.split("/"):
        if p == "..":
            return "it climbs out with '..'"
        if p in ("", "."):
            return "it has an empty or '.' component"
        if _WINDOWS and ("\\" in p or ":" in p):
            return "a component holds '\\' or ':'"
    return None


def relative_parts(rel: str, target: str) -> tuple[str, ...]:
    """The components of `rel`, or UnsafePath(rel, target, why) if it is not a plain relative path."""
    if (why := unsafe_reason(rel)) is not None:
        raise UnsafePath(str(rel), target, why)
    return tuple(rel.split("/"))


def safe_component(name: str, target: str) -> str:
    """`name` if it is exactly one folder or file name, else UnsafePath."""
    if (why := unsafe_reason(name, component=True)) is not None:
        raise UnsafePath(str(name), target, why)
    return name


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


class Target:
    """A folder that untrusted relative paths are written under (extract's --to, an export's working folder)."""

    def __init__(self, root: Path, *, fresh: bool = False) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self._real = os.path.realpath(self.root)
        self._checked: set[tuple[str, ...]] = {()}  # parent folders already known to resolve inside root
        if fresh:
            with os.scandir(self.root) as it:
                if next(it, None) is not None:
                    raise ValueError(f"{self.root} is not empty: a fresh Target starts empty")
        self._fresh = fresh

    def join(self, rel: str) -> Path:
        return Path(self.local(rel))

    def local(self, rel: str) -> str:
        """`join` as a string path: an export's hot path (pathlib's parsing cost ~15 µs a file)."""
        parts = relative_parts(rel, self._root)
        if self._fresh:  # only regular files and folders were written under root since it was empty
            return os.path.join(self._root, *parts)
        parent = parts[:-1]
        if parent not in self._checked:
            real = os.path.realpath(os.path.join(self._root, *parent))
            if not _inside(real, self._real):
                raise UnsafePath(rel, self._root, f"{'/'.join(parent)} leads outside it (a symbolic link)")
            self._checked.add(parent)
        path = os.path.join(self._root, *parts)
        if os.path.islink(path) and not _inside(os.path.realpath(path), self._real):
            raise UnsafePath(rel, self._root, "it is a symbolic link pointing outside")
        return path


def safe_join(root: Path, rel: str) -> Path:
    """`root/rel` if it stays inside root (see `Target.join`), else UnsafePath."""
    return Target(root).join(rel)
