"""Optimizer steppers: small functions composed by `Optimizer` into an update rule.

A stepper takes one parameter `p`, then its hyper-parameters and per-parameter state in
fastai's order (so `weight_decay(p, lr, wd)` works as in fastai, and so do keywords), changes
`p.data` (or `p.grad.data`) in place and returns a dict of new state, or None. Working on
`.data` lets a user call a stepper on a parameter that requires grad outside `torch.no_grad()`.
`Optimizer.step` calls every stepper as `cb(p, **{**state, **hypers})`, so a stepper picks
the keys it needs and swallows the rest with `**_`.

Each built-in stepper also has a batched twin, `stepper.foreach`, registered with
`@foreach_of(stepper)`: the same keywords, but it takes a list of parameters and their
gradients `(ps, grads)`, per-parameter state as lists of tensors, and works with
`torch._foreach_*` operations. `Optimizer.step` uses the twins when every stepper of a
chain has one (see `rnnkit.optim.foreach`); like PyTorch's `adam.py`, the two forms are
tested to agree. State that is not a tensor (the `step` count) is one Python value shared by
the parameters a twin is called with.

Adam is from Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2014); decoupled
weight decay from Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2017).
"""
from __future__ import annotations

import inspect
import math
import threading
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

__all__ = [
    "stepper", "foreach_of", "sgd_step", "weight_decay", "l2_reg", "average_grad",
    "average_sqr_grad", "momentum_step", "rms_prop_step", "step_stat", "debias", "adam_step",
]

F = TypeVar("F", bound=Callable[..., Any])
Tensors = list[Tensor]


def stepper(**defaults: Any) -> Callable[[F], F]:
    """Decorator declaring a stepper's default hyper-parameters as `f.defaults`."""
    def decorate(f: F) -> F:
        params = inspect.signature(f).parameters
        keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        for name in defaults:
            if name not in params or params[name].kind not in keyword_kinds:
                raise TypeError(
                    f"@stepper({name}=...) names `{name}`, which is not a keyword parameter of "
                    f"`{f.__name__}`; add `{name}` to its signature or drop it from @stepper.")
        f.defaults = dict(defaults)  # type: ignore[attr-defined]
        return f
    return decorate


def _keywords(f: Callable[..., Any]) -> dict[str, Any]:
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {q.name: q.default for q in inspect.signature(f).parameters.values() if q.kind in kinds}


def foreach_of(single: Callable[..., Any]) -> Callable[[F], F]:
    """Decorator registering `f` as the batched twin `single.foreach`, checking the keywords match."""
    def decorate(f: F) -> F:
        one, many = _keywords(single), _keywords(f)
        one.pop(next(iter(one)))  # `p`
        many.pop("ps", None), many.pop("grads", None)
        if one != many:
            raise TypeError(f"`{f.__name__}` must take `(ps, grads)` and the keywords of "
                            f"`{single.__name__}` with the same defaults: {one} != {many}.")
        single.foreach = f  # type: ignore[attr-defined]
        return f
    return decorate


# One scratch buffer per thread, slot, dtype and device, grown to the largest size seen:
# denominators such as Adam's are parameter-sized, and allocating them on every step costs
# page faults on big models.
_scratch = threading.local()


def _scratch_state(name: str) -> dict[Any, Any]:
    d = getattr(_scratch, name, None)
    if d is None:
        d = {}
        setattr(_scratch, name, d)
    return d


