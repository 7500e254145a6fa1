"""Optimizer recipes: the fastai factories `SGD`, `RMSProp` and `Adam` as lists of steppers.

The order of a recipe's list is the algorithm; each factory returns an `Optimizer`.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Iterable, Sequence

from torch import Tensor

from rnnkit.optim.optimizer import Optimizer
from rnnkit.optim.steppers import (adam_step, average_grad, average_sqr_grad, l2_reg,
                                   momentum_step, rms_prop_step, sgd_step, step_stat, weight_decay)

__all__ = ["SGD", "RMSProp", "Adam"]

Params = Iterable[Tensor] | Iterable[Sequence[Tensor]]


def SGD(params: Params, lr: float | slice, mom: float = 0.0, wd: float = 0.0,
        decouple_wd: bool = True) -> Optimizer:
    """SGD with optional momentum (no dampening) and weight decay."""
    cbs: list[Any] = [weight_decay if decouple_wd else l2_reg]
    cbs += [average_grad, momentum_step] if mom else [sgd_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, wd=wd)


def RMSProp(params: Params, lr: float | slice, sqr_mom: float = 0.99, mom: float = 0.0,
            wd: float = 0.0, eps: float = 1e-8, decouple_wd: bool = True) -> Optimizer:
    """RMSProp, optionally stepping along a momentum average of the gradients."""
    cbs: list[Any] = [weight_decay if decouple_wd else l2_reg]
    cbs += [average_grad] if mom else []
    cbs += [average_sqr_grad, rms_prop_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, wd=wd, eps=eps)


def Adam(params: Params, lr: float | slice, mom: float = 0.9, sqr_mom: float = 0.99,
         eps: float = 1e-5, wd: float = 0.01, decouple_wd: bool = True) -> Optimizer:
    """Adam (AdamW when `decouple_wd`), with fastai's defaults."""
    cbs: list[Any] = [weight_decay if decouple_wd else l2_reg]
    cbs += [partial(average_grad, dampening=True), average_sqr_grad, step_stat, adam_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)
