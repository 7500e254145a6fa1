"""fastai's optimizer factories `SGD`, `RMSProp` and `Adam` in one namespace; each is defined with its
steppers and fused step in its family's module (`sgd.py`, `rmsprop.py`, `adam.py`)."""
from __future__ import annotations

from rnnkit.optim.adam import Adam
from rnnkit.optim.rmsprop import RMSProp
from rnnkit.optim.sgd import SGD

__all__ = ["SGD", "RMSProp", "Adam"]
