"""SGD and momentum, and the weight decay every recipe starts with: steppers, foreach twins, the fused
step and the fastai recipe `SGD`.

`fused_sgd` is SGD with momentum (no dampening) and weight decay in one `torch._fused_sgd_` kernel per
bucket of parameters: `grad_avg` starts at zero so the first step sets it to the gradient, as torch's SGD
does, which the kernel computes with our zero-initialised buffers and `is_first_step=False`.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from rnnkit.optim.optimizer import Optimizer
from rnnkit.optim.stepper import foreach_of, grad_of, stepper, zeros_like_all

__all__ = ["weight_decay", "l2_reg", "sgd_step", "average_grad", "momentum_step", "fused_sgd", "SGD"]

Tensors = list[Tensor]
Params = Iterable[Tensor] | Iterable[Sequence[Tensor]]


@stepper(wd=0.0)
def weight_decay(p: Tensor, lr: float, wd: float, do_wd: bool = True, **_: Any) -> None:
    """Decoupled weight decay (Loshchilov & Hutter, 2017): shrink `p` by a factor `1 - lr*wd`."""
    if do_wd and wd != 0:
        p.data.mul_(1 - lr * wd)


@foreach_of(weight_decay)
def _weight_decay_foreach(ps: Tensors, grads: Tensors, *, lr: float, wd: float,
                          do_wd: bool = True, **_: Any) -> None:
    if do_wd and wd != 0:
        torch._foreach_mul_(ps, 1 - lr * wd)


@stepper(wd=0.0)
def l2_reg(p: Tensor, lr: float, wd: float, do_wd: bool = True, **_: Any) -> None:
    """L2 regularisation: add `wd * p` to the gradient."""
    if do_wd and wd != 0:
        grad_of(p).add_(p.data, alpha=wd)


@foreach_of(l2_reg)
def _l2_reg_foreach(ps: Tensors, grads: Tensors, *, lr: float, wd: float, do_wd: bool = True,
                    **_: Any) -> None:
    if do_wd and wd != 0:
        torch._foreach_add_(grads, ps, alpha=wd)


@stepper()
def sgd_step(p: Tensor, lr: float, **_: Any) -> None:
    """Plain SGD: move `p` against its gradient by `lr`."""
    p.data.add_(grad_of(p), alpha=-lr)


@foreach_of(sgd_step)
def _sgd_step_foreach(ps: Tensors, grads: Tensors, *, lr: float, **_: Any) -> None:
    torch._foreach_add_(ps, grads, alpha=-lr)


@stepper(mom=0.9)
def average_grad(p: Tensor, mom: float, dampening: bool = False,
                 grad_avg: Tensor | None = None, **_: Any) -> dict[str, Tensor]:
    """Keep a moving average of the gradients in state `grad_avg` (damped by `1-mom` if `dampening`)."""
    g = grad_of(p)
    if grad_avg is None:
        grad_avg = torch.zeros_like(g)
    damp = 1 - mom if dampening else 1.0
    grad_avg.mul_(mom).add_(g, alpha=damp)
    return {"grad_avg": grad_avg}


@foreach_of(average_grad)
def _average_grad_foreach(ps: Tensors, grads: Tensors, *, mom: float, dampening: bool = False,
                          grad_avg: Tensors | None = None, **_: Any) -> dict[str, Tensors]:
    if grad_avg is None:
        grad_avg = zeros_like_all(grads)
    torch._foreach_mul_(grad_avg, mom)
    torch._foreach_add_(grad_avg, grads, alpha=1 - mom if dampening else 1.0)
    return {"grad_avg": grad_avg}


@stepper()
def momentum_step(p: Tensor, lr: float, grad_avg: Tensor, **_: Any) -> None:
    """SGD with momentum: move `p` against the averaged gradient `grad_avg` by `lr`."""
    p.data.add_(grad_avg, alpha=-lr)


@foreach_of(momentum_step)
def _momentum_step_foreach(ps: Tensors, grads: Tensors, *, lr: float, grad_avg: Tensors,
                           **_: Any) -> None:
    torch._foreach_add_(ps, grad_avg, alpha=-lr)


def fused_sgd(ps: Tensors, grads: Tensors, *, lr: float, mom: float, wd: float,
              decouple_wd: bool, do_wd: bool = True, grad_avg: Tensors | None = None,
              **_: Any) -> dict[str, Any] | None:
    """`[weight_decay or l2_reg, average_grad, momentum_step]` on a bucket of parameters in one fused
    kernel; None (the twins run instead) without momentum, where the kernel keeps no buffer but
    `grad_avg` must follow the gradients."""
    if mom == 0:
        return None
    wd = wd if do_wd else 0.0
    grad_avg = zeros_like_all(grads) if grad_avg is None else grad_avg
    if decouple_wd and wd != 0:
        torch._foreach_mul_(ps, 1 - lr * wd)
    torch._fused_sgd_(ps, grads, grad_avg, weight_decay=0.0 if decouple_wd else wd, momentum=mom,
                      lr=lr, dampening=0.0, nesterov=False, maximize=False, is_first_step=False)
    return {"grad_avg": grad_avg}


def SGD(params: Params, lr: float | slice, mom: float = 0.0, wd: float = 0.0,
        decouple_wd: bool = True) -> Optimizer:
    """SGD with optional momentum (no dampening) and weight decay; with momentum its fast path is
    `fused_sgd`."""
    cbs: list[Any] = [weight_decay if decouple_wd else l2_reg]
    cbs += [average_grad, momentum_step] if mom else [sgd_step]
    fused = partial(fused_sgd, decouple_wd=decouple_wd) if mom else None
    return Optimizer(params, cbs, lr=lr, mom=mom, wd=wd, fused=fused)
