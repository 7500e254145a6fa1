"""Parameter groups and hyper-parameter values, as fastai's optimizers take them: what `Optimizer` and
`OptimWrapper` share before any stepping."""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor

__all__ = ["to_plain", "spread_hyper", "is_param_group", "as_param_lists", "check_lr", "copy_to"]


def to_plain(v: Any) -> Any:
    """A one-element tensor or numpy scalar as a Python number; anything else unchanged."""
    if isinstance(v, (Tensor, np.ndarray, np.generic)) and np.size(v) == 1:
        return v.item()
    return v


def spread_hyper(k: str, v: Any, n: int) -> list[Any]:
    """One value of hyper-parameter `k` per parameter group, from a scalar, a sequence or a slice."""
    if isinstance(v, slice):
        lo, hi = to_plain(v.start), to_plain(v.stop)
        if not lo:  # fastai: the last group gets hi, the others hi/10
            return [hi / 10] * (n - 1) + [hi]
        if n == 1:
            return [hi]
        if lo * hi < 0:  # fastai's geometric spread would give complex numbers
            raise ValueError(f"set_hyper('{k}', {v!r}): use slice(lo, hi) with lo and hi of the "
                             "same sign (spread geometrically) or slice(None, hi).")
        ratio = (hi / lo) ** (1 / (n - 1))  # as fastai, `v.step` is ignored; hi=0 gives [lo, 0, ...]
        return [lo] + [lo * ratio**i for i in range(1, n - 1)] + [hi]
    if isinstance(v, (Tensor, np.ndarray)):
        v = [v.item()] if np.size(v) == 1 else v.flatten().tolist()
    if isinstance(v, (list, tuple)):
        values = [to_plain(x) for x in v]
        if len(values) == 1:  # like fastai, a single value goes to every group
            return values * n
        if len(values) != n:
            raise ValueError(f"set_hyper('{k}', ...) got {len(values)} values for {n} parameter "
                             "groups; pass one value, one value per group, or a slice.")
        return values
    return [to_plain(v)] * n


def is_param_group(x: Any) -> bool:
    """Whether `x`, an item of `params`, is a parameter group rather than a parameter."""
    if isinstance(x, (list, tuple)):
        return True
    return not isinstance(x, (Tensor, np.ndarray, str, bytes, dict)) and isinstance(x, Iterable)


def as_param_lists(params: Any) -> list[list[Any]]:
    """Parameter groups as fastai makes them: one group, or one per item if the first item is a list.

    Parameters are usually tensors, but like fastai's any object is kept (its bookkeeping works;
    `step` skips what has no `.grad`). A generator or tuple of parameters counts as a group too.
    """
    items = [params] if isinstance(params, Tensor) else list(params)
    if not items:
        raise ValueError("The optimizer got no parameters; pass model.parameters() or a list of "
                         "parameter groups (lists of tensors).")
    if isinstance(items[0], dict):
        raise TypeError("Optimizer takes parameters or lists of parameters, not torch-style "
                        "{'params': ...} dicts; pass [group['params'] for group in groups] and set "
                        "per-group values with set_hyper, or use OptimWrapper.")
    groups = [list(g) for g in items] if is_param_group(items[0]) else [items]
    if not any(groups):
        raise ValueError(f"The optimizer got {len(groups)} parameter groups but no parameters.")
    tensors = [p for g in groups for p in g if isinstance(p, Tensor)]
    if len({id(p) for p in tensors}) != len(tensors):
        warnings.warn("Some parameters appear more than once in the parameter groups; as in fastai, "
                      "each step updates them once per appearance. Give each parameter to one group.",
                      stacklevel=3)
    return groups


def check_lr(values: list[Any]) -> None:
    """Refuse a NaN learning rate, naming its group."""
    for i, v in enumerate(values):
        if isinstance(v, float) and math.isnan(v):
            raise ValueError(f"lr is NaN for parameter group {i}; pass a number (lr=0 leaves the "
                             "parameters unchanged).")


def copy_to(v: Any, device: torch.device | None) -> Any:
    """A copy of `v` with its tensors on `device` (where they are if None): no shared buffers."""
    if isinstance(v, Tensor):
        return v.clone() if device is None else v.to(device, copy=True)
    if isinstance(v, dict):
        return {k: copy_to(x, device) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(copy_to(x, device) for x in v)
    return v
