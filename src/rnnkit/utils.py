"""Small helpers that fastai code expects: `L`, `tensor`, `Module`, batch and naming utilities.

Also importable from here, as fastai code and older rnnkit code do, though they live elsewhere: the device
helpers (`default_device`, `resolve_device`, `to_device`, ...) are defined in `rnnkit.devices`, the malloc
controls (`reuse_freed_memory`, `release_freed_memory`, `heap_free_bytes`) in `rnnkit.memory`, and
`atomic_write` in `rnnkit.files`.
"""

from __future__ import annotations

import functools
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from fastcore.foundation import L
from torch import nn

from rnnkit.devices import (
    cpu_autocast_dtype, cpu_computes_natively, default_device, describe_device, resolve_device, to_device,
)
from rnnkit.errors import UserError
from rnnkit.files import atomic_write
from rnnkit.memory import heap_free_bytes, release_freed_memory, reuse_freed_memory

__all__ = [
    "L",
    "Module",
    "camel2snake",
    "class2attr",
    "detuplify",
    "find_bs",
    "noop",
    "range_of",
    "snake_case",
    "tensor",
]
# Defined in rnnkit.devices, rnnkit.files and rnnkit.memory; re-exported for code that imports them from here.
__all__ += [
    "atomic_write",
    "cpu_autocast_dtype",
    "cpu_computes_natively",
    "default_device",
    "describe_device",
    "heap_free_bytes",
    "release_freed_memory",
    "resolve_device",
    "reuse_freed_memory",
    "to_device",
]


def _plain(t: torch.Tensor) -> torch.Tensor:
    # Tensor subclasses route every op through Python (`__torch_function__`), which is slow.
    return t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)


def _from_sequence(x: list | tuple, **kwargs: Any) -> torch.Tensor:
    if len(x) > 0 and all(isinstance(o, torch.Tensor) for o in x):
        res = torch.stack([_plain(o) for o in x])
        return res.to(**kwargs) if kwargs else res
    if any(isinstance(o, (torch.Tensor, np.ndarray, L)) for o in x):
        return _from_sequence([tensor(o) for o in x], **kwargs)
    try:
        return torch.tensor(x, **kwargs)
    except (TypeError, ValueError, RuntimeError):
        # Nested rows may hold tensors deeper down: convert row by row, then stack.
        if not any(isinstance(o, (list, tuple)) for o in x):
            raise
        return _from_sequence([tensor(o) for o in x], **kwargs)


def tensor(x: Any, *rest: Any, **kwargs: Any) -> torch.Tensor:
    """Make a plain `torch.Tensor` from a number, list, array, `L` or values given as varargs."""
    if rest:
        x = (x, *rest)
    if isinstance(x, torch.Tensor):
        res = _plain(x)
        res = res.to(**kwargs) if kwargs else res
    elif isinstance(x, (list, tuple)):
        res = _from_sequence(x, **kwargs)
    elif isinstance(x, (numbers.Number, np.generic)):
        res = torch.tensor(x, **kwargs)
    elif isinstance(x, np.ndarray):
        if x.dtype == np.uint16:  # torch has poor uint16 support
            x = x.astype(np.float32)
        res = torch.as_tensor(np.ascontiguousarray(x), **kwargs)
    elif isinstance(x, L):
        res = _from_sequence(list(x), **kwargs)
    elif hasattr(x, "__array__"):
        res = tensor(np.asarray(x), **kwargs)
    elif isinstance(x, Iterable):
        res = _from_sequence(list(x), **kwargs)
    else:
        raise TypeError(
            f"tensor() cannot convert an object of type {type(x).__name__}; pass a number, list, array or tensor."
        )
    # fastai keeps floats single precision unless a dtype is asked for.
    if res.dtype == torch.float64 and "dtype" not in kwargs:
        res = res.float()
    return res


def range_of(a: Any, b: int | None = None, step: int | None = None) -> list[int]:
    """All indices of collection `a`, or `list(range(a, b, step))` when `a` is an int."""
    if hasattr(a, "__len__") and not isinstance(a, (str, bytes)):
        a = len(a)
    start, stop = (0, a) if b is None else (a, b)
    return list(range(start, stop, 1 if step is None else step))


def noop(x: Any = None, *args: Any, **kwargs: Any) -> Any:
    """Do nothing and return `x`."""
    return x


def _ensure_module_init(self: nn.Module) -> None:
    # nn.Module.__init__ creates `_parameters`, `_modules`, ...; run it only once per object.
    if "_parameters" not in self.__dict__:
        nn.Module.__init__(self)


class Module(nn.Module):
    """`nn.Module` whose subclasses need not call `super().__init__()`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_rnnkit_pre_init", False):
            return

        @functools.wraps(init)
        def __init__(self: nn.Module, *args: Any, **kw: Any) -> None:
            _ensure_module_init(self)
            init(self, *args, **kw)

        __init__._rnnkit_pre_init = True  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _ensure_module_init(self)


def find_bs(b: Any) -> int:
    """Batch size of `b`: the first dimension of the first tensor found in a nested tuple/list/dict."""
    stack = [b]
    while stack:
        o = stack.pop(0)
        if isinstance(o, torch.Tensor):
            if o.ndim == 0:
                raise UserError("find_bs found a 0-d tensor first; a batch needs a leading batch dimension.")
            return o.shape[0]
        if isinstance(o, Mapping):
            stack = list(o.values()) + stack
        elif isinstance(o, (list, tuple)):
            stack = list(o) + stack
    raise UserError(f"find_bs found no tensor in a batch of type {type(b).__name__}.")


def detuplify(x: Any) -> Any:
    """Unwrap a one-element tuple or list; an empty one gives `None`."""
    if isinstance(x, (tuple, list, L)):
        if len(x) == 0:
            return None
        if len(x) == 1:
            return x[0]
    return x


_word_start = re.compile(r"(.)([A-Z][a-z]+)")  # "RNNCallback" -> "RNN_Callback"
_lower_upper = re.compile(r"([a-z0-9])([A-Z])")  # "trainEval" -> "train_Eval"


def camel2snake(name: str) -> str:
    """Convert a CamelCase name to snake_case: `TrainEvalCallback` -> `train_eval_callback`."""
    return _lower_upper.sub(r"\1_\2", _word_start.sub(r"\1_\2", name)).lower()


snake_case = camel2snake


def class2attr(obj: Any, cls_name: str) -> str:
    """Snake-case class name of `obj` without the `cls_name` suffix: `TrainEvalCallback` -> `train_eval`."""
    name = obj.__name__ if isinstance(obj, type) else type(obj).__name__
    if name.endswith(cls_name):
        name = name[: -len(cls_name)]
    return camel2snake(name) if name else cls_name.lower()
