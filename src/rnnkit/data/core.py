"""`DataLoaders`: fastai's bundle of a training loader, a validation loader and any others.

The loaders share a device and a path; `from_dsets` builds one `DataLoader` per dataset. `DataLoader`
itself (and `DeviceMixin`) live in `rnnkit.data.load` and are importable from here, as in fastai.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rnnkit.data.load import DataLoader, DeviceMixin
from rnnkit.devices import default_device
from rnnkit.errors import UserError

__all__ = ["DataLoaders", "TfmdDL"]
__all__ += ["DataLoader", "DeviceMixin"]  # defined in rnnkit.data.load


def _per_dataset(name: str, value: Any, n: int) -> tuple[Any, ...]:
    """One value for each of `n` datasets: a tuple/list is taken per dataset, anything else is repeated."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise UserError(
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
            raise UserError(f"n_inp is the number of inputs in a batch, a non-negative int; got {n!r}")
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
            raise UserError("from_dsets needs at least one dataset, e.g. from_dsets(train_ds, valid_ds).")
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
