"""More optimizers as stepper chains: RAdam, QHAdam, LAMB and LARC, with fastai's names and defaults.

- RAdam: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond" (2019).
- QHAdam: Ma & Yarats, "Quasi-hyperbolic momentum and Adam for deep learning" (2018).
- LAMB: You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes"
  (2019); as in fastai, weight decay is applied by the chain's first stepper, outside the
  trust ratio.
- LARC/LARS: You et al., "Large Batch Training of Convolutional Networks" (2017).

Every stepper here has a foreach twin, so these chains take the batched path of
`Optimizer.step`. Trust ratios are computed on tensors, never read back with `.item()`.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.optim.adam import adam_denominator, debias, step_stat
from rnnkit.optim.optimizer import Optimizer
from rnnkit.optim.rmsprop import average_sqr_grad
from rnnkit.optim.sgd import average_grad, l2_reg, weight_decay
from rnnkit.optim.stepper import (buffer_like, buffers_like, foreach_of, grad_of, sqrt_into, stepper,
                                  with_scratch)

__all__ = ["radam_step", "qhadam_step", "lamb_step", "larc_layer_lr", "larc_step",
           "RAdam", "QHAdam", "Lamb", "Larc"]

Tensors = list[Tensor]
Params = Iterable[Tensor] | Iterable[Sequence[Tensor]]


def _radam_rect(sqr_mom: float, step: int) -> float | None:
    """RAdam's variance rectification factor after `step` steps, or None while it is undefined."""
    r_inf = 2 / (1 - sqr_mom) - 1
    r = r_inf - 2 * step * sqr_mom**step / (1 - sqr_mom**step)
    if r <= 5:  # as torch.optim.RAdam and fastai: the paper's threshold 4 is unstable in practice
        return None
    return math.sqrt((r - 4) * (r - 2) * r_inf / ((r_inf - 4) * (r_inf - 2) * r))


def _softplus_(t: Tensor, beta: float) -> Tensor:
    # The public op makes a temporary; RAdam's `beta` (a softplus denominator) is off by default and rare.
    return t.copy_(F.softplus(t, beta, 20))


@with_scratch
@stepper(beta=0.0)
def radam_step(p: Tensor, lr: float, mom: float, step: int, sqr_mom: float, grad_avg: Tensor,
               sqr_avg: Tensor, eps: float, beta: float, **kw: Any) -> None:
    """RAdam: Adam with the adaptive step rectified, and plain momentum SGD while it cannot be."""
    debias1 = debias(mom, 1 - mom, step)
    rect = _radam_rect(sqr_mom, step)
    if rect is None:
        p.data.add_(grad_avg, alpha=-lr / debias1)
        return
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    denom = torch.div(sqr_avg, debias2, out=buffer_like(sqr_avg, kw.get("scratch"))).sqrt_().add_(eps)
    if beta:
        _softplus_(denom, beta)
    p.data.addcdiv_(grad_avg, denom, value=-lr * rect / debias1)


@with_scratch
@foreach_of(radam_step)
def _radam_step_foreach(ps: Tensors, grads: Tensors, *, lr: float, mom: float, step: int,
                        sqr_mom: float, grad_avg: Tensors, sqr_avg: Tensors, eps: float,
                        beta: float, **kw: Any) -> None:
    debias1 = debias(mom, 1 - mom, step)
    rect = _radam_rect(sqr_mom, step)
    if rect is None:
        torch._foreach_add_(ps, grad_avg, alpha=-lr / debias1)
        return
    root2 = math.sqrt(debias(sqr_mom, 1 - sqr_mom, step))
    denom = sqrt_into(buffers_like(sqr_avg, kw.get("scratch")), sqr_avg)
    if beta:  # softplus is not linear: debias first
        torch._foreach_div_(denom, root2)
        torch._foreach_add_(denom, eps)
        for d in denom:
            _softplus_(d, beta)
        root2 = 1.0
    else:  # sqrt(sqr_avg/debias2) + eps == (sqrt(sqr_avg) + eps*root2) / root2
        torch._foreach_add_(denom, eps * root2)
    torch._foreach_addcdiv_(ps, grad_avg, denom, value=-lr * rect * root2 / debias1)


