"""Writing one full pack of small blobs: the Python memory (tracemalloc peak) and CPU of `PackWriter.finish`, the
pack's index object (`write_index`) and its cache load (`Cache.add_index`), as a blob sink's pack-writing thread
runs them, for PACK_BLOBS (16 384) blobs of a many-file phone's size (~270 sealed bytes).

    .venv/bin/python benchmarks/pack_finish_bench.py [--blobs 16384] [--rounds 5] [--work DIR]

Run it with PYTHONPATH set to a folder holding a `phonevault` package to measure another checkout (an A/B: alternate
the two). The memory round is traced (tracemalloc: Python allocations only, not LMDB's), the CPU rounds are not;
the peak is counted from just before `finish` (a local backend's data pack is written to its file as it fills: its
bytes are not in it).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from phonevault.store.backends.local import LocalBackend
from phonevault.store.index import write_index
from phonevault.store.packs import DATA, PackWriter, seal_blob
from phonevault.store.repository import Repository


def filled(repo: Repository, blobs: int, seed: int) -> PackWriter:
    rnd, w = random.Random(seed), PackWriter(repo.backend, repo.key)
    for _ in range(blobs):
        plain = rnd.randbytes(240)
        blob_id = repo.key.blob_id(plain)
        w.add(blob_id, DATA, seal_blob(repo.key, blob_id, plain, False), len(plain))
    return w


def write(repo: Repository, w: PackWriter) -> None:
    pack_id, locations = w.finish()
    repo.cache.add_index(write_index(repo.backend, repo.key, pack_id, locations), locations)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blobs", type=int, default=16_384)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        repo = Repository.init(LocalBackend(Path(tmp) / "r"), "pw", scrypt_n=2**10, cache_root=Path(tmp) / "c")
        w = filled(repo, args.blobs, 0)
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        size = w.size
        write(repo, w)
        peak = tracemalloc.get_traced_memory()[1] - start
        tracemalloc.stop()
        del w
        cpu = []
        for n in range(1, args.rounds + 1):
            w = filled(repo, args.blobs, n)
            t = time.process_time()
            write(repo, w)
            cpu.append(time.process_time() - t)
            del w
        repo.close()
    print(
        f"blobs {args.blobs}  pack {size} B  traced peak {peak / 1e6:.2f} MB ({peak / args.blobs:.0f} B/blob)  "
        f"CPU median {statistics.median(cpu) * 1e3:.1f} ms (min {min(cpu) * 1e3:.1f}, {len(cpu)} rounds)"
    )


if __name__ == "__main__":
    main()
