"""`DataLoader` and `DataLoaders`: fastai's batching API over plain in-memory datasets.

The loader runs in the main process. When every item is a tuple of equally shaped tensors
or numbers (the chapter's `L` of `(tensor, tensor)` or `(tensor, int)`), the dataset is
stacked once into one tensor per field, so a batch costs one slice or `index_select`
instead of a Python loop over its items. Anything else goes through torch's
`default_collate`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import default_collate

from rnnkit.utils import L, default_device, to_device

__all__ = ["DataLoader", "DataLoaders", "TfmdDL"]

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


class DataLoader(DeviceMixin):
    """Iterate over a dataset in batches of `bs` items, optionally shuffled each epoch and moved to `device`.

    Args:
        dataset: an indexable sequence with `len`, of tuples `(x, y)` or of single tensors/numbers.
        seed: an int or a `torch.Generator` that makes shuffling reproducible; with None,
            shuffling draws from torch's global generator (so `torch.manual_seed` fixes it).
        collate_fn: turns a list of items into a batch; replaces the stacked fast path.

    Unshuffled batches from the fast path are views into one stacked copy of the dataset:
    clone a batch before changing it in place.
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
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}.")
        if seed is None or isinstance(seed, torch.Generator):
            self._generator = seed
        else:
            self._generator = torch.Generator().manual_seed(int(seed))
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
            raise ValueError("DataLoader got an empty dataset; pass at least one item.")
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
            raise ValueError(f"bs must be a positive int, got {bs!r}.")
        self._bs = bs

    @property
    def n(self) -> int:
        """Number of items in the dataset."""
        return len(self.dataset)

    def __len__(self) -> int:
        n, bs = self.n, self.bs
        return n // bs if self.drop_last else -(-n // bs)

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
        return res

    def one_batch(self) -> Any:
        """The first batch of a fresh pass (a random one when shuffled)."""
        if len(self) == 0:
            raise ValueError(
                f"DataLoader has no full batch: {self.n} items, bs={self.bs}, drop_last=True; "
                "lower bs or set drop_last=False."
            )
        it = self.__iter__()
        try:
            return next(it)
        finally:
            it.close()

    def _stacked_fields(self) -> tuple[tuple[torch.Tensor, ...], bool] | None:
        # Checked once per dataset, on first use: construction stays cheap.
        if not self._stack_checked:
            self._stacked = None if self.collate_fn is not None else _stack_dataset(self.dataset, self.n)
            self._stack_checked = True
        return self._stacked

    def _epoch_order(self) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        return torch.randperm(self.n, generator=self._generator)

    def _collate(self, items: list[Any]) -> Any:
        if self.collate_fn is not None:
            return self.collate_fn(items)
        b = default_collate(items)
        return tuple(b) if isinstance(items[0], (tuple, list)) else b

    def __iter__(self) -> Generator[Any, None, None]:
        batches = self._worker_batches() if self.num_workers > 0 else self._main_batches()
        for b in batches:
            yield b if self.device is None else to_device(b, self.device)

    def _main_batches(self) -> Iterator[Any]:
        n, bs = self.n, self.bs
        order = self._epoch_order()
        stacked = self._stacked_fields()
        for i in range(len(self)):
            start, end = i * bs, min((i + 1) * bs, n)
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

    def _worker_batches(self) -> Iterator[Any]:
        loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
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
        return (
            f"{type(self).__name__}(n={self.n}, bs={self.bs}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, device={self.device})"
        )


