"""fastai's test helpers (`fastai.test_utils`), so fastai-style tests and notebooks run unchanged:
`RegModel`, `synth_dbunch`, `synth_learner` (a linear regression learned with SGD) and
`VerboseCallback` (prints each event)."""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from rnnkit.data.core import DataLoader, DataLoaders
from rnnkit.losses import MSELossFlat
from rnnkit.optim.recipes import SGD
from rnnkit.training.callback import Callback
from rnnkit.training.learner import Learner
from rnnkit.utils import default_device

__all__ = ["RegModel", "synth_dbunch", "synth_learner", "VerboseCallback"]


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
