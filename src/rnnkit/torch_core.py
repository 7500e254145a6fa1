"""fastai's `torch_core` helpers that fastai code calls on tensors, models and random state:
`to_detach`, `to_np`, `to_cpu`, `find_device`, `one_param`, `params`, `apply`, `item_find`, `set_seed`,
`no_random`, `replacing_yield`."""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

__all__ = ["apply", "find_device", "item_find", "no_random", "one_param", "params", "replacing_yield", "set_seed",
           "to_cpu", "to_detach", "to_np"]


def apply(func: Callable, x: Any, *args: Any, **kwargs: Any) -> Any:
    """`func` applied to every leaf of `x` (nested lists, tuples, dicts), keeping the structure."""
    if isinstance(x, (list, tuple)):
        out = [apply(func, o, *args, **kwargs) for o in x]
        return type(x)(*out) if hasattr(x, "_fields") else type(x)(out)
    if isinstance(x, Mapping):
        return {k: apply(func, v, *args, **kwargs) for k, v in x.items()}
    return func(x, *args, **kwargs)


def to_detach(b: Any, cpu: bool = True, gather: bool = True) -> Any:
    """Tensors of `b` detached from autograd, and moved to the CPU when `cpu`. (`gather` is for
    multi-process runs: rnnkit's metrics gather themselves.)"""
    def _detach(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        x = x.detach()
        return x.cpu() if cpu else x
    return apply(_detach, b)


def to_cpu(b: Any) -> Any:
    """Tensors of `b` on the CPU."""
    return apply(lambda x: x.cpu() if isinstance(x, torch.Tensor) else x, b)


def to_np(x: Any) -> Any:
    """Tensors of `x` as numpy arrays (detached, on the CPU)."""
    return apply(lambda o: o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else o, x)


def item_find(x: Any, idx: int = 0) -> Any:
    """The first leaf of a nested `x` (the `idx`-th at the top level)."""
    if isinstance(x, (list, tuple)):
        return item_find(x[idx])
    if isinstance(x, Mapping):
        key = list(x.keys())[idx] if isinstance(idx, int) else idx
        return item_find(x[key])
    return x


def find_device(b: Any) -> torch.device | None:
    """The device of the first tensor in `b`."""
    leaf = item_find(b)
    return getattr(leaf, "device", None)


def one_param(m: nn.Module) -> nn.Parameter:
    """The first parameter of `m` (its device and dtype are the model's)."""
    return next(m.parameters())


def params(m: nn.Module) -> list[nn.Parameter]:
    """All the parameters of `m`, as a list."""
    return list(m.parameters())


def set_seed(s: int, reproducible: bool = False) -> None:
    """Seed torch (CPU and every GPU), numpy and Python's `random`; `reproducible` also makes cuDNN
    deterministic (slower)."""
    torch.manual_seed(s)  # every device's generator
    np.random.seed(s % (2**32 - 1))
    random.seed(s)
    if reproducible:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def no_random(seed: int = 42, reproducible: bool = True) -> Iterator[None]:
    """Run a block with all random generators seeded, then put their states back as they were."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    set_seed(seed, reproducible=reproducible)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def replacing_yield(o: Any, attr: str, val: Any) -> Iterator[None]:
    """A generator that sets `o.attr = val`, yields once, then puts the old value back: as in fastai, a
    method decorated with `@contextmanager` returns it (`with learn.no_logging(): ...` is built this way)."""
    old = getattr(o, attr)
    setattr(o, attr, val)
    try:
        yield
    finally:
        setattr(o, attr, old)
