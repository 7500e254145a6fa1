"""fastai's test helpers (`fastai.test_utils`), so fastai-style tests and notebooks run unchanged:
`RegModel`, `synth_dbunch`, `synth_learner` (a linear regression learned with SGD) and
`VerboseCallback` (prints each event); and fastcore's `equals`/`test_eq`/`test_ne` made to compare
tensors as fastai does (fastai patches `Tensor.__array_eq__` for that; rnnkit patches nothing, so
these versions, which `rnnkit.all` exports over fastcore's, compare tensors themselves)."""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fastcore import test as _fc_test

from rnnkit.data.core import DataLoader, DataLoaders
from rnnkit.losses import MSELossFlat
from rnnkit.optim.recipes import SGD
from rnnkit.training.callback import Callback
from rnnkit.training.learner import Learner
from rnnkit.utils import L, default_device

__all__ = ["RegModel", "synth_dbunch", "synth_learner", "VerboseCallback", "equals", "test_eq", "test_ne"]


class RegModel(nn.Module):
    """`y = a * x + b` with two scalar parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Parameter(torch.randn(1)), nn.Parameter(torch.randn(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.a + self.b


def synth_dbunch(a: float = 2, b: float = 3, bs: int = 16, n_train: int = 10, n_valid: int = 2,
                 cuda: bool = False) -> DataLoaders:
    """`n_train`/`n_valid` batches of `(x, a*x + b + noise)`, x of shape (bs, 1); training shuffled."""

    def get_data(n: int) -> Any:  # a TensorDataset: indexable and sized, as the loader needs
        x = torch.randn(int(bs * n), 1)
        return TensorDataset(x, a * x + b + 0.1 * torch.randn(int(bs * n), 1))

    train_dl = DataLoader(get_data(n_train), bs=bs, shuffle=True)
    valid_dl = DataLoader(get_data(n_valid), bs=bs)
    return DataLoaders(train_dl, valid_dl, device=default_device() if cuda else None)


def synth_learner(n_trn: int = 10, n_val: int = 2, cuda: bool = False, lr: float = 1e-3, data: Any = None,
                  model: nn.Module | None = None, **kwargs: Any) -> Learner:
    """A `Learner` fitting `RegModel` to `synth_dbunch` with `MSELossFlat` and SGD with momentum 0.9."""
    if data is None:
        data = synth_dbunch(n_train=n_trn, n_valid=n_val, cuda=cuda)
    if model is None:
        model = RegModel()
    return Learner(data, model, lr=lr, loss_func=MSELossFlat(), opt_func=partial(SGD, mom=0.9), **kwargs)


class VerboseCallback(Callback):
    """Print the name of each event as it fires."""

    def __call__(self, event_name: str) -> Any:
        print(event_name)
        return super().__call__(event_name)


def _detached(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, L):
        return L(_detached(o) for o in x)
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_detached(o) for o in x)
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    return x


def equals(a: Any, b: Any) -> bool:
    """fastcore's `equals`, with tensors compared as fastai compares them (`torch.equal`, or `==` for a
    0-d tensor), parameters that require grad included."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        a, b = a.detach(), b.detach()
        return bool(a == b) if a.dim() == 0 and b.dim() == 0 else torch.equal(a, b)
    if isinstance(a, (list, tuple, L)) and isinstance(b, (list, tuple, L)):
        return len(a) == len(b) and all(equals(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equals(a[k], b[k]) for k in a)
    return bool(_fc_test.equals(_detached(a), _detached(b)))


def nequals(a: Any, b: Any) -> bool:
    """Not `equals`."""
    return not equals(a, b)


def test_eq(a: Any, b: Any) -> None:
    """`assert a == b`, as fastcore's `test_eq`, comparing tensors as fastai does."""
    _fc_test.test(a, b, equals, "==")


def test_ne(a: Any, b: Any) -> None:
    """`assert a != b`, as fastcore's `test_ne`, comparing tensors as fastai does."""
    _fc_test.test(a, b, nequals, "!=")
