"""Callbacks for recurrent models: resetting hidden state, and AR/TAR regularization
(Merity et al., "Regularizing and Optimizing LSTM Language Models", 2017)."""
from __future__ import annotations

from typing import Any

from torch import nn

from rnnkit.training.callback import Callback

__all__ = ["ModelResetter", "ModelReseter", "RNNCallback", "RNNRegularizer", "RNNTrainer", "rnn_cbs"]


class ModelResetter(Callback):
    """Call `model.reset()` before training, before validation and after fitting, so the hidden
    state of one phase never leaks into the next."""

    def before_train(self) -> None:
        _reset(self.learn.model)

    def before_validate(self) -> None:
        _reset(self.learn.model)

    def after_fit(self) -> None:
        _reset(self.learn.model)


def _reset(model: nn.Module) -> None:
    model.reset()  # type: ignore[operator]  # any model with a reset() method


ModelReseter = ModelResetter  # the spelling the chapter-12 notebook uses


def _last_layer(x: Any) -> Any:
    """Per-layer lists of activations: the regularizers use the last layer."""
    return x[-1] if isinstance(x, (list, tuple)) else x


class RNNCallback(Callback):
    """Split a model's `(output, raw_activations, dropped_activations)`: the loss sees only the output."""

    def after_pred(self) -> None:
        pred = self.learn.pred
        if isinstance(pred, (tuple, list)) and len(pred) == 3:
            out, raw, dropped = pred
            self.raw_out, self.out = _last_layer(raw), _last_layer(dropped)
            self.learn.pred = out


class RNNRegularizer(Callback):
    """Add AR (`alpha`, on the dropped-out activations) and TAR (`beta`, on the raw ones) to the loss,
    in training only."""

    order = RNNCallback.order + 1  # needs the activations RNNCallback splits off in after_pred
    run_valid = False

    def __init__(self, alpha: float = 0.0, beta: float = 0.0) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def before_fit(self) -> None:
        self._rnn = self.learn.get_cb(RNNCallback)
        if self._rnn is None:
            # The book passes RNNRegularizer alone (`cbs=[ModelReseter, RNNRegularizer(...)]`):
            # add the splitter it depends on rather than fail.
            self._rnn = RNNCallback()
            self.learn.add_cb(self._rnn)

    def after_loss(self) -> None:
        if not self.learn.training:
            return
        rnn = self._rnn
        if self.alpha:
            self.learn.loss_grad = self.learn.loss_grad + self.alpha * rnn.out.float().pow(2).mean()
        if self.beta:
            h = rnn.raw_out
            if h.shape[1] > 1:  # (bs, seq_len, n_hid): needs two time steps
                self.learn.loss_grad = self.learn.loss_grad + \
                    self.beta * (h[:, 1:] - h[:, :-1]).float().pow(2).mean()


def rnn_cbs(alpha: float = 0.0, beta: float = 0.0) -> list[Callback]:
    """The callbacks an RNN with AR/TAR needs: `[RNNCallback(), RNNRegularizer(alpha, beta)]`."""
    return [RNNCallback(), RNNRegularizer(alpha=alpha, beta=beta)]


class RNNTrainer(RNNRegularizer):
    """fastai's RNN training tweaks in one callback: AR, TAR, and, when the loader varies the
    sequence length, the learning rate multiplied by `seq_len/bptt` for that step (restored after).

    `RNNTrainer(learn, bptt, alpha, beta)` adds itself to `learn`; pass `learn=None` to add it
    yourself (e.g. in `cbs=`).
    """

    def __init__(self, learn: Any = None, bptt: int = 70, alpha: float = 0.0, beta: float = 0.0,
                 adjust: bool = True) -> None:
        super().__init__(alpha=alpha, beta=beta)
        if bptt <= 0:
            raise ValueError(f"RNNTrainer bptt must be a positive sequence length, got {bptt}")
        self.bptt, self.adjust = bptt, adjust
        self._saved_lrs: list[float] | None = None
        if learn is not None:
            learn.add_cb(self)

    def before_step(self) -> None:
        if not self.adjust:
            return
        seq_len = self.learn.xb[0].shape[1]
        if seq_len == self.bptt:
            return
        opt = self.learn.opt
        self._saved_lrs = [h["lr"] for h in opt.hypers]
        opt.set_hyper("lr", [lr * seq_len / self.bptt for lr in self._saved_lrs])

    def _restore(self) -> None:
        if self._saved_lrs is not None:
            self.learn.opt.set_hyper("lr", self._saved_lrs)
            self._saved_lrs = None

    def after_step(self) -> None:
        self._restore()

    def after_cancel_step(self) -> None:
        self._restore()
