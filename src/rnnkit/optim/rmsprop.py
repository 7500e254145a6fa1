"""RMSProp (Hinton's lecture 6e): steppers, foreach twins, the fused step and the fastai recipe `RMSProp`.

PyTorch has no fused RMSProp, but RMSProp is Adam with `beta1 = 0` (the first moment is the gradient)
and no bias correction, which the fused Adam kernel computes exactly at a step count where `beta2**step`
is 0: `fused_rmsprop` is one pass of that kernel.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from rnnkit.optim.optimizer import Optimizer
from rnnkit.optim.sgd import average_grad, l2_reg, weight_decay
from rnnkit.optim.stepper import (Scratch, buffer_like, buffers_like, foreach_of, grad_of, sqrt_into, stepper,
                                  with_scratch, zeros_like_all)

__all__ = ["average_sqr_grad", "rms_prop_step", "fused_rmsprop", "RMSProp"]

Tensors = list[Tensor]
Params = Iterable[Tensor] | Iterable[Sequence[Tensor]]


@stepper(sqr_mom=0.99)
def average_sqr_grad(p: Tensor, sqr_mom: float, dampening: bool = True,
                     sqr_avg: Tensor | None = None, **_: Any) -> dict[str, Tensor]:
    """Keep a moving average of the squared gradients in state `sqr_avg`."""
    g = grad_of(p)
    if sqr_avg is None:
        sqr_avg = torch.zeros_like(g)
    damp = 1 - sqr_mom if dampening else 1.0
    sqr_avg.mul_(sqr_mom).addcmul_(g, g, value=damp)
    return {"sqr_avg": sqr_avg}


@foreach_of(average_sqr_grad)
def _average_sqr_grad_foreach(ps: Tensors, grads: Tensors, *, sqr_mom: float,
                              dampening: bool = True, sqr_avg: Tensors | None = None,
                              **_: Any) -> dict[str, Tensors]:
    if sqr_avg is None:
        sqr_avg = zeros_like_all(grads)
    torch._foreach_mul_(sqr_avg, sqr_mom)
    torch._foreach_addcmul_(sqr_avg, grads, grads, value=1 - sqr_mom if dampening else 1.0)
    return {"sqr_avg": sqr_avg}


@with_scratch
@stepper(eps=1e-8)
def rms_prop_step(p: Tensor, lr: float, sqr_avg: Tensor, eps: float,
                  grad_avg: Tensor | None = None, **kw: Any) -> None:
    """RMSProp: divide the gradient (or `grad_avg` if present) by `sqrt(sqr_avg) + eps`."""
    denom = torch.sqrt(sqr_avg, out=buffer_like(sqr_avg, kw.get("scratch"))).add_(eps)
    p.data.addcdiv_(grad_of(p) if grad_avg is None else grad_avg, denom, value=-lr)


@with_scratch
@foreach_of(rms_prop_step)
def _rms_prop_step_foreach(ps: Tensors, grads: Tensors, *, lr: float, sqr_avg: Tensors,
                           eps: float, grad_avg: Tensors | None = None, **kw: Any) -> None:
    denom = sqrt_into(buffers_like(sqr_avg, kw.get("scratch")), sqr_avg)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(ps, grads if grad_avg is None else grad_avg, denom, value=-lr)


# A step count at which beta2**step is exactly 0 in floating point for any beta2 < 1.
NO_BIAS_CORRECTION = 1e30


def fused_rmsprop(ps: Tensors, grads: Tensors, *, lr: float, sqr_mom: float, eps: float,
                  wd: float, decouple_wd: bool, do_wd: bool = True,
                  sqr_avg: Tensors | None = None, scratch: Scratch | None = None,
                  **_: Any) -> dict[str, Any] | None:
    """`[weight_decay or l2_reg, average_sqr_grad, rms_prop_step]` on a bucket of parameters, as one pass
    of the fused Adam kernel; None (the twins run instead) for `sqr_mom` outside [0, 1)."""
    if not 0 <= sqr_mom < 1:
        return None
    sqr_avg = zeros_like_all(grads) if sqr_avg is None else sqr_avg
    # With beta1 = 0 the kernel writes the gradient here: `first.lerp_(grad, 1)`, which is the gradient
    # exactly whatever `first` held, unless it held NaN or inf; so it starts as zeros (the Scratch's are), in
    # a slot of its own that only ever holds gradients.
    first = scratch.like_all(grads, slot=2) if scratch is not None else zeros_like_all(grads)
    steps = [torch.tensor(NO_BIAS_CORRECTION, device=ps[0].device)] * len(ps)
    kernel = torch._fused_adamw_ if decouple_wd else torch._fused_adam_
    kernel(ps, grads, first, sqr_avg, [], steps, lr=lr, beta1=0.0, beta2=sqr_mom,
           weight_decay=wd if do_wd else 0.0, eps=eps, amsgrad=False, maximize=False)
    return {"sqr_avg": sqr_avg}


def RMSProp(params: Params, lr: float | slice, sqr_mom: float = 0.99, mom: float = 0.0,
            wd: float = 0.0, eps: float = 1e-8, decouple_wd: bool = True) -> Optimizer:
    """RMSProp, optionally stepping along a momentum average of the gradients; without momentum its
    fast path is `fused_rmsprop`."""
    cbs: list[Any] = [weight_decay if decouple_wd else l2_reg]
    cbs += [average_grad] if mom else []
    cbs += [average_sqr_grad, rms_prop_step]
    fused = None if mom else partial(fused_rmsprop, decouple_wd=decouple_wd)
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, wd=wd, eps=eps, fused=fused)
