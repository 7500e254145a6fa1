"""The stepper protocol: what a stepper is, how its batched twin is registered, and the helpers both use.

A stepper takes one parameter `p`, then its hyper-parameters and per-parameter state in fastai's order
(so `weight_decay(p, lr, wd)` works as in fastai, and so do keywords), changes `p.data` (or
`p.grad.data`) in place and returns a dict of new state, or None. Working on `.data` lets a user call a
stepper on a parameter that requires grad outside `torch.no_grad()`. `Optimizer.step` calls every
stepper as `cb(p, **{**state, **hypers})`, so a stepper picks the keys it needs and swallows the rest
with `**_`.

A stepper may have a batched twin, `stepper.foreach`, registered with `@foreach_of(stepper)`: the same
keywords, but it takes a list of parameters and their gradients `(ps, grads)`, per-parameter state as
lists of tensors, and works with `torch._foreach_*` operations (PyTorch's own multi-tensor kernels, as
`torch.optim` uses them: one kernel launch per list instead of one per tensor). State that is not a
tensor (the `step` count) is one Python value shared by the parameters a twin is called with.

A stepper or twin marked `@with_scratch` (or a fused step declaring a `scratch` keyword) also gets the
optimizer's `Scratch` of reusable buffers for its temporaries as `scratch=` among its keywords (absent
when called directly: it allocates them). The signatures stay fastai's; other steppers never see it.

The algorithms live in one module per family, each holding its steppers, their twins and its fused
function: `sgd.py` (weight decay, SGD, momentum), `rmsprop.py`, `adam.py`, `more.py` (RAdam, QHAdam,
LAMB, LARC).
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

__all__ = ["stepper", "foreach_of", "batched_form", "stepper_defaults", "stepper_name", "explain_stepper_error",
           "with_scratch", "takes_scratch", "grad_of", "Scratch", "buffer_like", "buffers_like", "zeros_like_all",
           "sqrt_into"]

F = TypeVar("F", bound=Callable[..., Any])
Stepper = Callable[..., Any]
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


def batched_form(cb: Stepper) -> Stepper | None:
    """The batched twin of stepper `cb` (seeing through `functools.partial`), or None."""
    if isinstance(cb, partial):
        twin = batched_form(cb.func)
        return None if twin is None or cb.args else partial(twin, **cb.keywords)
    return getattr(cb, "foreach", None)


def stepper_defaults(cb: Stepper) -> dict[str, Any]:
    """The `.defaults` of a stepper, looking through `functools.partial`."""
    defaults = getattr(cb, "defaults", None)
    if defaults is None and isinstance(cb, partial):
        return stepper_defaults(cb.func)
    return dict(defaults or {})


def stepper_name(cb: Stepper) -> str:
    """A stepper's name for messages, `partial(name)` for a partial."""
    return f"partial({stepper_name(cb.func)})" if isinstance(cb, partial) else getattr(
        cb, "__name__", type(cb).__name__)


def with_scratch(f: F) -> F:
    """Mark stepper or twin `f` as wanting the optimizer's `Scratch` as the keyword `scratch`."""
    f.takes_scratch = True  # type: ignore[attr-defined]
    return f


def takes_scratch(f: Callable[..., Any]) -> bool:
    """Whether `f` is marked `@with_scratch` or declares a `scratch` keyword (for the optimizer's buffers)."""
    while isinstance(f, partial):
        f = f.func
    if getattr(f, "takes_scratch", False):
        return True
    try:
        return "scratch" in inspect.signature(f).parameters
    except (TypeError, ValueError):
        return False


def explain_stepper_error(cb: Stepper, kwargs: dict[str, Any]) -> str | None:
    """Why calling `cb(p, **kwargs)` could not bind its arguments, or None if it could."""
    try:
        params = list(inspect.signature(cb).parameters.values())
    except (TypeError, ValueError):
        return None
    named = [q for q in params[1:] if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)]
    missing = [q.name for q in named if q.default is q.empty and q.name not in kwargs]
    name = stepper_name(cb)
    if missing:
        keys = ", ".join(f"'{m}'" for m in missing)
        return (f"Stepper `{name}` needs {keys}, but neither the optimizer's hyper-parameters nor "
                f"the parameter's state supply it. Pass it to the optimizer (e.g. "
                f"Optimizer(params, cbs, {missing[0]}=...)), give it a default with "
                f"@stepper({missing[0]}=...), or put a stepper that creates it earlier in cbs.")
    if not any(q.kind == q.VAR_KEYWORD for q in params):
        return (f"Stepper `{name}` is called with every hyper-parameter and state key as a keyword "
                f"({', '.join(sorted(kwargs))}) but has no `**kwargs`; add `**_` to its signature.")
    return None


