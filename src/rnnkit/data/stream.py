"""`TokenStream`: a corpus's token ids as one flat array of 32-bit ints, with optional document boundaries.

A stream is never a Python list of tokens: it is one `int32` numpy array (4 bytes per
token), in memory or memory-mapped from disk, plus an `int64` array of the offsets where
documents start. `TokenStream.write` builds a large stream on disk chunk by chunk and
`TokenStream.open` maps it, so a 100-million-token corpus takes ~400 MB of disk and only
the pages being read are resident.

On disk a stream is a folder::

    <path>/ids.npy         int32, shape (n_tokens,)   - a plain .npy file (np.load reads it)
    <path>/doc_starts.npy  int64, shape (n_docs,)     - offset of each document; [0] if none
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["TokenStream"]

_INT32_MAX = np.iinfo(np.int32).max
_IDS_FILE, _DOCS_FILE = "ids.npy", "doc_starts.npy"
# `write` reserves a fixed-size .npy header, then rewrites it once the token count is known.
_NPY_HEADER_BYTES = 128


def _as_int32(ids: Any, what: str = "ids") -> np.ndarray:
    """A 1-d int32 numpy array of `ids` (no copy when it already is one); checks the range."""
    if isinstance(ids, TokenStream):
        return ids.ids
    if isinstance(ids, torch.Tensor):
        ids = ids.detach()
        if ids.device.type != "cpu":
            ids = ids.cpu()
        ids = ids.numpy()
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-d (one token id per position), got shape {tuple(arr.shape)}.")
    if arr.dtype == np.int32:
        if arr.size and arr.min() < 0:
            lo = int(arr.min())
            raise ValueError(f"negative token id {lo} in {what}; token ids must be >= 0.")
        return arr
    if arr.size == 0 and arr.dtype == np.float64:  # `np.asarray([])` is float64: let an empty list through
        return np.zeros(0, dtype=np.int32)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got dtype {arr.dtype}; numericalize the tokens first.")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise ValueError(f"negative token id {lo} in {what}; token ids must be >= 0.")
        if hi > _INT32_MAX:
            raise ValueError(f"token id {hi} in {what} does not fit in int32 (max {_INT32_MAX}); "
                             "a TokenStream holds ids below 2**31.")
    return arr.astype(np.int32)


def _check_doc_starts(doc_starts: Any, n: int) -> np.ndarray:
    starts = np.asarray(doc_starts, dtype=np.int64).reshape(-1)
    if starts.size == 0 or starts[0] != 0:
        raise ValueError("doc_starts must begin with 0 (the first document's offset), "
                         f"got {starts[:3].tolist()}...")
    if starts.size > 1 and (np.diff(starts) < 0).any():
        raise ValueError("doc_starts must be non-decreasing offsets into the stream.")
    if starts[-1] > n:
        raise ValueError(f"doc_starts ends at offset {int(starts[-1])}, past the stream's {n} tokens.")
    return starts


def _npy_header(n: int) -> bytes:
    """The .npy (version 1.0) header of a 1-d little-endian int32 array of `n` items, of fixed length."""
    text = f"{{'descr': '<i4', 'fortran_order': False, 'shape': ({n},), }}"
    text = text.ljust(_NPY_HEADER_BYTES - 10 - 1) + "\n"  # 10 = magic(6) + version(2) + length(2)
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class TokenStream:
    """The token ids of a corpus as one int32 array (in memory or memory-mapped) plus document offsets.

    Build one with `from_array`, `from_docs`, `write` or `open`.

    Args:
        ids: 1-d array of ids; converted to int32 and range-checked, except an int32
            `np.memmap`, which is kept as is (checked when `write` made it; scanning it would
            read the whole file).
        doc_starts: int64 offsets where documents start, beginning with 0; None means one document.
    """

    def __init__(self, ids: Any, doc_starts: Any = None, path: str | os.PathLike | None = None) -> None:
        if not (isinstance(ids, np.memmap) and ids.dtype == np.int32 and ids.ndim == 1):
            ids = _as_int32(ids)
        if len(ids) == 0:
            raise ValueError("TokenStream got no tokens; a stream needs at least one token id.")
        self._ids = ids
        self._doc_starts = _check_doc_starts(np.zeros(1) if doc_starts is None else doc_starts, len(ids))
        self.path = None if path is None else Path(path)

    # ---- constructors ----
    @classmethod
    def from_array(cls, ids: Any, doc_starts: Any = None) -> TokenStream:
        """A stream over `ids` (numpy array, torch tensor or list of ints); int32 input is not copied."""
        return cls(ids, doc_starts)

    @classmethod
    def from_docs(cls, docs: Iterable[Any]) -> TokenStream:
        """One stream from a sequence of documents (each a tensor, array or list of ids), in order."""
        parts = [_as_int32(d, what=f"document {i}") for i, d in enumerate(docs)]
        if not parts:
            raise ValueError("TokenStream.from_docs got no documents; pass at least one non-empty document.")
        lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        starts = np.concatenate([[0], np.cumsum(lengths[:-1])])
        return cls(np.concatenate(parts), starts)

    @classmethod
    def write(cls, path: str | os.PathLike, chunks: Iterable[Any], *, docs: bool = False) -> TokenStream:
        """Write a stream to the folder `path` chunk by chunk, atomically; returns it opened memory-mapped.

        Args:
            chunks: pieces of the stream in order: arrays/tensors/lists of ids, or `TokenStream`s
                (whose documents are kept). Only one chunk is in memory at a time.
            docs: treat each array chunk as one document (record where it starts).

        Files go to a temporary folder next to `path`, which is renamed into place at the end,
        so a crash never leaves a half-written stream at `path`.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            n = 0
            starts: list[np.ndarray] = []
            with open(tmp / _IDS_FILE, "wb") as f:
                f.write(_npy_header(0))
                for i, chunk in enumerate(chunks):
                    if isinstance(chunk, TokenStream):
                        starts.append(chunk.doc_starts + n)
                        arr = chunk.ids
                    else:
                        arr = _as_int32(chunk, what=f"chunk {i}")
                        if docs:
                            starts.append(np.array([n], dtype=np.int64))
                    arr.astype("<i4", copy=False).tofile(f)
                    n += len(arr)
                if n == 0:
                    raise ValueError(f"TokenStream.write got no tokens for {path}; "
                                     "pass at least one non-empty chunk.")
                f.seek(0)
                f.write(_npy_header(n))
            doc_starts = np.concatenate(starts) if starts else np.zeros(1, dtype=np.int64)
            if doc_starts[0] != 0:  # array chunks before the first document-carrying chunk
                doc_starts = np.concatenate([[0], doc_starts])
            np.save(tmp / _DOCS_FILE, _check_doc_starts(doc_starts, n))
            if path.exists():
                old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> TokenStream:
        """Memory-map a stream written by `TokenStream.write` (`np.load(mmap_mode='r')`); nothing is read yet."""
        path = Path(path)
        if not (path / _IDS_FILE).exists():
            raise FileNotFoundError(f"{path / _IDS_FILE} not found; write the stream first with "
                                    f"TokenStream.write({str(path)!r}, chunks).")
        ids = np.load(path / _IDS_FILE, mmap_mode="r")
        if ids.dtype != np.int32 or ids.ndim != 1:
            raise ValueError(f"{path / _IDS_FILE} holds {ids.dtype} with shape {ids.shape}; "
                             "expected 1-d int32.")
        docs_file = path / _DOCS_FILE
        starts = np.load(docs_file) if docs_file.exists() else None
        return cls(ids, starts, path=path)

    # ---- access ----
    @property
    def ids(self) -> np.ndarray:
        """All token ids: a 1-d int32 array (an `np.memmap` for opened streams)."""
        return self._ids

    @property
    def doc_starts(self) -> np.ndarray:
        """Offset of each document in the stream (int64, starts with 0)."""
        return self._doc_starts

    @property
    def n_docs(self) -> int:
        """Number of documents (1 when no boundaries were given)."""
        return len(self._doc_starts)

    @property
    def is_mmap(self) -> bool:
        """Whether the ids are memory-mapped from a file rather than held in memory."""
        return isinstance(self._ids, np.memmap)

    def doc_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Start and end offsets of every document (two int64 arrays)."""
        ends = np.append(self._doc_starts[1:], len(self._ids))
        return self._doc_starts, ends

    def doc(self, i: int) -> np.ndarray:
        """The ids of document `i` (a view)."""
        n = self.n_docs
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range for a stream of {n} documents.")
        i %= n
        end = self._doc_starts[i + 1] if i + 1 < n else len(self._ids)
        return self._ids[self._doc_starts[i]:end]

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return self._ids[i]
        return int(self._ids[i])

    def release_memory(self) -> None:
        """Let the OS drop this process's resident pages of a memory-mapped stream (a no-op in memory).

        Pages read through a memory map count in the process's resident memory until the
        kernel reclaims them; this returns them at once. They stay in the OS page cache, so
        reading them again is cheap. The mapping itself stays valid.
        """
        mm = getattr(self._ids, "_mmap", None)  # the mmap object behind np.memmap
        if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path is not None else ""
        return f"{type(self).__name__}(n_tokens={len(self)}, n_docs={self.n_docs}{where})"