def _scratch_flat(numel: int, like: Tensor, slot: int) -> Tensor:
    """A flat buffer of at least `numel` elements for (dtype, device, slot) of `like`."""
    bufs = _scratch_state("bufs")
    key = (like.dtype, like.device, slot)
    buf = bufs.get(key)
    if buf is None or buf.numel() < numel:
        buf = bufs[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        _scratch_state("views").clear()  # cached views would keep the old buffer alive
    return buf


def _scratch_like(t: Tensor, slot: int = 0) -> Tensor:
    """An uninitialised contiguous buffer with the shape, dtype and device of `t`, reused across calls."""
    return _scratch_flat(t.numel(), t, slot)[: t.numel()].view(t.shape)


def _scratch_like_all(ts: Tensors, slot: int = 0) -> Tensors:
    """Uninitialised buffers shaped like each of `ts` (same dtype and device), views of one reused buffer."""
    shapes = tuple(t.shape for t in ts)
    key = (ts[0].dtype, ts[0].device, slot, shapes)
    views = _scratch_state("views")
    if key not in views:
        sizes = [s.numel() for s in shapes]
        buf = _scratch_flat(sum(sizes), ts[0], slot)
        if len(views) > 64:  # many layouts (tests); the optimizers' own few come back at once
            views.clear()
        views[key] = [v.view(s) for v, s in zip(buf[: sum(sizes)].split(sizes), shapes)]
    return views[key]


def _zeros_like_all(ts: Tensors) -> Tensors:
    return [torch.zeros_like(t) for t in ts]


def _grad(p: Tensor) -> Tensor:
    """`p.grad.data`: the gradient without autograd history, so in-place changes are never recorded."""
    g = p.grad
    if g is None:
        raise ValueError("This stepper needs the parameter's gradient, but `p.grad` is None; call "
                         "loss.backward() first (Optimizer.step skips parameters without one).")
    return g.data


@stepper()
def sgd_step(p: Tensor, lr: float, **_: Any) -> None:
    """Plain SGD: move `p` against its gradient by `lr`."""
    p.data.add_(_grad(p), alpha=-lr)


@foreach_of(sgd_step)
def _sgd_step_foreach(ps: Tensors, grads: Tensors, *, lr: float, **_: Any) -> None:
    torch._foreach_add_(ps, grads, alpha=-lr)


@stepper(wd=0.0)
def weight_decay(p: Tensor, lr: float, wd: float, do_wd: bool = True, **_: Any) -> None:
    """Decoupled weight decay: shrink `p` by a factor `1 - lr*wd`."""
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
        _grad(p).add_(p.data, alpha=wd)


@foreach_of(l2_reg)
def _l2_reg_foreach(ps: Tensors, grads: Tensors, *, lr: float, wd: float, do_wd: bool = True,
                    **_: Any) -> None:
    if do_wd and wd != 0:
        torch._foreach_add_(grads, ps, alpha=wd)


@stepper(mom=0.9)
def average_grad(p: Tensor, mom: float, dampening: bool = False,
                 grad_avg: Tensor | None = None, **_: Any) -> dict[str, Tensor]:
    """Keep a moving average of the gradients in state `grad_avg` (damped by `1-mom` if `dampening`)."""
    g = _grad(p)
    if grad_avg is None:
        grad_avg = torch.zeros_like(g)
    damp = 1 - mom if dampening else 1.0
    grad_avg.mul_(mom).add_(g, alpha=damp)
    return {"grad_avg": grad_avg}


@foreach_of(average_grad)
def _average_grad_foreach(ps: Tensors, grads: Tensors, *, mom: float, dampening: bool = False,
                          grad_avg: Tensors | None = None, **_: Any) -> dict[str, Tensors]:
    if grad_avg is None:
        grad_avg = _zeros_like_all(grads)
    torch._foreach_mul_(grad_avg, mom)
    torch._foreach_add_(grad_avg, grads, alpha=1 - mom if dampening else 1.0)
    return {"grad_avg": grad_avg}


@stepper(sqr_mom=0.99)
def average_sqr_grad(p: Tensor, sqr_mom: float, dampening: bool = True,
                     sqr_avg: Tensor | None = None, **_: Any) -> dict[str, Tensor]:
    """Keep a moving average of the squared gradients in state `sqr_avg`."""
    g = _grad(p)
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
        sqr_avg = _zeros_like_all(grads)
    torch._foreach_mul_(sqr_avg, sqr_mom)
    torch._foreach_addcmul_(sqr_avg, grads, grads, value=1 - sqr_mom if dampening else 1.0)
    return {"sqr_avg": sqr_avg}


@stepper()
def momentum_step(p: Tensor, lr: float, grad_avg: Tensor, **_: Any) -> None:
    """SGD with momentum: move `p` against the averaged gradient `grad_avg` by `lr`."""
    p.data.add_(grad_avg, alpha=-lr)


@foreach_of(momentum_step)
def _momentum_step_foreach(ps: Tensors, grads: Tensors, *, lr: float, grad_avg: Tensors,
                           **_: Any) -> None:
    torch._foreach_add_(ps, grad_avg, alpha=-lr)


def _sqrt_into(out: Tensors, src: Tensors) -> Tensors:
    """`out[i] = sqrt(src[i])`, written into existing buffers."""
    if len(src) <= 64:  # few tensors (big models): one pass each beats a copy and a foreach sqrt
        for o, s in zip(out, src):
            torch.sqrt(s, out=o)
    else:
        torch._foreach_copy_(out, src)
        torch._foreach_sqrt_(out)
    return out


@stepper(eps=1e-8)
def rms_prop_step(p: Tensor, lr: float, sqr_avg: Tensor, eps: float,
                  grad_avg: Tensor | None = None, **_: Any) -> None:
    """RMSProp: divide the gradient (or `grad_avg` if present) by `sqrt(sqr_avg) + eps`."""
    denom = torch.sqrt(sqr_avg, out=_scratch_like(sqr_avg)).add_(eps)
    p.data.addcdiv_(_grad(p) if grad_avg is None else grad_avg, denom, value=-lr)


@foreach_of(rms_prop_step)
def _rms_prop_step_foreach(ps: Tensors, grads: Tensors, *, lr: float, sqr_avg: Tensors,
                           eps: float, grad_avg: Tensors | None = None, **_: Any) -> None:
    denom = _sqrt_into(_scratch_like_all(sqr_avg), sqr_avg)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(ps, grads if grad_avg is None else grad_avg, denom, value=-lr)


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


@stepper()
def adam_step(p: Tensor, lr: float, mom: float, step: int, sqr_mom: float,
              grad_avg: Tensor, sqr_avg: Tensor, eps: float, **_: Any) -> None:
    """Adam: step along the debiased `grad_avg` over the root of the debiased `sqr_avg` plus `eps`."""
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    denom = torch.div(sqr_avg, debias2, out=_scratch_like(sqr_avg)).sqrt_().add_(eps)
    p.data.addcdiv_(grad_avg, denom, value=-lr / debias1)


@foreach_of(adam_step)
def _adam_step_foreach(ps: Tensors, grads: Tensors, *, lr: float, mom: float, step: int,
                       sqr_mom: float, grad_avg: Tensors, sqr_avg: Tensors, eps: float,
                       **_: Any) -> None:
    debias1 = debias(mom, 1 - mom, step)
    root2 = math.sqrt(debias(sqr_mom, 1 - sqr_mom, step))
    # sqrt(sqr_avg/debias2) + eps == (sqrt(sqr_avg) + eps*root2) / root2: two passes fewer
    denom = _sqrt_into(_scratch_like_all(sqr_avg), sqr_avg)
    torch._foreach_add_(denom, eps * root2)
    torch._foreach_addcdiv_(ps, grad_avg, denom, value=-lr * root2 / debias1)
