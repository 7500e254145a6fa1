"""Memory that stays flat during training: reused logits-sized CPU buffers, and glibc's malloc controls.

A language model's logits and their gradient are `bs * seq_len * vocab_sz` floats: 179 MB for PTB at
bs 64 x bptt 70, 596 MB for WikiText-2. glibc maps every block over 32 MiB afresh (mmap) and the
kernel zeroes each page on first touch, so a step that allocates such blocks anew pays for that every
time: on 2 cores a PTB step (small preset, bs 64 x bptt 70) took 0.52 s instead of 0.32 s.

Making glibc keep freed blocks in its heap (`mallopt`) bought that speed back, but its heap then grew
without bound once block sizes vary (WikiText-2 reached 21 GB in one epoch): smaller blocks settle in
the holes the large ones leave, and the next large block no longer fits. Instead, the tensors that are
logits-sized (the decoder's output, the cross-entropy's gradient) come from a `BufferPool`: a handful
of buffers, each handed out again only when nothing else references its memory. What the pool keeps is
bounded by `max_buffers` times the largest request; everything else goes through malloc as usual.
`benchmarks/bench_memory.py` measures speed and resident memory with it and, with `--no-pool`, without.

The second half holds the process-wide malloc controls for everything else a step allocates:
`reuse_freed_memory` (serve step-sized blocks from the heap), `release_freed_memory` (give the heap's
free memory back) and `heap_free_bytes` (how much it holds); Linux with glibc only, no-ops elsewhere.
"""
from __future__ import annotations

import ctypes
import functools
import math
import sys
import threading
from typing import Any

import torch
from torch import Tensor

from rnnkit.devices import cpu_autocast_dtype

__all__ = ["BufferPool", "buffer_pool", "chunked_loss_applies", "heap_free_bytes", "pooling_applies",
           "release_freed_memory",
           "reuse_freed_memory"]


def _storage_use_count() -> tuple[Any, int]:
    """torch's count of references to a storage, and its value for a storage only the pool holds.

    Private (FSDP and CUDA graphs use it); older CPU-only builds lack it. It is checked here rather than
    trusted: a tensor made on the storage must raise the count, or the pool stays off and every request
    gets a plain tensor.
    """
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None, 0
    storage = torch.UntypedStorage(8)
    alone = count(storage._cdata)
    held = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (8,), (1,))
    if count(storage._cdata) <= alone:
        return None, 0
    del held
    return count, alone


_use_count, _FREE_COUNT = _storage_use_count()


class BufferPool:
    """A few large CPU buffers, handed out as fresh (uninitialized) tensors and reused once free.

    A buffer is reused only when the pool holds the last reference to its memory: a tensor handed out
    earlier that is still alive (kept by the learner as `pred`, saved for a backward pass, gathered by
    `get_preds`, viewed by numpy) keeps its buffer out of circulation. Requests below `min_bytes`, on
    other devices than the CPU (CUDA and MPS have caching allocators of their own), or beyond
    `max_buffers` busy buffers get a plain `torch.empty`.
    """

    def __init__(self, max_buffers: int = 4, min_bytes: int = 8 << 20) -> None:
        self.max_buffers, self.min_bytes = max_buffers, min_bytes
        self._buffers: list[torch.UntypedStorage] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialized contiguous tensor of `shape`, on a pooled buffer where that applies."""
        nbytes = math.prod(shape) * dtype.itemsize
        if device.type != "cpu" or nbytes < self.min_bytes or _use_count is None:
            return torch.empty(shape, dtype=dtype, device=device)
        with self._lock:
            storage = self._take(nbytes)
        if storage is None:
            return torch.empty(shape, dtype=dtype, device=device)
        # set_, not a view of a pooled tensor: the result has no `_base`, so it behaves like any fresh
        # tensor (in-place ops on it are allowed as on nn.Linear's output).
        strides: list[int] = []
        step = 1
        for n in reversed(tuple(shape)):  # a contiguous layout
            strides.insert(0, step)
            step *= max(n, 1)
        return torch.empty(0, dtype=dtype, device=device).set_(storage, 0, tuple(shape), strides)

    def _take(self, nbytes: int) -> torch.UntypedStorage | None:
        free = [s for s in self._buffers if _use_count(s._cdata) == _FREE_COUNT]
        fitting = [s for s in free if s.nbytes() >= nbytes]
        if fitting:
            return min(fitting, key=lambda s: s.nbytes())
        if len(self._buffers) >= self.max_buffers:
            if not free:
                return None  # every buffer is in use: the caller allocates as usual
            self._buffers.remove(min(free, key=lambda s: s.nbytes()))  # too small: replace it
        # An eighth more than asked: with random bptt the next batch is often a little longer, and the
        # margin saves replacing the buffer for each new longest batch.
        storage = torch.UntypedStorage(nbytes + nbytes // 8)
        self._buffers.append(storage)
        return storage

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds, in use or not."""
        return sum(s.nbytes() for s in self._buffers)

    def release_idle(self) -> None:
        """Give the buffers nothing uses back to the system; the Learner calls it at the end of `fit`, so
        a notebook does not keep logits-sized memory between fits."""
        with self._lock:
            self._buffers = [s for s in self._buffers if _use_count(s._cdata) != _FREE_COUNT]

    def clear(self) -> None:
        """Drop the pool's references; buffers still in use stay alive with their tensors."""
        with self._lock:
            self._buffers.clear()


