"""`LMDataLoader`: batches for a language model, cut from one token stream so the hidden state can carry over.

The stream (documents concatenated; in a new random order each epoch with `shuffle=True`)
is cut into `bs` contiguous rows of `L = (N - 1) // bs` tokens. Batch `i` is the `i`-th
window of every row; the targets `y` are the same rows shifted by one token. Example with
N = 26 tokens `a..z`, bs = 3, seq_len = 3, so L = 25 // 3 = 8::

    stream:  a b c d e f g h  i j k l m n o p  q r s t u v w x  y  z
             '--- row 0 ---'  '--- row 1 ---'  '--- row 2 ---'  |  |
                                      row 2's last target only -'  '-- unused: (N-1) % bs = 1 token

                  batch 0      batch 1      batch 2
                  t=0..2       t=3..5       t=6..7 (the remainder: L % seq_len = 2)
    x  row 0:     a b c    |   d e f    |   g h
       row 1:     i j k    |   l m n    |   o p
       row 2:     q r s    |   t u v    |   w x
    y  row 0:     b c d    |   e f g    |   h i
       row 1:     j k l    |   m n o    |   p q
       row 2:     r s t    |   u v w    |   x y

Row `j` of batch `i+1` continues row `j` of batch `i`, so a model may keep its hidden state
between batches (detaching it, to bound backpropagation to one window). The `(N-1) % bs`
tokens after the last row cannot fill a row and are skipped. The last window is shorter
than `seq_len` unless `seq_len` divides `L`; it is yielded unless `drop_last=True`.

With `random_bptt=True` each window's length is drawn as in AWD-LSTM (Merity et al. 2017,
"Regularizing and Optimizing LSTM Language Models", section 4.1): the base is `seq_len`
with probability `1 - p_half`, else `seq_len / 2`; the length is a normal draw around it
(std `sigma`), rounded, at least `min_seq_len`. The whole epoch's lengths are drawn when
it starts, from a generator seeded by `(seed, epoch)`, so `len()` is exact and runs repeat.
A callback can rescale the learning rate by `dl.seq_len_of_batch / dl.bptt`.

Distributed training (`shard`): process `r` of `N` takes rows `r*bs/N .. (r+1)*bs/N - 1` of the
same `bs`-row layout, windows and document order (both drawn from the seed, the same on every
process). With bs = 4 and N = 2, process 0 yields rows 0-1 and process 1 rows 2-3 of each batch
above: every process's rows still continue from batch to batch, and together the processes see
exactly the tokens one process of `bs` rows sees. The batch position (`state_dict`) is global.

Batches are `int64` copies of `(bs, seq_len)` slices of a 2-d int32 view of the stream:
an epoch never builds per-token Python objects or an int64 copy of the stream, so a
memory-mapped `TokenStream` is read page by page. Shuffling documents costs one int32
copy of the stream per epoch (4 bytes per token, read in full from disk if mapped).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from rnnkit.data.core import DeviceMixin
from rnnkit.data.load import ShardMixin
from rnnkit.data.stream import TokenStream
from rnnkit.errors import UserError

__all__ = ["LMDataLoader"]

# A memory-mapped stream drops its resident pages after this many tokens have been read.
_RELEASE_TOKENS = 1 << 23


def _as_stream(dataset: Any) -> TokenStream:
    """A `TokenStream` from a stream, a 1-d tensor/array of ids, or a list of documents."""
    if isinstance(dataset, TokenStream):
        return dataset
    if isinstance(dataset, (torch.Tensor, np.ndarray)):
        return TokenStream.from_array(dataset)
    items = list(dataset)  # a list, tuple or fastcore `L`: of documents, or of ids
    if not items:
        raise UserError("LMDataLoader got an empty dataset; pass token ids or a list of documents.")
    if all(isinstance(d, (torch.Tensor, np.ndarray, list, tuple)) and np.ndim(d) == 1 for d in items):
        return TokenStream.from_docs(items)
    return TokenStream.from_array(items)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UserError(f"{name} must be an int >= {low}, got {value!r}.")
    return int(value)


class _Pass:
    """Bookkeeping of one iteration over the loader: its epoch, first batch and next batch."""

    def __init__(self, epoch: int, start: int) -> None:
        self.epoch, self.start, self.batch = epoch, start, start


class LMDataLoader(DeviceMixin, ShardMixin):
    """Yield `(x, y)` batches of `bs` continuing rows of a token stream, `seq_len` (or a random length) wide.

    Args:
        dataset: a `TokenStream`, a 1-d tensor/array of ids, or a list of documents (tensors of ids).
        shuffle: put the documents in a new random order each epoch (needs several documents).
        random_bptt: draw each window's length as AWD-LSTM does (see the module docstring).
        min_seq_len, max_seq_len: bounds on a random window length.
        p_half: probability that a random window's base length is `seq_len / 2`.
        sigma: standard deviation of a random window length around its base.
        seed: seeds document order and window lengths (with the epoch); None draws one from
            torch's global generator at construction, so `torch.manual_seed` fixes it.
        drop_last: skip the last window of an epoch when it is shorter than the others.

    `shard(rank, world_size)` gives the loader one process of a distributed run uses.
    """

    _shard_unit = "rows"  # a shard takes bs/N rows of the global layout

    def __init__(
        self,
        dataset: Any,
        bs: int = 64,
        seq_len: int = 72,
        shuffle: bool = False,
        random_bptt: bool = False,
        min_seq_len: int = 5,
        max_seq_len: int | None = None,
        p_half: float = 0.05,
        sigma: float = 5,
        seed: int | None = None,
        device: torch.device | str | None = None,
        drop_last: bool = False,
    ) -> None:
        self.bs = _check_int("bs", bs, 1)
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.min_seq_len = _check_int("min_seq_len", min_seq_len, 1)
        self.max_seq_len = (None if max_seq_len is None
                            else _check_int("max_seq_len", max_seq_len, self.min_seq_len))
        if not 0 <= p_half <= 1:
            raise UserError(f"p_half is a probability and must be in [0, 1], got {p_half!r}.")
        if not sigma >= 0:
            raise UserError(f"sigma is a standard deviation and must be >= 0, got {sigma!r}.")
        self.p_half, self.sigma = float(p_half), float(sigma)
        self.shuffle, self.random_bptt, self.drop_last = bool(shuffle), bool(random_bptt), bool(drop_last)
        self.dataset = dataset
        self.stream = _as_stream(dataset)
        if self.row_len < self.seq_len:
            raise UserError(
                f"LMDataLoader got {self.n} tokens, too few for bs={self.bs} rows of seq_len={self.seq_len}: "
                f"each row would hold {self.row_len} tokens (it needs seq_len + 1 with its target). "
                f"Lower bs or seq_len so that bs * seq_len + 1 <= {self.n}."
            )
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.seed = _check_int("seed", seed, 0)
        self.device = device
        self.seq_len_of_batch: int | None = None
        self._epoch, self._start_batch = 0, 0
        self._active: _Pass | None = None
        self._sched_cache: tuple[tuple, tuple[np.ndarray, np.ndarray]] | None = None
        self._rows_cache: tuple[tuple[int, int], np.ndarray] | None = None
        self._shard = (0, 1)  # (rank, world_size): which block of rows this loader yields

    # ---- sizes and options ----
    @property
    def n(self) -> int:
        """Number of tokens in the stream."""
        return len(self.stream)

    @property
    def row_len(self) -> int:
        """Tokens per row, `L = (n - 1) // bs` (one more token per row is needed for the targets)."""
        return (self.n - 1) // self.bs

    @property
    def bptt(self) -> int:
        """The base window length (`seq_len`), for rescaling the lr by `seq_len_of_batch / bptt`."""
        return self.seq_len

    @property
    def local_bs(self) -> int:
        """Rows in each batch this loader yields: `bs / world_size`."""
        return self.bs // self.world_size

    def shard(self, rank: int, world_size: int, seed: int | None = None) -> LMDataLoader:
        """The loader for process `rank` of `world_size`: its block of `bs / world_size` rows of the same
        layout, at this loader's position. Every process must use the same `seed` (default: this loader's)."""
        world_size = _check_int("world_size", world_size, 1)
        rank = _check_int("rank", rank, 0)
        if rank >= world_size:
            raise UserError(f"rank must be below world_size={world_size}, got {rank}.")
        res = self.new(seed=self.seed if seed is None else seed)
        res._set_shard(rank, world_size)
        res.load_state_dict({"epoch": self.epoch, "batch": self.state_dict()["batch"]})
        return res

    def new(self, dataset: Any = None, **kwargs: Any) -> LMDataLoader:
        """A copy of this loader with some arguments changed, e.g. `dl.new(shuffle=False, random_bptt=False)`;
        a shard's copy is the same shard."""
        args: dict[str, Any] = dict(
            bs=self.bs, seq_len=self.seq_len, shuffle=self.shuffle, random_bptt=self.random_bptt,
            min_seq_len=self.min_seq_len, max_seq_len=self.max_seq_len, p_half=self.p_half,
            sigma=self.sigma, seed=self.seed, device=self.device, drop_last=self.drop_last,
        )
        args.update(kwargs)
        if dataset is not None:
            res = type(self)(dataset, **args)
        else:
            res = type(self)(self.stream, **args)  # same data: share the stream, no conversion
            res.dataset = self.dataset
        if self.world_size > 1:
            res._set_shard(*self._shard)
        return res

    # ---- epochs and resuming ----
    @property
    def epoch(self) -> int:
        """The epoch being iterated, or the one the next iteration will run."""
        return self._active.epoch if self._active is not None else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run `epoch` from its first batch (iterations count epochs themselves)."""
        self._epoch, self._start_batch = _check_int("epoch", epoch, 0), 0

    def state_dict(self) -> dict[str, int]:
        """Epoch, next batch and seed: `load_state_dict` of them makes the next iteration resume there."""
        run = self._active
        epoch, batch = (run.epoch, run.batch) if run is not None else (self._epoch, self._start_batch)
        return {"epoch": epoch, "batch": batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume from `state_dict()`: the next iteration starts at the saved batch of the saved epoch."""
        missing = {"epoch", "batch"} - set(state)
        if missing:
            raise ValueError(f"LMDataLoader state needs keys 'epoch' and 'batch'; missing {sorted(missing)}.")
        if "seed" in state:
            self.seed = _check_int("seed", state["seed"], 0)
        epoch, batch = _check_int("epoch", state["epoch"], 0), _check_int("batch", state["batch"], 0)
        total = self._n_batches(epoch)
        if batch > total:
            raise UserError(f"batch {batch} is past the end of epoch {epoch}, which has {total} batches; "
                             "was the state saved by a loader with other data, bs or seq_len?")
        if batch == total:  # saved after the last batch: the epoch is over
            epoch, batch = epoch + 1, 0
        self._active = None
        self._epoch, self._start_batch = epoch, batch

    # ---- the epoch's windows and rows ----
    def _rng(self, epoch: int, stream_id: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, stream_id])

    def _schedule(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Start and length of every window of `epoch` (int64 arrays), computed once per epoch."""
        key = (epoch, self.bs, self.seq_len, self.random_bptt, self.min_seq_len, self.max_seq_len,
               self.p_half, self.sigma, self.seed, self.drop_last, self.n)
        if self._sched_cache is not None and self._sched_cache[0] == key:
            return self._sched_cache[1]
        L, sl = self.row_len, self.seq_len
        if self.random_bptt:
            drawn_ends = np.cumsum(self._random_lengths(self._rng(epoch, 1), L))
            clipped = bool(drawn_ends[-1] > L)
            ends = np.minimum(drawn_ends, L)  # never past the end of the rows
            starts = np.concatenate([np.zeros(1, dtype=np.int64), ends[:-1]])
            lengths = ends - starts
        else:
            starts = np.arange(0, L, sl, dtype=np.int64)
            lengths = np.minimum(sl, L - starts)
            clipped = bool(lengths[-1] < sl)
        if self.drop_last and clipped:
            starts, lengths = starts[:-1], lengths[:-1]
        self._sched_cache = (key, (starts, lengths))
        return starts, lengths

    def _random_lengths(self, rng: np.random.Generator, L: int) -> np.ndarray:
        """AWD-LSTM window lengths until they cover `L` tokens; the last one may overshoot."""
        sl = self.seq_len
        mean = (1 - self.p_half) * sl + self.p_half * sl / 2
        block = int(L / max(mean, 1) * 1.1) + 8
        parts, total = [], 0
        while total < L:
            base = np.where(rng.random(block) < self.p_half, sl / 2, float(sl))
            lens = np.rint(rng.normal(base, self.sigma)).astype(np.int64)
            lens = np.maximum(lens, self.min_seq_len)
            if self.max_seq_len is not None:
                lens = np.minimum(lens, self.max_seq_len)
            parts.append(lens)
            total += int(lens.sum())
        lengths = np.concatenate(parts)
        n = int(np.searchsorted(np.cumsum(lengths), L)) + 1  # first window whose end reaches L
        return lengths[:n]

    def _n_batches(self, epoch: int) -> int:
        return len(self._schedule(epoch)[0])

    def _shuffles_docs(self) -> bool:
        return self.shuffle and self.stream.n_docs > 1

    def _epoch_ids(self, epoch: int) -> np.ndarray:
        """The stream as read in `epoch`: the stored ids, or a copy with the documents shuffled."""
        if not self._shuffles_docs():
            return self.stream.ids
        key = (epoch, self.seed)
        if self._rows_cache is not None and self._rows_cache[0] == key:
            return self._rows_cache[1]
        self._rows_cache = None  # free last epoch's copy before building this one
        starts, ends = self.stream.doc_bounds()
        ids = self.stream.ids
        order = self._rng(epoch, 0).permutation(len(starts))
        shuffled = np.concatenate([ids[starts[k]:ends[k]] for k in order])  # one int32 copy
        self.stream.release_memory()
        self._rows_cache = (key, shuffled)  # kept for this epoch's iteration after `one_batch`
        return shuffled

    def _rows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """2-d int32 views `(local_bs, L)` of this shard's inputs and targets (shifted by one) for `epoch`."""
        ids, bs, L = self._epoch_ids(epoch), self.bs, self.row_len
        lo, hi = self.rank * self.local_bs, (self.rank + 1) * self.local_bs  # this process's block of rows
        return ids[:bs * L].reshape(bs, L)[lo:hi], ids[1:bs * L + 1].reshape(bs, L)[lo:hi]

    def _to_batch(self, x_rows: np.ndarray, y_rows: np.ndarray, t: int,
                  sl: int) -> tuple[torch.Tensor, torch.Tensor]:
        # int32 -> int64 here, one (bs, sl) window at a time; the copy is contiguous and writable.
        x = torch.from_numpy(np.ascontiguousarray(x_rows[:, t:t + sl], dtype=np.int64))
        y = torch.from_numpy(np.ascontiguousarray(y_rows[:, t:t + sl], dtype=np.int64))
        if self._device is not None:
            x, y = x.to(self._device), y.to(self._device)
        return x, y

    # ---- iteration ----
    def __len__(self) -> int:
        """Number of batches the current iteration yields, or the next one if none is running."""
        run = self._active
        if run is not None:
            return self._n_batches(run.epoch) - run.start
        return self._n_batches(self._epoch) - self._start_batch

    def __iter__(self) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
        # The pass claims its epoch when iteration starts, so an iterator never advanced counts nothing.
        run = _Pass(self._epoch, self._start_batch)
        self._epoch, self._start_batch = run.epoch + 1, 0
        self._active = run
        try:
            starts, lengths = self._schedule(run.epoch)
            x_rows, y_rows = self._rows(run.epoch)
            release = self.stream.is_mmap and not self._shuffles_docs()
            unreleased = 0
            for i in range(run.start, len(starts)):
                t, sl = int(starts[i]), int(lengths[i])
                b = self._to_batch(x_rows, y_rows, t, sl)
                # Advanced before yielding: a checkpoint taken while `b` is in use resumes after it.
                run.batch, self.seq_len_of_batch = i + 1, sl
                if release:
                    unreleased += self.local_bs * sl
                    if unreleased >= _RELEASE_TOKENS:  # keep resident memory to the pages in use
                        self.stream.release_memory()
                        unreleased = 0
                yield b
        finally:
            if self._active is run:
                self._active = None

    def one_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first batch the next iteration would yield, without advancing the epoch."""
        epoch, i = self._epoch, self._start_batch
        starts, lengths = self._schedule(epoch)
        if i >= len(starts):
            raise ValueError(f"LMDataLoader has no batch left in epoch {epoch}; "
                             "lower seq_len or set drop_last=False.")
        return self._to_batch(*self._rows(epoch), int(starts[i]), int(lengths[i]))

    def __repr__(self) -> str:
        shard = f", shard={self.rank}/{self.world_size}" if self.world_size > 1 else ""
        return (f"{type(self).__name__}(n={self.n}, bs={self.bs}, seq_len={self.seq_len}, "
                f"shuffle={self.shuffle}, random_bptt={self.random_bptt}, drop_last={self.drop_last}, "
                f"device={self.device}{shard})")
