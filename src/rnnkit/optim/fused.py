"""Fused kernels for the standard recipes' stepper chains, recognised as wholes.

When a chain is one of the table below, `Optimizer.step` calls one fused PyTorch kernel per
bucket of parameters instead of composing the steppers' foreach twins (which would read and
write every tensor once per stepper). The functions here take what a twin takes: `(ps, grads)`,
the hyper-parameters and the state as keywords, and return the new state.

- Adam, `[weight_decay, partial(average_grad, dampening=True), average_sqr_grad, step_stat,
  adam_step]`: fastai's step `p -= lr/debias1 * grad_avg / (sqrt(sqr_avg/debias2) + eps)`, with
  `debias_i = 1 - beta_i**step`, is torch's AdamW update, and `weight_decay` shrinks `p` by
  `1 - lr*wd` as AdamW does: `torch._fused_adamw_`. With `l2_reg` first it is torch's Adam with
  `weight_decay`: `torch._fused_adam_`.
- SGD with momentum, `[weight_decay or l2_reg, average_grad, momentum_step]`: no dampening, and
  `grad_avg` starts at zero so the first step sets it to the gradient, as torch's SGD does:
  `torch._fused_sgd_` with our zero-initialised buffers and `is_first_step=False`.
- RMSProp, `[weight_decay or l2_reg, average_sqr_grad, rms_prop_step]`: PyTorch has no fused
  RMSProp, but RMSProp is Adam with `beta1 = 0` (the first moment is the gradient) and no bias
  correction, which the Adam kernel computes exactly at a step count where `beta2**step` is 0.

A fused function returns None for hyper-parameters its kernel cannot take (momentum 0 for
SGD, `sqr_mom >= 1` for RMSProp); the bucket then runs the steppers' foreach twins.

Unlike the `l2_reg` stepper, the fused kernels do not write `wd * p` into `p.grad`; parameters
and state are the same either way.
"""
from __future__ import annotations

import functools
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from rnnkit.optim.steppers import (_scratch_like_all, _zeros_like_all, adam_step, average_grad,
                                   average_sqr_grad, l2_reg, momentum_step, rms_prop_step,
                                   step_stat, weight_decay)

__all__ = ["fused_adam", "fused_sgd", "fused_rmsprop", "fused_form", "fused_supported"]

Tensors = list[Tensor]


def fused_adam(ps: Tensors, grads: Tensors, *, lr: float, mom: float, sqr_mom: float, eps: float,
               wd: float, decouple_wd: bool, do_wd: bool = True, step: int = 0,
               grad_avg: Tensors | None = None, sqr_avg: Tensors | None = None,
               **_: Any) -> dict[str, Any]:
    """Adam (AdamW when `decouple_wd`) on a bucket of parameters, in one fused kernel."""
    grad_avg = _zeros_like_all(grads) if grad_avg is None else grad_avg
    sqr_avg = _zeros_like_all(grads) if sqr_avg is None else sqr_avg
    step += 1
    # The kernel reads the step count from a tensor; one tensor serves the whole bucket.
    steps = [torch.tensor(float(step), device=ps[0].device)] * len(ps)
    kernel = torch._fused_adamw_ if decouple_wd else torch._fused_adam_
    kernel(ps, grads, grad_avg, sqr_avg, [], steps, lr=lr, beta1=mom, beta2=sqr_mom,
           weight_decay=wd if do_wd else 0.0, eps=eps, amsgrad=False, maximize=False)
    return {"grad_avg": grad_avg, "sqr_avg": sqr_avg, "step": step}


def fused_sgd(ps: Tensors, grads: Tensors, *, lr: float, mom: float, wd: float,
              decouple_wd: bool, do_wd: bool = True, grad_avg: Tensors | None = None,
              **_: Any) -> dict[str, Any] | None:
    """SGD with momentum (no dampening) and weight decay on a bucket of parameters, fused."""
    if mom == 0:  # the kernel keeps no buffer without momentum, but `grad_avg` must follow the grads
        return None
    wd = wd if do_wd else 0.0
    grad_avg = _zeros_like_all(grads) if grad_avg is None else grad_avg
    if decouple_wd and wd != 0:
        torch._foreach_mul_(ps, 1 - lr * wd)
    torch._fused_sgd_(ps, grads, grad_avg, weight_decay=0.0 if decouple_wd else wd, momentum=mom,
                      lr=lr, dampening=0.0, nesterov=False, maximize=False, is_first_step=False)
    return {"grad_avg": grad_avg}


