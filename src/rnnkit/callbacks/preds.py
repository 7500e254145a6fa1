"""Collecting predictions over a whole split (used by `Learner.get_preds`)."""
from __future__ import annotations

from typing import Any

import torch

from rnnkit.torch_core import to_detach
from rnnkit.training.callback import Callback
from rnnkit.utils import L, find_bs

__all__ = ["GatherPredsCallback", "FetchPredsCallback"]


def _cat(chunks: list[Any], dim: int = 0) -> Any:
    if not chunks:
        return None
    first = chunks[0]
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([c[i] for c in chunks], dim) for i in range(len(first)))
    return torch.cat(chunks, dim=dim) if isinstance(first, torch.Tensor) else chunks


class GatherPredsCallback(Callback):
    """Keep the predictions, targets (and optionally inputs, per-item losses) of every batch.

    As in fastai, `with_preds`/`with_targs` switch those off and `concat_dim` is the dimension
    batches are joined along; saving to files (fastai's `save_preds`, which pickles) is not offered.
    """

    order = 55  # after the Recorder, so losses are final

    def __init__(self, with_input: bool = False, with_loss: bool = False, with_preds: bool = True,
                 with_targs: bool = True, concat_dim: int = 0) -> None:
        super().__init__()
        self.with_input, self.with_loss = with_input, with_loss
        self.with_preds, self.with_targs, self.concat_dim = with_preds, with_targs, concat_dim

    def before_validate(self) -> None:
        self._preds: list[Any] = []
        self._targs: list[Any] = []
        self._inps: list[Any] = []
        self._losses: list[Any] = []

    def after_batch(self) -> None:
        learn = self.learn
        if self.with_preds:
            pred = learn.pred[0] if isinstance(learn.pred, tuple) else learn.pred
            self._preds.append(pred.detach().float().cpu())
        if learn.yb and self.with_targs:  # batches without targets give `targets = None`, as in fastai
            y = learn.yb[0] if len(learn.yb) == 1 else learn.yb
            self._targs.append(to_detach(y))
        if self.with_input:
            x = learn.xb[0] if len(learn.xb) == 1 else learn.xb
            self._inps.append(to_detach(x))
        if self.with_loss:
            loss, bs = learn.loss.detach().float(), find_bs(learn.yb)
            # one loss per item, as fastai gives: a flattened loss (one per token) is averaged per item
            self._losses.append((loss if loss.numel() == bs else loss.view(bs, -1).mean(1)).cpu())

    def after_validate(self) -> None:
        dim = self.concat_dim
        self.preds = _cat(self._preds, dim) if self.with_preds else None
        self.targets = _cat(self._targs, dim) if self.with_targs else None
        self.inputs = _cat(self._inps, dim) if self.with_input else None
        self.losses = _cat(self._losses) if self.with_loss else None

    def all_tensors(self) -> list[Any]:
        """What was gathered, in fastai's order: `[inputs,] preds, targets[, losses]`."""
        res = [self.preds, self.targets]
        if self.with_input:
            res = [self.inputs] + res
        if self.with_loss:
            res.append(self.losses)
        return res


class FetchPredsCallback(Callback):
    """Get predictions on `dl` (or split `ds_idx`) after each validation, without `cbs` and the
    callbacks marked `remove_on_fetch`; they are in `self.preds`."""

    remove_on_fetch = True  # itself included: its prediction pass must not fetch again

    def __init__(self, ds_idx: int = 1, dl: Any = None, with_input: bool = False, with_decoded: bool = False,
                 cbs: Any = None, reorder: bool = True) -> None:
        super().__init__()
        self.cbs = L(cbs)
        self.ds_idx, self.dl, self.with_input = ds_idx, dl, with_input
        self.with_decoded, self.reorder = with_decoded, reorder

    def after_validate(self) -> None:
        learn = self.learn
        to_remove = [cb for cb in learn.cbs if getattr(cb, "remove_on_fetch", False)] + list(self.cbs)
        with learn.removed_cbs(to_remove):
            self.preds = learn.get_preds(ds_idx=self.ds_idx, dl=self.dl, with_input=self.with_input,
                                         with_decoded=self.with_decoded, inner=True, reorder=self.reorder)
