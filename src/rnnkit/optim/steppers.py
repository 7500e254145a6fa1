"""Optimizer steppers: small functions composed by `Optimizer` into an update rule.

A stepper takes one parameter `p` plus keyword hyper-parameters and per-parameter state,
changes `p` (or `p.grad`) in place and returns a dict of new state, or None.
`Optimizer.step` calls every stepper as `cb(p, **{**state, **hypers})` under
`torch.no_grad()`, so a stepper picks the keys it needs and swallows the rest with `**_`.

Adam is from Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2014); decoupled
weight decay from Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2017).
"""
from __future__ import annotations

import inspect
import threading
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

__all__ = [
    "stepper", "sgd_step", "weight_decay", "l2_reg", "average_grad", "average_sqr_grad",
    "momentum_step", "rms_prop_step", "step_stat", "debias", "adam_step",
]

F = TypeVar("F", bound=Callable[..., Any])


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


# One scratch buffer per thread, dtype and device, grown to the largest tensor seen: the
# denominators of RMSProp and Adam are parameter-sized, and allocating them on every step costs
# page faults on big models.
_scratch = threading.local()


def _scratch_like(t: Tensor) -> Tensor:
    """An uninitialised contiguous buffer with the shape, dtype and device of `t`, reused across calls."""
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    key = (t.dtype, t.device)
    buf = bufs.get(key)
    if buf is None or buf.numel() < t.numel():
        buf = bufs[key] = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
    return buf[: t.numel()].view(t.shape)


@stepper()
def sgd_step(p: Tensor, *, lr: float, **_: Any) -> None:
    """Plain SGD: move `p` against its gradient by `lr`."""
    p.add_(p.grad, alpha=-lr)


@stepper(wd=0.0)
def weight_decay(p: Tensor, *, lr: float, wd: float, do_wd: bool = True, **_: Any) -> None:
    """Decoupled weight decay: shrink `p` by a factor `1 - lr*wd`."""
    if do_wd and wd != 0:
        p.mul_(1 - lr * wd)


@stepper(wd=0.0)
def l2_reg(p: Tensor, *, lr: float, wd: float, do_wd: bool = True, **_: Any) -> None:
    """L2 regularisation: add `wd * p` to the gradient."""
    if do_wd and wd != 0:
        p.grad.add_(p, alpha=wd)


@stepper(mom=0.9)
def average_grad(p: Tensor, *, mom: float, dampening: bool = False,
                 grad_avg: Tensor | None = None, **_: Any) -> dict[str, Tensor]:
    """Keep a moving average of the gradients in state `grad_avg` (damped by `1-mom` if `dampening`)."""
    if grad_avg is None:
        grad_avg = torch.zeros_like(p.grad)
    damp = 1 - mom if dampening else 1.0
    grad_avg.mul_(mom).add_(p.grad, alpha=damp)
    return {"grad_avg": grad_avg}


@stepper(sqr_mom=0.99)
def average_sqr_grad(p: Tensor, *, sqr_mom: float, dampening: bool = True,
                     sqr_avg: Tensor | None = None, **_: Any) -> dict[str, Tensor]:
    """Keep a moving average of the squared gradients in state `sqr_avg`."""
    if sqr_avg is None:
        sqr_avg = torch.zeros_like(p.grad)
    damp = 1 - sqr_mom if dampening else 1.0
    sqr_avg.mul_(sqr_mom).addcmul_(p.grad, p.grad, value=damp)
    return {"sqr_avg": sqr_avg}


@stepper()
def momentum_step(p: Tensor, *, lr: float, grad_avg: Tensor, **_: Any) -> None:
    """SGD with momentum: move `p` against the averaged gradient `grad_avg` by `lr`."""
    p.add_(grad_avg, alpha=-lr)


@stepper(eps=1e-8)
def rms_prop_step(p: Tensor, *, lr: float, sqr_avg: Tensor, eps: float,
                  grad_avg: Tensor | None = None, **_: Any) -> None:
    """RMSProp: divide the gradient (or `grad_avg` if present) by `sqrt(sqr_avg) + eps`."""
    denom = torch.sqrt(sqr_avg, out=_scratch_like(sqr_avg)).add_(eps)
    p.addcdiv_(p.grad if grad_avg is None else grad_avg, denom, value=-lr)


@stepper()
def step_stat(p: Tensor, *, step: int = 0, **_: Any) -> dict[str, int]:
    """Count the steps taken for `p` in state `step`."""
    return {"step": step + 1}


def debias(mom: float, damp: float, step: int) -> float:
    """Bias correction of a moving average with momentum `mom` and dampening `damp` after `step` steps."""
    return damp * (1 - mom**step) / (1 - mom)


@stepper()
def adam_step(p: Tensor, *, lr: float, mom: float, step: int, sqr_mom: float,
              grad_avg: Tensor, sqr_avg: Tensor, eps: float, **_: Any) -> None:
    """Adam: step along the debiased `grad_avg` over the root of the debiased `sqr_avg` plus `eps`."""
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    denom = torch.div(sqr_avg, debias2, out=_scratch_like(sqr_avg)).sqrt_().add_(eps)
    p.addcdiv_(grad_avg, denom, value=-lr / debias1)
