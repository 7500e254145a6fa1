"""How `Optimizer.step` groups parameters for the batched path: `ParamGrouping`, owned by each optimizer.

A bucket holds the parameters of one group that have a gradient and share device, dtype, the same
non-tensor state values (`step`, `do_wd`, `force_train` ...) and the same tensor-state keys. A batched
stepper (a foreach twin or a fused function) therefore gets one value for the non-tensor state and a
list for each tensor, and `do_wd=False` parameters (biases, norm weights) get no weight decay. Frozen
groups are skipped, except `force_train` parameters when `train_bn`. Buckets of the same kind from
groups with equal hyper-parameters (the usual case: one lr and wd for all of a model's groups) run as
one call.

Working the buckets out costs Python time per parameter, so the grouping is kept between steps and
re-checked each step with C-level `map`s (gradients present, state keys and non-tensor values
unchanged); it is rebuilt when anything moved. Keeping it pays on models of many tensors: on 400 small
tensors Adam's step takes 2.0 ms with the kept grouping and 3.0 ms rebuilding it every step (no difference
on fastai's AWD-LSTM, 11.0 vs 11.2 ms); `benchmarks/bench_optim.py`, the 'regroup every step' row.
Hyper-parameters are read from `opt.hypers` on every step as plain floats, so schedules and
discriminative lrs need no rebuild and no `.item()`.

State keeps the per-parameter layout on every path: `opt.state[p]` holds tensors under the steppers'
keys and `step` as a Python int, so inspection, `state_dict()` and `load_state_dict()` (with
`weights_only=True`) do not depend on the path that made it.
"""
from __future__ import annotations

import operator
from functools import partial
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import Any, Callable, Sequence

from torch import Tensor

from rnnkit.optim.fused import FUSED_DTYPES, fused_supported

__all__ = ["ParamGrouping", "Batch", "state_to_param_devices"]

_GRAD = attrgetter("grad")
_IS_NONE = partial(operator.is_, None)
_FORCE_TRAIN = operator.methodcaller("get", "force_train", False)


class _Bucket:
    """Parameters stepped together, and the state layout they shared when last checked."""

    def __init__(self, group: int, kind: tuple[Any, ...], flags: dict[str, Any],
                 tensor_keys: Sequence[str], fused: bool) -> None:
        # `kind`: device, dtype and state layout; buckets of one kind from groups with equal hypers
        # step together
        self.group, self.kind, self.fused = group, kind, fused
        self.params: list[Tensor] = []
        self.set_layout(flags, tensor_keys)

    def set_layout(self, flags: dict[str, Any], tensor_keys: Sequence[str]) -> None:
        self.flags = flags
        self.tensor_keys = list(tensor_keys)
        self.getters = [itemgetter(k) for k in self.tensor_keys]
        self.n_keys = len(flags) + len(self.tensor_keys)
        keys = sorted(flags)
        self.flag_getter = itemgetter(*keys) if keys else None
        self.flag_values = itemgetter(*keys)(flags) if keys else None

    def gather(self, state: Any) -> tuple[list[Tensor], list[dict[str, Any]], dict[str, Any]] | None:
        """Gradients, state dicts and state as keywords, or None if the layout changed."""
        ps = self.params
        grads = list(map(_GRAD, ps))
        if any(map(_IS_NONE, grads)):
            return None
        sts = list(map(state.__getitem__, ps))
        n = len(sts)
        if list(map(len, sts)).count(self.n_keys) != n:
            return None
        if self.flag_getter is not None and list(map(self.flag_getter, sts)).count(self.flag_values) != n:
            return None
        kwargs = dict(self.flags)
        for k, get in zip(self.tensor_keys, self.getters):
            ts = list(map(get, sts))
            if not all(map(isinstance, ts, repeat(Tensor))):
                return None
            kwargs[k] = ts
        return grads, sts, kwargs

    def write_back(self, sts: list[dict[str, Any]], old: dict[str, Any], new: dict[str, Any]) -> None:
        """Store the new state in each parameter's dict and remember the layout."""
        for k, v in new.items():
            if isinstance(v, list):
                if v is not old.get(k):
                    for st, t in zip(sts, v):
                        st[k] = t
            else:
                for st in sts:
                    st[k] = v
        if not new:
            return
        flags = {k: v for k, v in new.items() if not isinstance(v, list)}
        if flags.keys() <= self.flags.keys() and all(k in self.tensor_keys for k in new if k not in flags):
            # The usual step: same keys, new flag values (Adam's step count); no new layout to build.
            if flags:
                self.flags = {**self.flags, **flags}
                self.flag_values = self.flag_getter(self.flags)  # type: ignore[misc]  # flags non-empty
            return
        flags = {k: v for k, v in {**self.flags, **new}.items() if not isinstance(v, list)}
        made = [k for k, v in new.items() if isinstance(v, list)]
        self.set_layout(flags, sorted({*self.tensor_keys, *made}))


