"""Adam and AdamW (Kingma & Ba, 2014; Loshchilov & Hutter, 2017): steppers, foreach twins, the fused step
and the fastai recipe `Adam`.

fastai's step `p -= lr/debias1 * grad_avg / (sqrt(sqr_avg/debias2) + eps)`, with
`debias_i = 1 - beta_i**step`, is torch's AdamW update, and `weight_decay` shrinks `p` by `1 - lr*wd` as
AdamW does: `fused_adam` runs the whole chain in `torch._fused_adamw_` (with `l2_reg` first it is torch's
Adam with `weight_decay`: `torch._fused_adam_`). Unlike the `l2_reg` stepper, the kernel does not write
`wd * p` into `p.grad`; parameters and state are the same either way.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from rnnkit.optim.optimizer import Optimizer
from rnnkit.optim.rmsprop import average_sqr_grad
from rnnkit.optim.sgd import average_grad, l2_reg, weight_decay
from rnnkit.optim.stepper import (Scratch, buffer_like, buffers_like, foreach_of, sqrt_into, stepper, with_scratch,
                                  zeros_like_all)

__all__ = ["step_stat", "debias", "adam_denominator", "adam_step", "fused_adam", "Adam"]

Tensors = list[Tensor]
Params = Iterable[Tensor] | Iterable[Sequence[Tensor]]


@stepper()
def step_stat(p: Tensor, step: int = 0, **_: Any) -> dict[str, int]:
    """Count the steps taken for `p` in state `step` (a Python int, in both forms)."""
    return {"step": step + 1}


@foreach_of(step_stat)
def _step_stat_foreach(ps: Tensors, grads: Tensors, *, step: int = 0, **_: Any) -> dict[str, int]:
    return {"step": step + 1}


def debias(mom: float, damp: float, step: int) -> float:
    """Bias correction of a moving average with momentum `mom` and dampening `damp` after `step` steps."""
    return damp * (1 - mom**step) / (1 - mom)


def adam_denominator(sqr_avg: Tensors, sqr_mom: float, step: int, eps: float,
                     scratch: Scratch | None) -> tuple[Tensors, float]:
    """Adam's denominator for a batch of parameters, as `(sqrt(sqr_avg) + eps*root2, root2)` with
    `root2 = sqrt(debias2)`: since `sqrt(sqr_avg/debias2) + eps == (sqrt(sqr_avg) + eps*root2) / root2`,
    a step divides by it and multiplies by `root2`, two passes over the tensors fewer."""
    root2 = math.sqrt(debias(sqr_mom, 1 - sqr_mom, step))
    denom = sqrt_into(buffers_like(sqr_avg, scratch), sqr_avg)
    torch._foreach_add_(denom, eps * root2)
    return denom, root2


@with_scratch
@stepper()
def adam_step(p: Tensor, lr: float, mom: float, step: int, sqr_mom: float,
              grad_avg: Tensor, sqr_avg: Tensor, eps: float, **kw: Any) -> None:
    """Adam: step along the debiased `grad_avg` over the root of the debiased `sqr_avg` plus `eps`."""
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    denom = torch.div(sqr_avg, debias2, out=buffer_like(sqr_avg, kw.get("scratch"))).sqrt_().add_(eps)
    p.data.addcdiv_(grad_avg, denom, value=-lr / debias1)


@with_scratch
@foreach_of(adam_step)
def _adam_step_foreach(ps: Tensors, grads: Tensors, *, lr: float, mom: float, step: int,
                       sqr_mom: float, grad_avg: Tensors, sqr_avg: Tensors, eps: float,
                       **kw: Any) -> None:
    debias1 = debias(mom, 1 - mom, step)
    denom, root2 = adam_denominator(sqr_avg, sqr_mom, step, eps, kw.get("scratch"))
    torch._foreach_addcdiv_(ps, grad_avg, denom, value=-lr * root2 / debias1)


def fused_adam(ps: Tensors, grads: Tensors, *, lr: float, mom: float, sqr_mom: float, eps: float,
               wd: float, decouple_wd: bool, do_wd: bool = True, step: int = 0,
               grad_avg: Tensors | None = None, sqr_avg: Tensors | None = None,
               **_: Any) -> dict[str, Any]:
    """`[weight_decay or l2_reg, partial(average_grad, dampening=True), average_sqr_grad, step_stat,
    adam_step]` on a bucket of parameters, in one fused kernel."""
    grad_avg = zeros_like_all(grads) if grad_avg is None else grad_avg
    sqr_avg = zeros_like_all(grads) if sqr_avg is None else sqr_avg
    step += 1
    # The kernel reads the step count from a tensor; one tensor serves the whole bucket.
    steps = [torch.tensor(float(step), device=ps[0].device)] * len(ps)
    kernel = torch._fused_adamw_ if decouple_wd else torch._fused_adam_
    kernel(ps, grads, grad_avg, sqr_avg, [], steps, lr=lr, beta1=mom, beta2=sqr_mom,
           weight_decay=wd if do_wd else 0.0, eps=eps, amsgrad=False, maximize=False)
    return {"grad_avg": grad_avg, "sqr_avg": sqr_avg, "step": step}


def Adam(params: Params, lr: float | slice, mom: float = 0.9, sqr_mom: float = 0.99,
         eps: float = 1e-5, wd: float = 0.01, decouple_wd: bool = True) -> Optimizer:
    """Adam (AdamW when `decouple_wd`), with fastai's defaults; its fast path is `fused_adam`."""
    cbs: list[Any] = [weight_decay if decouple_wd else l2_reg]
    cbs += [partial(average_grad, dampening=True), average_sqr_grad, step_stat, adam_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd,
                     fused=partial(fused_adam, decouple_wd=decouple_wd))
