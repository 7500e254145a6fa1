"""The Learner's evaluation methods: `validate`, `get_preds` (in dataset order, one loss per item),
`to_detach`, and the contexts `no_logging`, `no_bar` and `loss_not_reduced`; mixed into `Learner`."""
from __future__ import annotations

import contextlib
import copy
import functools
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import torch

from rnnkit.callbacks.progress import ProgressCallback
from rnnkit.torch_core import to_detach
from rnnkit.training.callback import as_cb_list, move_to_loaders_device
from rnnkit.utils import noop

__all__ = ["EvaluationMethods"]

_E = TypeVar("_E", bound="EvaluationMethods")  # the contexts yield the learner they were entered on


class EvaluationMethods:
    """Validation passes, predictions and the contexts they run in; mixed into `Learner`."""

    if TYPE_CHECKING:  # what these methods use of the Learner
        dls: Any
        dl: Any
        loss_func: Any
        logger: Callable
        final_record: list[Any]
        _batch_device: torch.device | None

        def _device(self) -> torch.device | None: ...
        def _do_epoch_validate(self, ds_idx: int = 1, dl: Any = None) -> None: ...
        def added_cbs(self, cbs: Any) -> Any: ...
        def removed_cbs(self, cbs: Any) -> Any: ...

    # ---- evaluation ----
    def validate(self, ds_idx: int = 1, dl: Any = None, cbs: Any = None) -> list[Any]:
        """Run a validation pass on the loaders' device; return `[valid_loss, *metrics]`."""
        move_to_loaders_device(self)
        self._batch_device = self._device()
        with self.added_cbs(cbs), self.no_logging(), self.no_bar():
            self._do_epoch_validate(ds_idx, dl)
        return list(getattr(self, "final_record", []))

    def get_preds(self, ds_idx: int = 1, dl: Any = None, with_input: bool = False,
                  with_decoded: bool = False, with_loss: bool = False, act: Callable | None = None,
                  inner: bool = False, reorder: bool = True, cbs: Any = None, **kwargs: Any) -> tuple:
        """Predictions and targets over a whole split, in dataset order: `([inputs,] preds, targs[, decoded]
        [, losses])`. `kwargs` go to `GatherPredsCallback` (`with_preds`, `with_targs`, `concat_dim`).

        fastai's `inner` and `reorder` are accepted: this loop fires no fit/epoch events around a
        prediction pass anyway, and predictions always come back in dataset order.
        """
        from rnnkit.callbacks.preds import GatherPredsCallback

        if dl is None:
            dl = self.dls[ds_idx]
        if getattr(dl, "shuffle", False):
            dl = dl.new(shuffle=False) if hasattr(dl, "new") else copy.copy(dl)
            dl.shuffle = False
        if act is None:
            act = getattr(self.loss_func, "activation", noop)
        gather = GatherPredsCallback(with_input=with_input, with_loss=with_loss, **kwargs)
        ctx = self.loss_not_reduced() if with_loss else contextlib.nullcontext()
        with ctx:
            self.validate(dl=dl, cbs=[gather] + as_cb_list(cbs))
        res = gather.all_tensors()
        pred_i = 1 if with_input else 0
        if res[pred_i] is not None:
            res[pred_i] = act(res[pred_i])
            if with_decoded:
                res.insert(pred_i + 2, getattr(self.loss_func, "decodes", noop)(res[pred_i]))
        return tuple(res)

    def to_detach(self, b: Any, cpu: bool = True, gather: bool = True) -> Any:
        """`b` (tensors, nested in lists/tuples/dicts) detached from autograd, and on the CPU when `cpu`:
        what fastai metrics call on the learner. (`gather` is for multi-process runs.)"""
        dl_detach = getattr(self.dl, "to_detach", None)
        if dl_detach is not None:
            return dl_detach(b, cpu, gather)
        return to_detach(b, cpu, gather)

    # ---- contexts ----
    @contextlib.contextmanager
    def no_logging(self: _E) -> Iterator[_E]:
        """Silence `learn.logger` (the per-epoch rows) inside a `with` block."""
        old, self.logger = self.logger, noop
        try:
            yield self
        finally:
            self.logger = old

    @contextlib.contextmanager
    def no_bar(self: _E) -> Iterator[_E]:
        """Hide progress bars and the epoch table inside a `with` block."""
        with self.removed_cbs(ProgressCallback):
            yield self

    @contextlib.contextmanager
    def loss_not_reduced(self: _E) -> Iterator[_E]:
        """Make the loss function return per-item losses inside a `with` block."""
        if hasattr(self.loss_func, "reduction"):
            old = self.loss_func.reduction
            self.loss_func.reduction = "none"
            try:
                yield self
            finally:
                self.loss_func.reduction = old
        else:
            old_f = self.loss_func
            self.loss_func = functools.partial(old_f, reduction="none")
            try:
                yield self
            finally:
                self.loss_func = old_f
