"""Reuse of the few logits-sized CPU buffers a language-model step needs, with memory that stays flat.

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
"""
from __future__ import annotations

import math
import threading
from typing import Any

import torch
from torch import Tensor

from rnnkit.utils import cpu_autocast_dtype

__all__ = ["BufferPool", "buffer_pool", "pooling_applies"]


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


def _is_compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if is_compiling is None:  # PyTorch < 2.3 has it only under dynamo
        from torch import _dynamo

        is_compiling = _dynamo.is_compiling
    return bool(is_compiling())
