"""Callbacks for recurrent models: resetting hidden state, and AR/TAR regularization
(Merity et al., "Regularizing and Optimizing LSTM Language Models", 2017)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.training.callback import Callback

__all__ = ["ModelResetter", "ModelReseter", "RNNCallback", "RNNRegularizer", "RNNTrainer", "ar_tar", "rnn_cbs"]


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
    reset = getattr(model, "reset", None)
    if callable(reset):  # rnn_cbs() may also be given a model with no state to reset
        reset()


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


def _sum_sq(x: Tensor) -> Tensor:
    """sum(x**2) in two kernels, summed in float32 or wider."""
    return torch.linalg.vector_norm(x, dtype=torch.promote_types(x.dtype, torch.float32)).square_()


class _ARTAR(torch.autograd.Function):
    """`alpha * mean(out**2) + beta * mean((raw[:, 1:] - raw[:, :-1])**2)` with a hand-written backward.

    Autograd's version of the same formula runs about a dozen kernels over the activations
    (two zero-filled slice gradients for TAR alone) and as many on scalars; this one runs three
    over the activations forward and three backward. Forward + backward on 2 threads
    (`benchmarks/bench_ar_tar.py`): 0.57 vs 1.56 ms for the small preset's activations (a step of a
    few ms), 1.4 vs 5.2 ms at fastai's size in float32, 2.2 vs 6.6 ms in bfloat16.
    Sums are taken in float32 (or wider) whatever the activations' dtype.
    """

    @staticmethod
    def forward(ctx: Any, out: Tensor, raw: Tensor, alpha: float, beta: float) -> Tensor:
        diff = None
        if alpha:
            loss = _sum_sq(out).mul_(alpha / out.numel())
        if beta:
            diff = raw[:, 1:] - raw[:, :-1]  # (bs, seq_len - 1, n)
            tar = _sum_sq(diff)
            loss = loss.add_(tar, alpha=beta / diff.numel()) if alpha else tar.mul_(beta / diff.numel())
        ctx.alpha, ctx.beta = alpha, beta
        ctx.save_for_backward(out if alpha else None, diff)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        out, diff = ctx.saved_tensors
        grad_out = grad_raw = None
        if ctx.alpha and ctx.needs_input_grad[0]:
            grad_out = out * (grad * (2 * ctx.alpha / out.numel()))
        if ctx.beta and ctx.needs_input_grad[1]:
            # d/dh_t of sum_t (h_{t+1} - h_t)^2 is 2 (d_{t-1} - d_t), with d_{-1} = d_{T-1} = 0:
            # -d_0 at the first step, d_{T-2} at the last, one subtraction in between (two passes
            # over the activations in all, with the scaling; no zero-filled buffer)
            bs, steps = diff.shape[:2]
            grad_raw = diff.new_empty((bs, steps + 1, *diff.shape[2:]))
            grad_raw[:, 0].copy_(diff[:, 0]).neg_()
            grad_raw[:, steps].copy_(diff[:, steps - 1])
            torch.sub(diff[:, :-1], diff[:, 1:], out=grad_raw[:, 1:steps])
            grad_raw.mul_(grad * (2 * ctx.beta / diff.numel()))
        return grad_out, grad_raw, None, None


def ar_tar(out: Tensor, raw: Tensor, alpha: float = 0.0, beta: float = 0.0) -> Tensor:
    """Activation regularization `alpha * mean(out**2)` plus temporal activation regularization
    `beta * mean((raw[:, 1:] - raw[:, :-1])**2)`, a scalar of at least float32, for `(bs, seq_len, n)`
    activations.

    TAR needs two time steps: with `seq_len == 1` its term is 0.
    """
    if beta and raw.dim() < 2:
        raise ValueError(f"TAR needs (bs, seq_len, ...) activations, got shape {tuple(raw.shape)}.")
    if beta and raw.shape[1] < 2:
        beta = 0.0
    if not alpha and not beta:
        return out.new_zeros((), dtype=torch.promote_types(out.dtype, torch.float32))
    return _ARTAR.apply(out, raw, float(alpha), float(beta))


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
        if not self.learn.training or not (self.alpha or self.beta):
            return
        self.learn.loss_grad = self.learn.loss_grad + ar_tar(self._rnn.out, self._rnn.raw_out,
                                                             self.alpha, self.beta)


def rnn_cbs(alpha: float = 0.0, beta: float = 0.0) -> list[Callback]:
    """The callbacks an RNN needs, as fastai bundles them: `[ModelResetter(), RNNCallback()]`, plus
    `RNNRegularizer(alpha, beta)` when AR or TAR is on."""
    cbs: list[Callback] = [ModelResetter(), RNNCallback()]
    if alpha or beta:
        cbs.append(RNNRegularizer(alpha=alpha, beta=beta))
    return cbs


class RNNTrainer(RNNRegularizer):
    """fastai's RNN training tweaks in one callback: the model reset at the start of every epoch, AR,
    TAR, and, when the loader varies the sequence length, the learning rate multiplied by
    `seq_len/bptt` for that step (restored after).

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

    def before_epoch(self) -> None:
        # fastai v1's on_epoch_begin: each epoch starts from a zero hidden state
        _reset(self.learn.model)

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