class _Plan:
    """The buckets of one optimizer, and what must stay true for them to be right."""

    def __init__(self, key: tuple[Any, ...], fused: Callable[..., Any] | None) -> None:
        self.key, self.fused = key, fused
        self.buckets: list[_Bucket] = []
        self.idle: list[Tensor] = []  # no gradient when planned: must still have none
        self.frozen: list[Tensor] = []  # skipped as frozen: their force_train must not change
        self.frozen_flags: list[Any] = []
        self.built = False

    def build(self, opt: Any) -> bool:
        """Sort the parameters into buckets; False if some parameter needs the per-parameter path."""
        state = opt.state
        by_key: dict[Any, _Bucket] = {}
        seen: set[int] = set()
        for gi, pl in enumerate(opt.param_lists):
            frozen = gi < opt.frozen_idx
            for p in pl:
                # Objects that are not tensors, and a tensor given twice (stepped once per
                # appearance), need the per-parameter protocol.
                if not isinstance(p, Tensor) or id(p) in seen:
                    return False
                seen.add(id(p))
                st = state[p]
                if frozen and not (opt.train_bn and st.get("force_train", False)):
                    self.frozen.append(p)
                    continue
                g = p.grad
                if g is None:
                    self.idle.append(p)
                    continue
                if g.layout != p.layout or p.is_complex():
                    return False
                flags = {k: v for k, v in st.items() if not isinstance(v, Tensor)}
                tensor_keys = tuple(sorted(k for k, v in st.items() if isinstance(v, Tensor)))
                try:
                    bkey = (gi, p.device, p.dtype, tensor_keys, tuple(sorted(flags.items())))
                    bucket = by_key.get(bkey)
                except TypeError:  # an unhashable state value
                    return False
                if bucket is None:
                    fused = (self.fused is not None and p.dtype in FUSED_DTYPES
                             and fused_supported(self.fused, p.device))
                    bucket = by_key[bkey] = _Bucket(gi, bkey[1:], flags, tensor_keys, fused)
                bucket.params.append(p)
        self.buckets = list(by_key.values())
        self.frozen_flags = list(map(_FORCE_TRAIN, map(state.__getitem__, self.frozen)))
        return True

    def gather(self, opt: Any) -> list[tuple[_Bucket, Any]] | None:
        """Every bucket's gradients and state, or None if the plan no longer fits."""
        state = opt.state
        try:
            if self.idle and not all(map(_IS_NONE, map(_GRAD, self.idle))):
                return None
            frozen_flags = list(map(_FORCE_TRAIN, map(state.__getitem__, self.frozen)))
            if frozen_flags != self.frozen_flags:
                return None
            work = []
            for b in self.buckets:
                got = b.gather(state)
                if got is None:
                    return None
                work.append((b, got))
            return work
        except KeyError:
            return None


def state_to_param_devices(opt: Any) -> None:
    """Move each parameter's tensor state to the parameter's device, where the model was moved after the
    state was made or loaded (e.g. the Learner puts the model on the loaders' device at `fit`)."""
    state = opt.state
    for p in chain.from_iterable(opt.param_lists):
        st = state.get(p) if isinstance(p, Tensor) else None
        if not st:
            continue
        for k, v in st.items():
            if isinstance(v, Tensor) and v.device != p.device:
                st[k] = v.to(p.device)