# A step count at which beta2**step is exactly 0 in floating point for any beta2 < 1.
_NO_BIAS_CORRECTION = 1e30


def fused_rmsprop(ps: Tensors, grads: Tensors, *, lr: float, sqr_mom: float, eps: float,
                  wd: float, decouple_wd: bool, do_wd: bool = True,
                  sqr_avg: Tensors | None = None, **_: Any) -> dict[str, Any] | None:
    """RMSProp (no momentum) on a bucket of parameters, as one pass of the fused Adam kernel."""
    if not 0 <= sqr_mom < 1:
        return None
    sqr_avg = _zeros_like_all(grads) if sqr_avg is None else sqr_avg
    first = _scratch_like_all(grads)  # with beta1 = 0 the kernel writes the gradient here
    steps = [torch.tensor(_NO_BIAS_CORRECTION, device=ps[0].device)] * len(ps)
    kernel = torch._fused_adamw_ if decouple_wd else torch._fused_adam_
    kernel(ps, grads, first, sqr_avg, [], steps, lr=lr, beta1=0.0, beta2=sqr_mom,
           weight_decay=wd if do_wd else 0.0, eps=eps, amsgrad=False, maximize=False)
    return {"sqr_avg": sqr_avg}


def _stepper_key(cb: Callable[..., Any]) -> Any:
    """A hashable identity for a stepper that sees through `functools.partial`."""
    if isinstance(cb, partial):
        return (_stepper_key(cb.func), cb.args, tuple(sorted(cb.keywords.items())))
    return cb


def _chain_key(cbs: Sequence[Callable[..., Any]]) -> tuple[Any, ...]:
    return tuple(_stepper_key(cb) for cb in cbs)


_ADAM: list[Callable[..., Any]] = [partial(average_grad, dampening=True), average_sqr_grad,
                                   step_stat, adam_step]
_SGD_MOM: list[Callable[..., Any]] = [average_grad, momentum_step]
_RMSPROP: list[Callable[..., Any]] = [average_sqr_grad, rms_prop_step]
_FUSED: dict[Any, Callable[..., dict[str, Any] | None]] = {
    _chain_key([weight_decay, *_ADAM]): partial(fused_adam, decouple_wd=True),
    _chain_key([l2_reg, *_ADAM]): partial(fused_adam, decouple_wd=False),
    _chain_key([weight_decay, *_SGD_MOM]): partial(fused_sgd, decouple_wd=True),
    _chain_key([l2_reg, *_SGD_MOM]): partial(fused_sgd, decouple_wd=False),
    _chain_key([weight_decay, *_RMSPROP]): partial(fused_rmsprop, decouple_wd=True),
    _chain_key([l2_reg, *_RMSPROP]): partial(fused_rmsprop, decouple_wd=False),
}
# Dtypes the CPU and CUDA fused kernels take; other buckets use the foreach twins.
FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _kernel_runs(fused: Callable[..., Any], device_type: str) -> bool:
    ps, grads = [torch.zeros(1, device=device_type)], [torch.zeros(1, device=device_type)]
    try:
        fused(ps, grads, lr=0.0, mom=0.9, sqr_mom=0.99, eps=1e-8, wd=0.0, decouple_wd=True)
    except (NotImplementedError, RuntimeError, AttributeError):
        return False
    return True


def fused_supported(fused: Callable[..., Any], device: torch.device) -> bool:
    """Whether this PyTorch has `fused`'s kernel on `device`'s type: tried once on one-element tensors.

    The kernels came to the CPU later than to CUDA (PyTorch 2.2 has `_fused_adamw_` for CUDA only, and
    no `_fused_sgd_` at all); where one is missing the bucket runs the steppers' foreach twins instead."""
    if device.type not in ("cpu", "cuda"):
        return False
    return _kernel_runs(fused, device.type)


def fused_form(cbs: Sequence[Callable[..., Any]]) -> Callable[..., dict[str, Any] | None] | None:
    """The fused function computing the whole chain `cbs`, or None if there is none."""
    try:
        return _FUSED.get(_chain_key(cbs))
    except TypeError:  # a partial with an unhashable keyword value
        return None
