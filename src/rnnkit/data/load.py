"""`DataLoader`: fastai's batching loader over a plain in-memory dataset, and the device handling loaders share.

The loader runs in the main process. When every item is a tuple of equally shaped tensors
or numbers (the chapter's `L` of `(tensor, tensor)` or `(tensor, int)`), the dataset is
stacked once into one tensor per field, so a batch costs one slice or `index_select`
instead of a Python loop over its items. Anything else goes through torch's
`default_collate`. `DeviceMixin` gives this loader and the language-model loader their `device` and `to`.

For distributed training, `shard(rank, world_size)` splits every batch of `bs` items into
`world_size` contiguous blocks, one per process: process `r` takes items `r*bs/N .. (r+1)*bs/N - 1`
of each batch. Every process has the same number of batches, the shards are disjoint, and a stateful
model fed `group_chunks` data (row `j` continuing row `j`) keeps that property on every process.
A shard shuffles by a permutation drawn from `(seed, epoch)`, identical on every process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import default_collate

from rnnkit.devices import to_device
from rnnkit.errors import UserError
from rnnkit.utils import L

__all__ = ["DataLoader", "DeviceMixin", "ShardMixin"]

# Python number types we stack ourselves, with the dtype `default_collate` gives them.
_NUMBER_DTYPES: dict[type, torch.dtype] = {bool: torch.bool, int: torch.int64, float: torch.float64}


def _leaf_spec(o: Any) -> tuple | None:
    """What every item's field must match for the dataset to be stackable, or None."""
    if isinstance(o, torch.Tensor):
        return ("tensor", o.shape, o.dtype, o.device)
    if type(o) in _NUMBER_DTYPES:
        return ("number", type(o))
    return None


def _matches(o: Any, spec: tuple) -> bool:
    if spec[0] == "tensor":
        return isinstance(o, torch.Tensor) and o.shape == spec[1] and o.dtype == spec[2] and o.device == spec[3]
    return type(o) is spec[1]


def _stack_dataset(dataset: Any, n: int) -> tuple[tuple[torch.Tensor, ...], bool] | None:
    """Stack a dataset of uniform items into one tensor per field; None if items are not uniform."""
    if isinstance(dataset, torch.Tensor):
        return (dataset.as_subclass(torch.Tensor),), False
    first = dataset[0]
    as_tuple = isinstance(first, (tuple, list))
    maybe_specs = [_leaf_spec(o) for o in (first if as_tuple else (first,))]
    if not maybe_specs or any(s is None for s in maybe_specs):
        return None
    specs: list[tuple] = [s for s in maybe_specs if s is not None]
    columns: list[list[Any]] = [[] for _ in specs]
    items = dataset if isinstance(dataset, (list, tuple, L)) else (dataset[i] for i in range(n))
    count = 0
    for item in items:
        if isinstance(item, (tuple, list)) != as_tuple:
            return None
        fields = item if as_tuple else (item,)
        if len(fields) != len(specs):
            return None
        for col, spec, o in zip(columns, specs, fields):
            if not _matches(o, spec):
                return None
            col.append(o)
        count += 1
    assert count == n, f"dataset yielded {count} items but has length {n}"
    stacked = []
    for col, spec in zip(columns, specs):
        if spec[0] == "tensor":
            stacked.append(torch.stack([t.as_subclass(torch.Tensor) for t in col]))
        else:
            stacked.append(torch.tensor(col, dtype=_NUMBER_DTYPES[spec[1]]))
    return tuple(stacked), as_tuple


_Loader = TypeVar("_Loader", bound="DeviceMixin")


class DeviceMixin:
    """A loader's `device` (where batches are moved to; None leaves them where the data is) and `to`."""

    _device: torch.device | None = None

    @property
    def device(self) -> torch.device | None:
        return self._device

    @device.setter
    def device(self, device: torch.device | str | None) -> None:
        self._device = None if device is None else torch.device(device)

    def to(self: _Loader, device: torch.device | str | None) -> _Loader:
        """Send future batches to `device`; returns self."""
        self.device = device
        return self