def grad_of(p: Tensor) -> Tensor:
    """`p.grad.data`: the gradient without autograd history, so in-place changes are never recorded."""
    g = p.grad
    if g is None:
        raise ValueError("This stepper needs the parameter's gradient, but `p.grad` is None; call "
                         "loss.backward() first (Optimizer.step skips parameters without one).")
    return g.data


class Scratch:
    """Reusable temporaries of one optimizer: one flat buffer per (dtype, device, slot), grown to the
    largest size asked for, handed out as views shaped like the tensors a step works on.

    Why: a step's temporaries (Adam's or RMSProp's denominator, QHAdam's numerator) are as large as
    the model. Allocated afresh each step, a large one is mapped and zero-filled by the kernel every
    time. On fastai's AWD-LSTM (24M parameters) Adam's foreach step takes 35.6 ms with this reuse and
    58.3 ms without, RMSProp's fused step 7.5 vs 8.2 ms; on 400 small tensors RMSProp takes 2.1 vs 2.5 ms
    (`benchmarks/bench_optim.py`, the 'fresh buffers' rows)."""

    _MAX_LAYOUTS = 64  # views kept per shape list; an optimizer has a handful, tests make many

    def __init__(self) -> None:
        self._bufs: dict[tuple[Any, ...], Tensor] = {}
        self._views: dict[tuple[Any, ...], Tensors] = {}

    def _flat(self, numel: int, like: Tensor, slot: int) -> Tensor:
        key = (like.dtype, like.device, slot)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel:
            # Zeros, not `empty`: a buffer read before it is written (fused RMSProp's first moment, weighted
            # by 0) must not hold NaN or inf garbage. Paid once per growth, not per step.
            buf = self._bufs[key] = torch.zeros(numel, dtype=like.dtype, device=like.device)
            self._views.clear()  # views of the old buffer would keep it alive
        return buf

    def like(self, t: Tensor, slot: int = 0) -> Tensor:
        """An uninitialised buffer with the shape, dtype and device of `t`."""
        return self._flat(t.numel(), t, slot)[: t.numel()].view(t.shape)

    def like_all(self, ts: Tensors, slot: int = 0) -> Tensors:
        """Uninitialised buffers shaped like each of `ts` (same dtype and device), views of one buffer."""
        shapes = tuple(t.shape for t in ts)
        key = (ts[0].dtype, ts[0].device, slot, shapes)
        views = self._views.get(key)
        if views is None:
            sizes = [s.numel() for s in shapes]
            buf = self._flat(sum(sizes), ts[0], slot)
            if len(self._views) >= self._MAX_LAYOUTS:
                self._views.clear()
            views = self._views[key] = [v.view(s) for v, s in zip(buf[: sum(sizes)].split(sizes), shapes)]
        return views

    def __getstate__(self) -> dict[str, Any]:  # temporaries are never worth copying or saving
        return {"_bufs": {}, "_views": {}}


def buffer_like(t: Tensor, scratch: Scratch | None, slot: int = 0) -> Tensor:
    """An uninitialised tensor like `t`: a view of `scratch`'s buffer, or a new one without a scratch."""
    return scratch.like(t, slot) if scratch is not None else torch.empty_like(t)


def buffers_like(ts: Tensors, scratch: Scratch | None, slot: int = 0) -> Tensors:
    """Uninitialised tensors like `ts`: views of `scratch`'s buffers, or new ones without a scratch."""
    return scratch.like_all(ts, slot) if scratch is not None else [torch.empty_like(t) for t in ts]


def zeros_like_all(ts: Tensors) -> Tensors:
    """New zero tensors like each of `ts` (a stepper's first state)."""
    return [torch.zeros_like(t) for t in ts]


def sqrt_into(out: Tensors, src: Tensors) -> Tensors:
    """`out[i] = sqrt(src[i])`, written into existing buffers."""
    if len(src) <= 64:  # few tensors (big models): one pass each beats a copy and a foreach sqrt
        for o, s in zip(out, src):
            torch.sqrt(s, out=o)
    else:
        torch._foreach_copy_(out, src)
        torch._foreach_sqrt_(out)
    return out
