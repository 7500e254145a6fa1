"""Callbacks for recurrent models: resetting hidden state, and AR/TAR regularization
(Merity et al., "Regularizing and Optimizing LSTM Language Models", 2017)."""
from __future__ import annotations

from typing import Any

from torch import nn

from rnnkit.training.callback import Callback

__all__ = ["ModelResetter", "ModelReseter", "RNNCallback", "RNNRegularizer", "rnn_cbs"]


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
            raise ValueError("RNNRegularizer needs RNNCallback to run first; add RNNCallback() "
                             "or use rnn_cbs(alpha, beta).")

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