class ShardMixin:
    """`rank` and `world_size` of a loader that may be one process's shard of each batch (see `shard`)."""

    _shard: tuple[int, int] = (0, 1)  # (rank, world_size)
    _shard_unit = "items"  # what a process takes bs/N of, for messages
    bs: int

    @property
    def rank(self) -> int:
        """Which block of each batch this loader yields (0 unless it is a `shard`)."""
        return self._shard[0]

    @property
    def world_size(self) -> int:
        """Into how many blocks each batch is split (1 unless it is a `shard`)."""
        return self._shard[1]

    def _set_shard(self, rank: int, world_size: int) -> None:
        if self.bs % world_size:
            up = -(-self.bs // world_size) * world_size
            raise UserError(f"bs={self.bs} is not divisible by the {world_size} processes: each process takes "
                            f"bs/{world_size} {self._shard_unit} of the same batches. Use a multiple of "
                            f"{world_size}, e.g. bs={up}.")
        self._shard = (rank, world_size)


class DataLoader(DeviceMixin, ShardMixin):
    """Iterate over a dataset in batches of `bs` items, optionally shuffled each epoch and moved to `device`.

    Args:
        dataset: an indexable sequence with `len`, of tuples `(x, y)` or of single tensors/numbers.
        seed: an int or a `torch.Generator` that makes shuffling reproducible; with None,
            shuffling draws from torch's global generator (so `torch.manual_seed` fixes it).
        collate_fn: turns a list of items into a batch; replaces the stacked fast path.

    Unshuffled batches from the fast path are views into one stacked copy of the dataset:
    clone a batch before changing it in place. `shard(rank, world_size)` gives the loader one
    process of a distributed run uses (see the module docstring).
    """

    def __init__(
        self,
        dataset: Sequence[Any],
        bs: int = 64,
        shuffle: bool = False,
        drop_last: bool = False,
        num_workers: int = 0,
        device: torch.device | str | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        seed: int | torch.Generator | None = None,
    ) -> None:
        if not isinstance(num_workers, int) or num_workers < 0:
            raise UserError(f"num_workers must be an int >= 0, got {num_workers!r}.")
        if seed is None or isinstance(seed, torch.Generator):
            self._generator = seed
            self.seed: int | None = None
        else:
            self._generator = torch.Generator().manual_seed(int(seed))
            self.seed = int(seed)  # a shard's epoch orders are drawn from (seed, epoch)
        self._shard, self._epoch = (0, 1), 0  # (rank, world_size); the epoch a shard runs next
        self.dataset = dataset
        self.bs = bs
        self.shuffle, self.drop_last, self.num_workers = bool(shuffle), bool(drop_last), num_workers
        self.collate_fn = collate_fn
        self.device = device

    @property
    def dataset(self) -> Sequence[Any]:
        """The items this loader batches."""
        return self._dataset

    @dataset.setter
    def dataset(self, dataset: Sequence[Any]) -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"DataLoader needs an indexable dataset with a length, got {type(dataset).__name__}; "
                "wrap an iterator in list(...) or L(...)."
            )
        if len(dataset) == 0:
            raise UserError("DataLoader got an empty dataset; pass at least one item.")
        self._dataset = dataset
        self._stacked: tuple[tuple[torch.Tensor, ...], bool] | None = None
        self._stack_checked = False

    @property
    def bs(self) -> int:
        """Number of items per batch."""
        return self._bs

    @bs.setter
    def bs(self, bs: int) -> None:
        if isinstance(bs, bool) or not isinstance(bs, int) or bs <= 0:
            raise UserError(f"bs must be a positive int, got {bs!r}.")
        self._bs = bs

    @property
    def n(self) -> int:
        """Number of items in the dataset."""
        return len(self.dataset)

    def __len__(self) -> int:
        n, bs = self.n, self.bs
        if self.drop_last or (self._shard[1] > 1 and n % bs < self._shard[1]):
            return n // bs  # a shard skips a last batch too small to give each process an item
        return -(-n // bs)

    # ---- distributed shards ----
    def shard(self, rank: int, world_size: int, seed: int | None = None) -> DataLoader:
        """The loader for process `rank` of `world_size`: its contiguous block of `bs / world_size` items of
        every batch. Every process must pass the same `seed` (default: this loader's, else one drawn from
        its generator, or from torch's when it has none)."""
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise UserError(f"world_size must be an int >= 1, got {world_size!r}.")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise UserError(f"rank must be an int in [0, {world_size}), got {rank!r}.")
        if seed is None:
            seed = self.seed if self.seed is not None else int(
                torch.randint(0, 2**62, (1,), generator=self._generator).item())
        res = self.new()
        res._set_shard(rank, world_size)
        res.seed = int(seed)
        small = self.n % self.bs
        if world_size > 1 and not self.drop_last and 0 < small < world_size and rank == 0:
            warnings.warn(f"the last batch has {small} item(s), fewer than the {world_size} processes: "
                          f"every process skips it. Use a bs that leaves 0 or at least {world_size} items "
                          f"over ({self.n} items).", stacklevel=2)
        return res

    def set_epoch(self, epoch: int) -> None:
        """Make a shard's next iteration draw the order of `epoch` (iterations count epochs themselves)."""
        self._epoch = int(epoch)

    def _bounds(self) -> list[tuple[int, int]]:
        """Start and end, in the epoch's order, of each batch this loader yields (its block of each batch)."""
        n, bs = self.n, self.bs
        rank, world = self._shard
        out = []
        for i in range(len(self)):
            start, end = i * bs, min((i + 1) * bs, n)
            k = end - start  # bs, or fewer in a last batch: its blocks differ by one item at most
            out.append((start + rank * k // world, start + (rank + 1) * k // world))
        return out

    def new(self, dataset: Sequence[Any] | None = None, **kwargs: Any) -> DataLoader:
        """A copy of this loader with some arguments changed, e.g. `dl.new(shuffle=False)`."""
        args: dict[str, Any] = dict(
            bs=self.bs,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            device=self.device,
            collate_fn=self.collate_fn,
            seed=self._generator,
        )
        args.update(kwargs)
        res = type(self)(self.dataset if dataset is None else dataset, **args)
        if dataset is None:  # same items: share the stacked copy
            res._stacked, res._stack_checked = self._stacked, self._stack_checked
        if self.world_size > 1:  # a shard's copy is the same shard
            res._set_shard(*self._shard)
            res.seed = self.seed
        return res

    def one_batch(self) -> Any:
        """The first batch of a fresh pass (a random one when shuffled)."""
        if len(self) == 0:
            raise UserError(
                f"DataLoader has no full batch: {self.n} items, bs={self.bs}, drop_last=True; "
                "lower bs or set drop_last=False."
            )
        it, epoch = self.__iter__(), self._epoch
        try:
            return next(it)
        finally:
            it.close()
            self._epoch = epoch  # a look at the first batch is no epoch

    def _stacked_fields(self) -> tuple[tuple[torch.Tensor, ...], bool] | None:
        # Checked once per dataset, on first use: construction stays cheap.
        if not self._stack_checked:
            self._stacked = None if self.collate_fn is not None else _stack_dataset(self.dataset, self.n)
            self._stack_checked = True
        return self._stacked

    def _epoch_order(self, epoch: int) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        if self.world_size > 1:  # the same permutation on every process
            rng = np.random.default_rng([self.seed or 0, epoch])
            return torch.from_numpy(rng.permutation(self.n))
        return torch.randperm(self.n, generator=self._generator)

    def _collate(self, items: list[Any]) -> Any:
        if self.collate_fn is not None:
            return self.collate_fn(items)
        b = default_collate(items)
        return tuple(b) if isinstance(items[0], (tuple, list)) else b

    def __iter__(self) -> Generator[Any, None, None]:
        # torch's loader shuffles an unsharded loader with workers itself
        ours = self.num_workers == 0 or self.world_size > 1
        order = self._epoch_order(self._epoch) if ours else None
        self._epoch += 1
        batches = self._worker_batches(order) if self.num_workers > 0 else self._main_batches(order)
        for b in batches:
            yield b if self.device is None else to_device(b, self.device)

    def _main_batches(self, order: torch.Tensor | None) -> Iterator[Any]:
        stacked = self._stacked_fields()
        for start, end in self._bounds():
            idx = None if order is None else order[start:end]
            if stacked is not None:
                fields, as_tuple = stacked
                if idx is None:
                    b = tuple(f[start:end] for f in fields)
                else:
                    b = tuple(f.index_select(0, idx.to(f.device)) for f in fields)
                yield b if as_tuple else b[0]
            else:
                ids = range(start, end) if idx is None else idx.tolist()
                yield self._collate([self.dataset[j] for j in ids])

    def _worker_batches(self, order: torch.Tensor | None) -> Iterator[Any]:
        loader: torch.utils.data.DataLoader
        if self.world_size > 1:  # this shard's blocks, in the order every process draws
            ids = torch.arange(self.n) if order is None else order
            loader = torch.utils.data.DataLoader(
                self.dataset,  # type: ignore[arg-type]
                batch_sampler=[ids[s:e].tolist() for s, e in self._bounds()],
                num_workers=self.num_workers, collate_fn=self._collate)
            yield from loader
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,  # type: ignore[arg-type]
            batch_size=self.bs,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            collate_fn=self._collate,
            generator=self._generator,
        )
        yield from loader

    def __repr__(self) -> str:
        shard = f", shard={self.rank}/{self.world_size}" if self.world_size > 1 else ""
        return (
            f"{type(self).__name__}(n={self.n}, bs={self.bs}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, device={self.device}{shard})"
        )
