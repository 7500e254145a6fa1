"""LMDataLoader throughput in memory, and one epoch over a memory-mapped 100M-token stream.

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_text_loader.py

(a) tokens/s delivered at bs=64, seq_len=70, fixed and random BPTT, on a 10M-token
    in-memory stream (median epoch of several).
(b) a synthetic 100,000,000-token stream (random int32 ids < 33,278) written in chunks of
    1M with `TokenStream.write` to a temporary folder, opened memory-mapped, iterated for one
    epoch at bs=64, seq_len=70: tokens/s and resident memory. An int64 copy of the stream
    would need 800 MB (763 MiB); the int32 file is 400 MB. The temporary files are deleted at the end.

"Tokens delivered" counts the ids of x and y together (2 * bs * seq_len per batch).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rnnkit.data.lm_loader import LMDataLoader
from rnnkit.data.stream import TokenStream

VOCAB_SZ = 33_278  # WikiText-2's vocabulary size


def _status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB (nan where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _epoch(dl: LMDataLoader) -> tuple[int, float]:
    """Iterate one epoch; returns (ids delivered in x and y, seconds)."""
    n = 0
    t0 = time.perf_counter()
    for x, y in dl:
        n += x.numel() + y.numel()
    return n, time.perf_counter() - t0


def bench_in_memory(n_tokens: int, bs: int, seq_len: int, reps: int) -> None:
    ids = np.random.default_rng(0).integers(0, VOCAB_SZ, size=n_tokens, dtype=np.int32)
    print(f"(a) in-memory stream: {n_tokens:,} tokens, bs={bs}, seq_len={seq_len}, "
          f"median of {reps} epochs")
    for random_bptt in (False, True):
        dl = LMDataLoader(ids, bs=bs, seq_len=seq_len, random_bptt=random_bptt, seed=0)
        _epoch(dl)  # warm-up
        runs = [_epoch(dl) for _ in range(reps)]
        secs = statistics.median(s for _, s in runs)
        n = runs[0][0]
        print(f"    random_bptt={random_bptt!s:5}  {len(dl):6d} batches  {secs * 1e3:8.1f} ms/epoch  "
              f"{n / secs / 1e6:8.1f} M tokens/s (x+y)  {n / 2 / secs / 1e6:8.1f} M windows' tokens/s (x)")


def bench_memory_mapped(n_tokens: int, chunk: int, bs: int, seq_len: int) -> None:
    print(f"(b) memory-mapped stream: {n_tokens:,} tokens written in chunks of {chunk:,}, "
          f"bs={bs}, seq_len={seq_len}")
    tmp = Path(tempfile.mkdtemp(prefix="rnnkit_bench_"))
    try:
        rng = np.random.default_rng(0)
        sizes = [min(chunk, n_tokens - i) for i in range(0, n_tokens, chunk)]
        t0 = time.perf_counter()
        chunks = (rng.integers(0, VOCAB_SZ, size=s, dtype=np.int32) for s in sizes)
        TokenStream.write(tmp / "stream", chunks)
        write_s = time.perf_counter() - t0
        size_mb = (tmp / "stream" / "ids.npy").stat().st_size / 2**20
        print(f"    wrote {size_mb:.0f} MiB in {write_s:.1f} s (random generation included)")

        stream = TokenStream.open(tmp / "stream")
        dl = LMDataLoader(stream, bs=bs, seq_len=seq_len)
        n_batches = len(dl)
        rss0, anon0 = _status_mb("VmRSS"), _status_mb("RssAnon")
        reset = _reset_peak_rss()
        n, secs = _epoch(dl)
        hwm, rss1 = _status_mb("VmHWM"), _status_mb("VmRSS")
        anon1, file1 = _status_mb("RssAnon"), _status_mb("RssFile")
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        print(f"    one epoch: {n_batches:,} batches in {secs:.2f} s, "
              f"{n / secs / 1e6:.1f} M tokens/s (x+y), {n / 2 / secs / 1e6:.1f} M windows' tokens/s (x)")
        print(f"    RSS before the epoch {rss0:.0f} MiB (anonymous {anon0:.0f} MiB); "
              f"after {rss1:.0f} MiB (anonymous {anon1:.0f} MiB, file-backed {file1:.0f} MiB)")
        if reset:
            print(f"    peak RSS during the epoch (VmHWM) {hwm:.0f} MiB: +{hwm - rss0:.0f} MiB over the start")
        print(f"    ru_maxrss (whole process lifetime) {maxrss:.0f} MiB; an int64 copy of the stream: "
              f"{n_tokens * 8 / 2**20:.0f} MiB")
        del dl, stream
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"    deleted {tmp}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=70)
    p.add_argument("--mem-tokens", type=int, default=10_000_000)
    p.add_argument("--mmap-tokens", type=int, default=100_000_000)
    p.add_argument("--chunk", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--part", choices=["a", "b", "all"], default="all")
    args = p.parse_args()
    torch.set_num_threads(2)
    # (b) first, so ru_maxrss (a lifetime peak) is not raised by (a)'s in-memory stream
    if args.part in ("b", "all"):
        bench_memory_mapped(args.mmap_tokens, args.chunk, args.bs, args.seq_len)
    if args.part in ("a", "all"):
        bench_in_memory(args.mem_tokens, args.bs, args.seq_len, args.reps)


if __name__ == "__main__":
    main()