@with_scratch
@stepper(nu_1=0.7, nu_2=1.0)
def qhadam_step(p: Tensor, lr: float, mom: float, sqr_mom: float, sqr_avg: Tensor,
                nu_1: float, nu_2: float, step: int, grad_avg: Tensor, eps: float,
                **kw: Any) -> None:
    """QHAdam: step along a `nu_1` mix of gradient and debiased average, over a `nu_2` mix of squares."""
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    g = grad_of(p)
    num = torch.mul(g, 1 - nu_1, out=buffer_like(g, kw.get("scratch"), 0)).add_(grad_avg, alpha=nu_1 / debias1)
    den = torch.mul(g, g, out=buffer_like(g, kw.get("scratch"), 1)).mul_(1 - nu_2)
    den.add_(sqr_avg, alpha=nu_2 / debias2).sqrt_().add_(eps)
    p.data.addcdiv_(num, den, value=-lr)


@with_scratch
@foreach_of(qhadam_step)
def _qhadam_step_foreach(ps: Tensors, grads: Tensors, *, lr: float, mom: float, sqr_mom: float,
                         sqr_avg: Tensors, nu_1: float, nu_2: float, step: int,
                         grad_avg: Tensors, eps: float, **kw: Any) -> None:
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    num, den = buffers_like(grads, kw.get("scratch"), 0), buffers_like(grads, kw.get("scratch"), 1)
    torch._foreach_copy_(num, grads)
    torch._foreach_mul_(num, 1 - nu_1)
    torch._foreach_add_(num, grad_avg, alpha=nu_1 / debias1)
    torch._foreach_copy_(den, grads)
    torch._foreach_mul_(den, grads)
    torch._foreach_mul_(den, 1 - nu_2)
    torch._foreach_add_(den, sqr_avg, alpha=nu_2 / debias2)
    torch._foreach_sqrt_(den)
    torch._foreach_add_(den, eps)
    torch._foreach_addcdiv_(ps, num, den, value=-lr)


def _trust_ratio(p_norm: Tensor, u_norm: Tensor, clip: float = 10.0) -> Tensor:
    """`||p|| / ||u||` clipped at `clip`, and 1 where either norm is zero (as a tensor: no sync)."""
    ok = (p_norm > 0) & (u_norm > 0)
    return torch.where(ok, (p_norm / torch.where(ok, u_norm, 1.0)).clamp(max=clip), 1.0)


@with_scratch
@stepper()
def lamb_step(p: Tensor, lr: float, mom: float, step: int, sqr_mom: float, grad_avg: Tensor,
              sqr_avg: Tensor, eps: float, **kw: Any) -> None:
    """LAMB: the Adam update scaled by the layer's trust ratio `||p|| / ||update||` (at most 10)."""
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    u = torch.div(sqr_avg, debias2, out=buffer_like(sqr_avg, kw.get("scratch"))).sqrt_().add_(eps)
    torch.div(grad_avg, u, out=u).div_(debias1)
    q = _trust_ratio(p.data.norm(), u.norm())
    p.data.add_(u.mul_(q), alpha=-lr)


@with_scratch
@foreach_of(lamb_step)
def _lamb_step_foreach(ps: Tensors, grads: Tensors, *, lr: float, mom: float, step: int,
                       sqr_mom: float, grad_avg: Tensors, sqr_avg: Tensors, eps: float,
                       **kw: Any) -> None:
    debias1 = debias(mom, 1 - mom, step)
    u, root2 = adam_denominator(sqr_avg, sqr_mom, step, eps, kw.get("scratch"))
    torch._foreach_reciprocal_(u)  # u = root2/debias1 * m / (sqrt(v) + eps*root2)
    torch._foreach_mul_(u, grad_avg)
    torch._foreach_mul_(u, root2 / debias1)
    q = _trust_ratio(torch.stack(torch._foreach_norm(ps)), torch.stack(torch._foreach_norm(u)))
    torch._foreach_mul_(u, list(q.unbind()))
    torch._foreach_add_(ps, u, alpha=-lr)


def _larc_lr(p_norm: Tensor, g_norm: Tensor, lr: float, trust_coeff: float, wd: float, eps: float,
             clip: bool) -> Tensor:
    """LARS's layer-wise lr from the norms (new tensors: changed in place), as float64 where the
    device has it, so that a clipped one is `lr` exactly."""
    local_lr = p_norm.mul(lr * trust_coeff).div_(g_norm.add_(p_norm, alpha=wd).add_(eps))
    local_lr = local_lr.to(torch.float32 if local_lr.device.type == "mps" else torch.float64)
    return local_lr.clamp_(max=lr) if clip else local_lr


