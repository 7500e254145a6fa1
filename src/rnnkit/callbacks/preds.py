"""Collecting predictions over a whole split (used by `Learner.get_preds`)."""
from __future__ import annotations

from typing import Any

import torch

from rnnkit.training.callback import Callback

__all__ = ["GatherPredsCallback"]


def _cat(chunks: list[Any]) -> Any:
    if not chunks:
        return None
    first = chunks[0]
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([c[i] for c in chunks]) for i in range(len(first)))
    return torch.cat(chunks) if isinstance(first, torch.Tensor) else chunks


def _detach_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, (tuple, list)):  # several inputs (n_inp > 1) or targets
        return type(x)(_detach_cpu(o) for o in x)
    return x


class GatherPredsCallback(Callback):
    """Keep the predictions, targets (and optionally inputs, per-item losses) of every batch."""

    order = 55  # after the Recorder, so losses are final

    def __init__(self, with_input: bool = False, with_loss: bool = False) -> None:
        super().__init__()
        self.with_input, self.with_loss = with_input, with_loss

    def before_validate(self) -> None:
        self._preds: list[Any] = []
        self._targs: list[Any] = []
        self._inps: list[Any] = []
        self._losses: list[Any] = []

    def after_batch(self) -> None:
        learn = self.learn
        pred = learn.pred[0] if isinstance(learn.pred, tuple) else learn.pred
        self._preds.append(pred.detach().float().cpu())
        if learn.yb:  # batches without targets give `targets = None`, as in fastai
            y = learn.yb[0] if len(learn.yb) == 1 else learn.yb
            self._targs.append(_detach_cpu(y))
        if self.with_input:
            x = learn.xb[0] if len(learn.xb) == 1 else learn.xb
            self._inps.append(_detach_cpu(x))
        if self.with_loss:
            self._losses.append(learn.loss.detach().float().cpu().reshape(-1))

    def after_validate(self) -> None:
        self.preds, self.targets = _cat(self._preds), _cat(self._targs)
        self.inputs = _cat(self._inps) if self.with_input else None
        self.losses = _cat(self._losses) if self.with_loss else None