def _per_dataset(name: str, value: Any, n: int) -> tuple[Any, ...]:
    """One value for each of `n` datasets: a tuple/list is taken per dataset, anything else is repeated."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(
                f"from_dsets got {name}={value!r}: {len(value)} values for {n} datasets; "
                "pass one value for all or exactly one per dataset."
            )
        return tuple(value)
    return (value,) * n


TfmdDL = DataLoader  # fastai's name for its loader: `TfmdDL(TensorDataset(x, y), bs=16)` runs unchanged


class DataLoaders:
    """A training loader, a validation loader and any others, with the device and path they share."""

    def __init__(
        self, *loaders: DataLoader, path: str | Path = ".", device: torch.device | str | None = None
    ) -> None:
        self.loaders = list(loaders)
        self.path = Path(path)
        self._n_inp: int | None = None
        self._device: torch.device | None = None
        if device is not None:
            self.device = device

    def __getitem__(self, i: int) -> DataLoader:
        try:
            return self.loaders[i]
        except IndexError:
            raise IndexError(
                f"DataLoaders has {len(self.loaders)} loader(s), so there is no loader {i}; "
                "pass a validation loader as the second argument."
            ) from None

    def __len__(self) -> int:
        return len(self.loaders)

    def __iter__(self) -> Iterator[DataLoader]:
        return iter(self.loaders)

    @property
    def n_inp(self) -> int | None:
        """How many leading elements of a batch are inputs; the rest are targets.

        Unless set, fastai's default: all but the last element of the training set's items
        (1 for `(x, y)`, 2 for `(x1, x2, y)`), or None when the items cannot be read here (the
        Learner then applies the same rule to each batch).
        """
        if self._n_inp is None:
            ds: Any = getattr(self.loaders[0], "dataset", None) if self.loaders else None
            n = getattr(ds, "n_inp", None)
            if n is None and hasattr(ds, "__getitem__") and hasattr(ds, "__len__") and len(ds) > 0:
                item = ds[0]
                n = len(item) - 1 if isinstance(item, (tuple, list)) and len(item) > 1 else 1
            if n is not None:
                self._n_inp = int(n)
        return self._n_inp

    @n_inp.setter
    def n_inp(self, n: int | None) -> None:
        if n is not None and (not isinstance(n, int) or n < 0):
            raise ValueError(f"n_inp is the number of inputs in a batch, a non-negative int; got {n!r}")
        self._n_inp = n

    @property
    def train(self) -> DataLoader:
        """The training loader (index 0)."""
        return self[0]

    @property
    def valid(self) -> DataLoader:
        """The validation loader (index 1)."""
        return self[1]

    @property
    def train_ds(self) -> Sequence[Any]:
        """The training dataset."""
        return self.train.dataset

    @property
    def valid_ds(self) -> Sequence[Any]:
        """The validation dataset."""
        return self.valid.dataset

    @property
    def device(self) -> torch.device | None:
        """The device the loaders send batches to (the training loader's unless one was set here)."""
        if self._device is not None:
            return self._device
        return getattr(self.loaders[0], "device", None) if self.loaders else None

    @device.setter
    def device(self, device: torch.device | str | None) -> None:
        self._device = None if device is None else torch.device(device)
        for dl in self.loaders:
            if hasattr(dl, "to"):
                dl.to(self._device)
            else:
                dl.device = self._device

    def to(self, device: torch.device | str | None) -> DataLoaders:
        """Send every loader's batches to `device`; returns self."""
        self.device = device
        return self

    def one_batch(self) -> Any:
        """A batch from the training loader."""
        return self.train.one_batch()

    @classmethod
    def from_dsets(
        cls,
        *ds: Sequence[Any],
        path: str | Path = ".",
        bs: int = 64,
        shuffle: bool | Sequence[bool] | None = None,
        drop_last: bool | Sequence[bool] | None = None,
        device: torch.device | str | None = None,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> DataLoaders:
        """One `DataLoader` per dataset; the first (training) one shuffles and drops its last partial batch.

        A `shuffle`/`drop_last` (or other loader argument) given as one value applies to all
        datasets; a tuple gives one value per dataset. `device=None` means `default_device()`.
        """
        if not ds:
            raise ValueError("from_dsets needs at least one dataset, e.g. from_dsets(train_ds, valid_ds).")
        n = len(ds)
        train_only = (True,) + (False,) * (n - 1)
        args = dict(
            bs=bs,
            shuffle=train_only if shuffle is None else shuffle,
            drop_last=train_only if drop_last is None else drop_last,
            num_workers=num_workers,
            **kwargs,
        )
        per_ds = {k: _per_dataset(k, v, n) for k, v in args.items()}
        device = default_device() if device is None else torch.device(device)
        loaders = [DataLoader(d, device=device, **{k: v[i] for k, v in per_ds.items()}) for i, d in enumerate(ds)]
        return cls(*loaders, path=path, device=device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.loaders))})"