@stepper(trust_coeff=0.02, wd=0.0, eps=1e-8)
def larc_layer_lr(p: Tensor, lr: float, trust_coeff: float, wd: float, eps: float,
                  clip: bool = True, **_: Any) -> dict[str, Tensor]:
    """LARS's layer-wise lr `lr * trust_coeff * ||p|| / (||g|| + wd*||p|| + eps)` (at most `lr` if `clip`).

    `local_lr` is kept as a 0-dim float64 tensor, never read back with `.item()`: clipped, it
    equals `lr` exactly, as fastai's `min(lr, local_lr)` does, so `state[p]['local_lr'] == lr`.
    """
    return {"local_lr": _larc_lr(p.data.norm(), grad_of(p).norm(), lr, trust_coeff, wd, eps, clip)}


@foreach_of(larc_layer_lr)
def _larc_layer_lr_foreach(ps: Tensors, grads: Tensors, *, lr: float, trust_coeff: float,
                           wd: float, eps: float, clip: bool = True, **_: Any) -> dict[str, Tensors]:
    p_norm, g_norm = torch.stack(torch._foreach_norm(ps)), torch.stack(torch._foreach_norm(grads))
    return {"local_lr": list(_larc_lr(p_norm, g_norm, lr, trust_coeff, wd, eps, clip).unbind())}


@stepper()
def larc_step(p: Tensor, local_lr: Tensor | float, grad_avg: Tensor | None = None, **_: Any) -> None:
    """Move `p` against its gradient (or `grad_avg`) by its layer-wise `local_lr` (a tensor or a number)."""
    src = grad_of(p) if grad_avg is None else grad_avg
    if isinstance(local_lr, Tensor):
        p.data.addcmul_(src, local_lr, value=-1)
    else:
        p.data.add_(src, alpha=-local_lr)


@foreach_of(larc_step)
def _larc_step_foreach(ps: Tensors, grads: Tensors, *, local_lr: Tensors,
                       grad_avg: Tensors | None = None, **_: Any) -> None:
    torch._foreach_addcmul_(ps, grads if grad_avg is None else grad_avg, local_lr, value=-1)


def _wd(decouple_wd: bool) -> Any:
    return weight_decay if decouple_wd else l2_reg


_ADAM_STATS: list[Any] = [partial(average_grad, dampening=True), average_sqr_grad, step_stat]


def RAdam(params: Params, lr: float | slice, mom: float = 0.9, sqr_mom: float = 0.99,
          eps: float = 1e-5, wd: float = 0.0, beta: float = 0.0,
          decouple_wd: bool = True) -> Optimizer:
    """RAdam, optionally passing the denominator through a softplus of sharpness `beta`."""
    cbs = [_wd(decouple_wd), *_ADAM_STATS, radam_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd, beta=beta)


def QHAdam(params: Params, lr: float | slice, mom: float = 0.999, sqr_mom: float = 0.999,
           nu_1: float = 0.7, nu_2: float = 1.0, eps: float = 1e-8, wd: float = 0.0,
           decouple_wd: bool = True) -> Optimizer:
    """QHAdam with the paper's recommended `nu_1=0.7, nu_2=1.0`."""
    cbs = [_wd(decouple_wd), partial(average_grad, dampening=True),
           partial(average_sqr_grad, dampening=True), step_stat, qhadam_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, nu_1=nu_1, nu_2=nu_2, eps=eps,
                     wd=wd)


def Lamb(params: Params, lr: float | slice, mom: float = 0.9, sqr_mom: float = 0.99,
         eps: float = 1e-5, wd: float = 0.0, decouple_wd: bool = True) -> Optimizer:
    """LAMB: Adam with a layer-wise trust ratio, for large batches."""
    cbs = [_wd(decouple_wd), *_ADAM_STATS, lamb_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)


def Larc(params: Params, lr: float | slice, mom: float = 0.9, clip: bool = True,
         trust_coeff: float = 0.02, eps: float = 1e-8, wd: float = 0.0,
         decouple_wd: bool = True) -> Optimizer:
    """SGD with LARS layer-wise learning rates (LARC: clipped at `lr` when `clip`)."""
    cbs: list[Any] = [_wd(decouple_wd)] + ([average_grad] if mom else [])
    cbs += [partial(larc_layer_lr, clip=clip), larc_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, trust_coeff=trust_coeff, eps=eps, wd=wd)