buffer_pool = BufferPool()  # the process's pool, shared by the decoder and the loss


def _cpu_autocast_enabled() -> bool:
    return cpu_autocast_dtype() is not None


def pooling_applies(x: Tensor, out_bytes: int) -> bool:
    """Whether a kernel computing `out_bytes` from `x` should write into `buffer_pool` (and compute in
    row chunks): on the CPU, in float32/float64, at least `min_bytes`, and neither under autocast (its
    own casting applies) nor while torch.compile traces."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and out_bytes >= buffer_pool.min_bytes and not _cpu_autocast_enabled() and not _is_compiling())


def chunked_loss_applies(x: Tensor, out_bytes: int) -> bool:
    """Whether a loss over `x` (logits) should run in row chunks into `buffer_pool`: on the CPU, in float32,
    float64 or bfloat16 (CPU autocast's logits; each chunk is computed in float32), at least `min_bytes`,
    and not while torch.compile traces. Autocast does not matter: the chunks run with it off."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.bfloat16)
            and out_bytes >= buffer_pool.min_bytes and not _is_compiling())


def _is_compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if is_compiling is None:  # PyTorch < 2.3 has it only under dynamo
        from torch import _dynamo

        is_compiling = _dynamo.is_compiling
    return bool(is_compiling())


# ---- glibc's malloc: process-wide controls -------------------------------------------------------

def reuse_freed_memory(max_block: int = 32 << 20, keep_free: int = 128 << 20) -> bool:
    """Have glibc's malloc serve blocks up to `max_block` bytes from its heap, where freed memory is
    reused, and keep up to `keep_free` bytes free at the heap's top instead of returning them after
    each step. Larger blocks are mapped afresh each time, as glibc does by default.

    By default glibc maps every block over 32 MiB afresh and trims its heap's top often, so a training
    step's activations (an LSTM's oneDNN workspace, dropped weights, gradients) are mapped and
    zero-filled by the kernel every step. (A language model's logits-sized blocks do not need this:
    they come from `buffer_pool`, above.)

    The defaults are safe on their own: 32 MiB is glibc's own ceiling for its adaptive threshold, and
    resident memory stays flat. Larger values are faster (a fastai-sized AWD-LSTM step on PTB: 1.78 s
    with 1 GiB against 1.89 s on 2 cores; `benchmarks/bench_memory.py --preset fastai --bs 32 --corpora
    ptb` measures it) but only together with the `ReleaseFreedMemory` callback, which
    bounds what the heap keeps: without it, smaller blocks settle in the holes large ones leave and the
    heap grows without bound (21 GB within an epoch of WikiText-2 before issue 13). The `rnnkit`
    command line uses 1 GiB with that callback. Process-wide and lasting. Returns True where it took
    effect (Linux with glibc).
    """
    mallopt = getattr(_glibc(), "mallopt", None)
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's M_TRIM_THRESHOLD and M_MMAP_THRESHOLD
    return (bool(mallopt(m_mmap_threshold, min(int(max_block), 2**31 - 1)))
            and bool(mallopt(m_trim_threshold, min(int(keep_free), 2**31 - 1))))


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _glibc() -> Any:
    """The process's C library with glibc's malloc controls typed, or None (not Linux, not glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library already loaded into this process
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # other C libraries lack them
        return None
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.argtypes, libc.mallinfo2.restype = [], _Mallinfo2
    return libc


def heap_free_bytes() -> int | None:
    """Bytes free inside glibc's heaps (`mallinfo2().fordblks`): memory the process holds but does not use.
    None where that cannot be read (not glibc, or glibc older than 2.33)."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    return int(libc.mallinfo2().fordblks)


def release_freed_memory() -> bool:
    """Return the free memory inside glibc's heap to the system (`malloc_trim(0)`), keeping what is in use.

    The heap keeps freed blocks for reuse, and over thousands of steps the holes between blocks in use
    add up: resident memory crept up by about 0.6 MB a step on WikiText-2 (600 MB over two epochs) with
    or without `reuse_freed_memory`. Called every few dozen steps (`ReleaseFreedMemory`, which the
    `rnnkit` command line adds), it holds resident memory flat for a few milliseconds and one step's
    worth of page faults each time. Returns True where it ran (Linux with glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
