"""Where the fused kernels of the recipes' fast paths (`fused_sgd`, `fused_rmsprop`, `fused_adam`) run.

A recipe declares its fast path (`Optimizer(params, cbs, fused=...)`); `Optimizer.step` uses it for a
bucket of parameters only where PyTorch has the kernel for the bucket's device and dtype, and runs the
steppers' foreach twins elsewhere.
"""
from __future__ import annotations

import functools
from functools import partial
from typing import Any, Callable

import torch

__all__ = ["FUSED_DTYPES", "fused_supported"]

# Dtypes the CPU and CUDA fused kernels take; other buckets use the foreach twins.
FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _probe(fused: Callable[..., Any], device_type: str) -> bool:
    ps, grads = [torch.zeros(1, device=device_type)], [torch.zeros(1, device=device_type)]
    kwargs: dict[str, Any] = dict(lr=0.0, mom=0.9, sqr_mom=0.99, eps=1e-8, wd=0.0)
    if not (isinstance(fused, partial) and "decouple_wd" in fused.keywords):
        kwargs["decouple_wd"] = True  # the built-in fused steps need it: one of their two kernels
    try:
        fused(ps, grads, **kwargs)
    except (NotImplementedError, RuntimeError, AttributeError):
        return False
    return True


@functools.lru_cache(maxsize=None)
def _probe_once(func: Callable[..., Any], keywords: tuple[Any, ...], device_type: str) -> bool:
    # Remembered per function and keywords (not per partial object: every recipe makes its own): the
    # probe is a kernel call that may raise, asked for each bucket whenever the grouping is rebuilt.
    return _probe(partial(func, **dict(keywords)), device_type)


def fused_supported(fused: Callable[..., Any], device: torch.device) -> bool:
    """Whether this PyTorch has `fused`'s kernel on `device`'s type: tried once on one-element tensors.

    The kernels came to the CPU later than to CUDA (PyTorch 2.2 has `_fused_adamw_` for CUDA only, and
    no `_fused_sgd_` at all); where one is missing the bucket runs the steppers' foreach twins instead."""
    if device.type not in ("cpu", "cuda"):
        return False
    func = fused
    keywords: tuple[Any, ...] = ()
    if isinstance(fused, partial) and not fused.args:
        func, keywords = fused.func, tuple(sorted(fused.keywords.items()))
    try:
        return _probe_once(func, keywords, device.type)
    except TypeError:  # an unhashable keyword value: probe without remembering
        return _probe(fused, device.type)