class Batch:
    """Parameters stepped by one call of a batched stepper: their gradients, state as keywords, the
    group's hyper-parameters, and whether the declared fused function may run on them."""

    def __init__(self, hyper: dict[str, Any], part: list[tuple[_Bucket, Any]]) -> None:
        self.hyper, self._part = hyper, part
        self.params = [p for b, _ in part for p in b.params]
        self.grads = [g for _, (gs, _, _) in part for g in gs]
        self.state = dict(part[0][1][2])
        if len(part) > 1:
            for k in part[0][0].tensor_keys:
                self.state[k] = [t for _, (_, _, kw) in part for t in kw[k]]
        self.fused = part[0][0].fused
        self._old = dict(self.state)  # batched steppers update `state` in place

    def write_back(self, new: dict[str, Any]) -> None:
        """Store the new state the step returned in each parameter's state dict."""
        start = 0
        for b, (_, sts, kw) in self._part:
            stop = start + len(b.params)
            # a list the step returned unchanged is the bucket's own list again, so write_back skips it
            mine = {k: (kw[k] if v is self._old.get(k) else v[start:stop]) if isinstance(v, list) else v
                    for k, v in new.items()}
            b.write_back(sts, kw, mine)
            start = stop


class ParamGrouping:
    """The buckets of one optimizer's parameters for the batched path, kept between steps while they
    still fit (see the module docstring)."""

    def __init__(self) -> None:
        self._plan: _Plan | None = None

    def reset(self) -> None:
        """Forget the grouping: the next step works it out again."""
        self._plan = None

    def batches(self, opt: Any, fused: Callable[..., Any] | None) -> list[Batch] | None:
        """The batches of `opt`'s next step (`fused` is its declared fused function, or None); None if
        some parameter needs the per-parameter path (an object that is not a tensor, a tensor given
        twice, a sparse or complex gradient)."""
        key = _plan_key(opt, fused)
        plan = self._plan
        for fresh in (False, True):  # the kept plan, then (if something moved) a new one
            if fresh or plan is None or plan.key != key:
                plan = self._plan = _Plan(key, fused)
                plan.built = plan.build(opt)
            if not plan.built:
                return None
            work = plan.gather(opt)
            if work is not None:
                return [Batch(hyper, part) for hyper, part in _merge_equal_groups(work, opt.hypers)]
        return None


def _plan_key(opt: Any, fused: Any) -> tuple[Any, ...]:
    # `model.to(device)` keeps the parameter objects (and so their ids): the optimizer resets the grouping
    # when it sees its parameters on another device.
    return (id(opt.state), opt.frozen_idx, opt.train_bn, id(fused), tuple(map(len, opt.param_lists)),
            tuple(map(id, chain.from_iterable(opt.param_lists))))


def _merge_equal_groups(work: list[tuple[_Bucket, Any]], hypers: Sequence[dict[str, Any]]
                        ) -> list[tuple[dict[str, Any], list[tuple[_Bucket, Any]]]]:
    """Buckets of the same kind whose parameter groups have equal hyper-parameters (the usual case:
    one lr and wd for all of a model's groups) run as one kernel call instead of one per group."""
    merged: list[tuple[tuple[Any, ...], dict[str, Any], list[tuple[_Bucket, Any]]]] = []
    for item in work:
        b = item[0]
        hyper = hypers[b.group]
        for kind, h, items in merged:  # a handful of groups: a scan beats hashing sorted items
            try:
                same = kind == b.kind and (h is hyper or bool(h == hyper))
            except (RuntimeError, TypeError):  # e.g. a hyper-parameter tensor of several values
                same = False
            if same:
                items.append(item)
                break
        else:
            merged.append((b.kind, hyper, [item]))
    return [(h, items) for _, h, items in merged]
