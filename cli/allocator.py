"""The one place a command tunes glibc's malloc (`mallopt`), so each policy is stated once, with what it measured.

glibc raises its mmap threshold to the largest block freed (up to 32 MiB) and trims a heap's top past its own moving
limit; a command whose buffers have a known size does better with fixed values:
- import (`return_large_buffers`): every block of 1 MiB or more gets its own map, returned when freed, so the 16 MiB
  pack buffers filled and freed one after another do not stay in the heaps. A 120 000-file import peaked at 217 MB
  with glibc's default and 175 MB with this (same run).
- copy (`keep_freed_blocks`): blocks below 8 MiB (a chunk is at most 8 MiB, store/chunker.py) come from the heaps, and
  a heap keeps up to 16 MiB free at its top, so a freed chunk's pages serve the next one: page faults per 600 MB
  copy went from 340 000 to 75 000. A heap then holds at most 16 MiB free, one per thread that allocated.
- export keeps glibc's default: a 1 MiB threshold there made every decrypted chunk a fresh map, faulted in and zeroed
  (a 6.55 GB export took 27.7-29.5 s against 17.5-17.8 s without, same vault, back to back).
Two more touch the allocator where their work is, below this package: a folder import gives its heaps' free pages
back after each shard (store/residency.py `release_free_heap`, called by store/writer.py `seal_shard`), and the
Manifest parse child sets its own mmap threshold (sync/catalogshards.py `_return_shard_buffers`).
All three set glibc through store/residency.py `set_malloc`. Not glibc (musl, macOS: no `mallopt`): the allocator is
left as it is.
"""

from __future__ import annotations

from phonevault.store.residency import set_malloc

LARGE_BUFFER = 1 << 20
HEAP_BLOCK = 8 << 20


def return_large_buffers() -> None:
    """Import's policy: blocks of LARGE_BUFFER or more get their own map, returned to the system when freed."""
    set_malloc(mmap_threshold=LARGE_BUFFER)


def keep_freed_blocks() -> None:
    """Copy's policy: blocks below HEAP_BLOCK come from the heaps, which keep up to 2 × HEAP_BLOCK free at their top."""
    set_malloc(mmap_threshold=HEAP_BLOCK, trim_threshold=2 * HEAP_BLOCK)
