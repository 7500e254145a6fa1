"""PyTorch hooks made easy: `Hook`/`Hooks` keep what a hook function returns in `.stored`;
`HookCallback` registers them for a fit and `ActivationStats` records activation statistics.

Recurrent layers (`nn.LSTM`, `nn.GRU`) return tuples such as `(output, (h, c))`; the hooks keep
them as tuples, and `ActivationStats` records one statistics dict per tensor in them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterable, Iterator

import torch
from fastcore.foundation import L
from torch import Tensor, nn

from rnnkit.training.callback import Callback

__all__ = ["Hook", "hook_output", "Hooks", "hook_outputs", "has_params", "HookCallback", "ActivationStats"]

HookFunc = Callable[[nn.Module, Any, Any], Any]


def _detach(o: Any, cpu: bool = False) -> Any:
    """Detach every tensor in nested tuples, lists and dicts `o` (and move it to the CPU if `cpu`)."""
    if isinstance(o, Tensor):
        o = o.detach()
        return o.cpu() if cpu else o
    if isinstance(o, Mapping):
        return type(o)({k: _detach(v, cpu) for k, v in o.items()})  # type: ignore[call-arg]
    if isinstance(o, tuple) and hasattr(o, "_fields"):  # namedtuple, e.g. PackedSequence
        return type(o)(*(_detach(v, cpu) for v in o))
    if isinstance(o, (list, tuple)):
        return type(o)(_detach(v, cpu) for v in o)
    return o


class Hook:
    """A forward (or backward) hook on `m` that stores what `hook_func(module, input, output)` returns.

    Args:
        detach: detach inputs and outputs (and move them to the CPU if `cpu`) before `hook_func`.
        gather: kept for fastai's signature; rnnkit trains on one process, so there is nothing to gather.
    """

    def __init__(self, m: nn.Module, hook_func: HookFunc, is_forward: bool = True, detach: bool = True,
                 cpu: bool = False, gather: bool = False) -> None:
        self.hook_func, self.detach, self.cpu, self.gather = hook_func, detach, cpu, gather
        # full backward hooks: `register_backward_hook` is deprecated and can report the gradient of
        # the module's last operation instead of the module's
        register = m.register_forward_hook if is_forward else m.register_full_backward_hook
        self.hook = register(self.hook_fn)
        self.stored: Any = None
        self.removed = False

    def hook_fn(self, module: nn.Module, input: Any, output: Any) -> None:
        """Apply `hook_func` to `module`, `input`, `output` and keep the result in `stored`."""
        if self.detach:
            input, output = _detach(input, self.cpu), _detach(output, self.cpu)
        self.stored = self.hook_func(module, input, output)

    def remove(self) -> None:
        """Remove the hook from the model (once)."""
        if not self.removed:
            self.hook.remove()
            self.removed = True

    def __enter__(self) -> Hook:
        return self

    def __exit__(self, *args: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Hook(stored={type(self.stored).__name__}, removed={self.removed})"


def _hook_inner(m: nn.Module, i: Any, o: Any) -> Any:
    """The output itself: a tensor, or the tuple/list a recurrent layer returns."""
    return o if isinstance(o, (Tensor, list, tuple)) else list(o)


def hook_output(module: nn.Module, detach: bool = True, cpu: bool = False, grad: bool = False) -> Hook:
    """A `Hook` that stores the output of `module` (the gradient of its output if `grad`) in `.stored`."""
    return Hook(module, _hook_inner, is_forward=not grad, detach=detach, cpu=cpu)


class Hooks:
    """One `Hook` with `hook_func` on each module of `ms`: indexable, iterable, a context manager."""

    def __init__(self, ms: Iterable[nn.Module], hook_func: HookFunc, is_forward: bool = True,
                 detach: bool = True, cpu: bool = False) -> None:
        self.hooks = [Hook(m, hook_func, is_forward, detach, cpu) for m in ms]

    def __getitem__(self, i: int) -> Hook:
        return self.hooks[i]

    def __len__(self) -> int:
        return len(self.hooks)

    def __iter__(self) -> Iterator[Hook]:
        return iter(self.hooks)

    @property
    def stored(self) -> L:
        """What each hook stored, in the order of the modules."""
        return L(h.stored for h in self.hooks)

    def remove(self) -> None:
        """Remove every hook from the model."""
        for h in self.hooks:
            h.remove()

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *args: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Hooks({len(self.hooks)} hooks)"


def hook_outputs(modules: Iterable[nn.Module], detach: bool = True, cpu: bool = False,
                 grad: bool = False) -> Hooks:
    """`Hooks` that store the outputs of all `modules` (their gradients if `grad`) in `.stored`."""
    return Hooks(modules, _hook_inner, is_forward=not grad, detach=detach, cpu=cpu)


def has_params(m: nn.Module) -> bool:
    """Whether `m` has at least one parameter."""
    return next(m.parameters(), None) is not None


def _leaf_modules(m: nn.Module) -> list[nn.Module]:
    """The modules of `m` that have no children (fastai's `flatten_model`)."""
    children = list(m.children())
    return [m] if not children else [leaf for c in children for leaf in _leaf_modules(c)]


class HookCallback(Callback):
    """Register hooks on `modules` for a fit; override `hook(m, i, o)` (or pass `hook=`) to say what to store.

    Args:
        modules: the modules to hook; by default the leaf modules of the model that have parameters
            (all leaf modules if `include_paramless`).
        every: hook only every `every` training batches instead of on every batch.
        remove_end: remove the hooks after the fit.
    """

    def __init__(self, modules: Iterable[nn.Module] | None = None, every: int | None = None,
                 remove_end: bool = True, is_forward: bool = True, detach: bool = True, cpu: bool = True,
                 include_paramless: bool = False, hook: HookFunc | None = None) -> None:
        super().__init__()
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be a positive int or None, got {every!r}")
        self.modules = None if modules is None else list(modules)
        self.every, self.remove_end, self.is_forward = every, remove_end, is_forward
        self.detach, self.cpu, self.include_paramless = detach, cpu, include_paramless
        if hook is not None:
            self.hook = hook  # type: ignore[method-assign, assignment]
        self.hooks: Hooks | None = None
        self._hooked = False  # whether the current batch is hooked (and, for ActivationStats, recorded)

    def hook(self, m: nn.Module, i: Any, o: Any) -> Any:
        """What to store for module `m` with input `i` and output `o` (nothing by default)."""
        return None

    def before_fit(self) -> None:
        if self.modules is None:
            self.modules = [m for m in _leaf_modules(self.learn.model) if self.include_paramless or has_params(m)]
        if self.every is None:
            self._register()

    def before_batch(self) -> None:
        # decided once per batch: TrainEvalCallback advances train_iter before a late after_batch
        self._hooked = self.learn.training and (self.every is None or self.learn.train_iter % self.every == 0)
        if self.every is not None and self._hooked:
            self._register()

    def after_batch(self) -> None:
        if self.every is not None and self._hooked:
            self._remove()

    def after_fit(self) -> None:
        if self.remove_end:
            self._remove()

    def _register(self) -> None:
        self._remove()  # never hook a module twice
        self.hooks = Hooks(self.modules or [], self.hook, self.is_forward, self.detach, self.cpu)

    def _remove(self) -> None:
        hooks = self.__dict__.get("hooks")
        if hooks is not None:
            hooks.remove()

    def __del__(self) -> None:
        self._remove()


def _flat_tensors(o: Any) -> list[Tensor]:
    """The tensors of a (nested) tuple or list, in order."""
    if isinstance(o, Tensor):
        return [o]
    if isinstance(o, (list, tuple)):
        return [t for x in o for t in _flat_tensors(x)]
    return []


def _first(rec: Any) -> Any:
    """A layer's record: the dict of its output, or of the first tensor of a recurrent layer's tuple."""
    return rec[0] if isinstance(rec, (list, tuple)) else rec


class ActivationStats(HookCallback):
    """Record the mean, std and fraction of near-zero values (<= 0.05) of each hooked layer's output,
    each training batch (or every `every` batches), in `stats`: one list per batch, one dict per layer.

    A layer that returns a tuple (an LSTM's `(output, (h, c))`) gets one dict per tensor in it;
    `layer_stats`, `hist` and the plots then use its first tensor, the output sequence.
    """

    order = -20  # fastai's order

    def __init__(self, with_hist: bool = False, every: int | None = None, **kwargs: Any) -> None:
        super().__init__(every=every, **kwargs)
        self.with_hist = with_hist
        self.stats = L()

    def before_fit(self) -> None:
        super().before_fit()
        self.stats = L()

    def hook(self, m: nn.Module | None, i: Any, o: Any) -> Any:
        if not isinstance(o, Tensor):
            return [self.hook(None, None, t) for t in _flat_tensors(o)]
        o = o.float()
        res = {"mean": o.mean().item(), "std": o.std().item(),
               "near_zero": (o <= 0.05).long().sum().item() / o.numel()}
        if self.with_hist:
            res["hist"] = o.histc(40, 0, 10)
        return res

    def after_batch(self) -> None:
        if self._hooked and self.hooks is not None:
            self.stats.append(self.hooks.stored)
        super().after_batch()

    def layer_stats(self, idx: int) -> L:
        """`[means, stds, near_zeros]` of layer `idx`, one value per recorded batch."""
        recs = [_first(batch[idx]) for batch in self.stats]
        return L([r[k] for r in recs] for k in ("mean", "std", "near_zero"))

    def hist(self, idx: int) -> Tensor:
        """The histograms of layer `idx` (needs `with_hist=True`), `(40 bins, n_batches)`, log1p-scaled."""
        if not self.with_hist:
            raise ValueError("ActivationStats.hist needs histograms: create it with ActivationStats(with_hist=True)")
        res = [_first(batch[idx])["hist"] for batch in self.stats]
        return torch.stack(res).t().float().log1p()

    def color_dim(self, idx: int, figsize: tuple[float, float] = (10, 5), ax: Any = None) -> Any:
        """The 'colorful dimension' plot of layer `idx`: its histograms over the batches."""
        import matplotlib.pyplot as plt

        res = self.hist(idx)
        if ax is None:
            _, ax = plt.subplots(figsize=figsize)
        ax.imshow(res.cpu().numpy(), origin="lower")  # histograms stay on the device with cpu=False
        ax.axis("off")
        return ax

    def plot_layer_stats(self, idx: int) -> Any:
        """Plot the mean, std and % near zero of layer `idx` over the recorded batches."""
        import matplotlib.pyplot as plt

        fig, axs = plt.subplots(1, 3, figsize=(12, 3))
        for o, ax, title in zip(self.layer_stats(idx), axs, ("mean", "std", "% near zero")):
            ax.plot(o)
            ax.set_title(title)
        return fig
