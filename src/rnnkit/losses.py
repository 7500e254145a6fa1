"""Flattened losses with fastai's API: any class axis, any leading shape.

A language model predicts `(bs, seq_len, vocab_sz)` against targets `(bs, seq_len)`; these
wrappers move the class axis last and flatten so the plain torch loss sees `(N, C)` vs `(N,)`.
They also carry `activation` (used by `get_preds`) and `decodes` (prediction -> label).

A language model's cross-entropy on the CPU runs in row chunks (`_ChunkedCrossEntropy`): the plain
loss materializes the log-probabilities, a zero-filled gradient of them and the gradient of the logits,
three more logits-sized blocks per step, each freshly mapped and zero-filled by the kernel.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from rnnkit.memory import buffer_pool, chunked_loss_applies

__all__ = ["BaseLoss", "CrossEntropyLossFlat", "BCEWithLogitsLossFlat", "MSELossFlat"]

# Integer targets that torch's classification losses refuse; they want int64.
_SMALL_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32)


class BaseLoss:
    """Wrap the torch loss `func`, moving `axis` last and flattening inputs and targets.

    Args:
        axis: the class axis of the input.
        flatten: flatten before calling `func` (to `(N, C)` if `is_2d`, else to `(N,)`).
        floatify: cast the targets to float (for BCE/MSE with integer targets).
        is_2d: keep the class axis when flattening the input.
    """

    def __init__(
        self,
        func: nn.Module,
        *,
        axis: int = -1,
        flatten: bool = True,
        floatify: bool = False,
        is_2d: bool = True,
    ) -> None:
        self.func, self.axis, self.flatten, self.floatify, self.is_2d = (
            func, axis, flatten, floatify, is_2d)

    @property
    def reduction(self) -> str:
        """The wrapped loss's reduction; set it to 'none' for per-item losses."""
        return str(self.func.reduction)

    @reduction.setter
    def reduction(self, value: str) -> None:
        self.func.reduction = value  # type: ignore[assignment]

    def __call__(self, inp: Tensor, targ: Tensor, **kwargs: Any) -> Tensor:
        """Loss of `inp` against `targ`; with reduction='none', one value per flattened item."""
        same_shape = targ.ndim == inp.ndim  # BCE, MSE, or class probabilities for CE
        if same_shape:
            targ = targ.movedim(self.axis, -1)
        inp = inp.movedim(self.axis, -1)
        if self.floatify and targ.dtype != torch.float16:
            targ = targ.float()
        elif targ.dtype in _SMALL_INTS:
            targ = targ.long()
        if self.flatten:
            # reshape, not view: movedim leaves the tensor non-contiguous when axis != -1
            inp = inp.reshape(-1, inp.shape[-1]) if self.is_2d else inp.reshape(-1)
            keep_classes = same_shape and self.is_2d  # CE with probabilities: (N, C) targets
            targ = targ.reshape(-1, targ.shape[-1]) if keep_classes else targ.reshape(-1)
        return self._loss(inp, targ, **kwargs)

    def _loss(self, inp: Tensor, targ: Tensor, **kwargs: Any) -> Tensor:
        return self.func(inp, targ, **kwargs)

    def activation(self, x: Tensor) -> Tensor:
        """Map raw model outputs to predictions; identity unless a subclass says otherwise."""
        return x

    def decodes(self, x: Tensor) -> Tensor:
        """Map activations to decoded predictions; identity unless a subclass says otherwise."""
        return x

    def to(self, device: torch.device | str) -> BaseLoss:
        """Move the wrapped loss's buffers (class weights) to `device`, as fastai's `BaseLoss.to` does."""
        if isinstance(self.func, nn.Module):
            self.func.to(device)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(axis={self.axis}, func={self.func!r})"


class CrossEntropyLossFlat(BaseLoss):
    """`nn.CrossEntropyLoss` over the class `axis`, flattened; decodes by argmax."""

    def __init__(
        self,
        weight: Tensor | None = None,
        *,
        axis: int = -1,
        ignore_index: int = -100,
        reduction: str = "mean",
        flatten: bool = True,
        floatify: bool = False,
        is_2d: bool = True,
        **kwargs: Any,
    ) -> None:
        func = nn.CrossEntropyLoss(
            weight=weight, ignore_index=ignore_index, reduction=reduction, **kwargs)
        super().__init__(func, axis=axis, flatten=flatten, floatify=floatify, is_2d=is_2d)

    def _loss(self, inp: Tensor, targ: Tensor, **kwargs: Any) -> Tensor:
        func = self.func
        if (kwargs or type(func) is not nn.CrossEntropyLoss or func.weight is not None
                or func.label_smoothing != 0 or func.reduction not in ("mean", "sum", "none")
                or inp.ndim != 2 or targ.ndim != 1 or targ.dtype != torch.int64 or targ.device != inp.device
                or not chunked_loss_applies(inp, inp.numel() * inp.element_size())):
            return func(inp, targ, **kwargs)
        return _ChunkedCrossEntropy.apply(inp, targ, func.ignore_index, func.reduction)

    def activation(self, x: Tensor) -> Tensor:
        """Softmax over the class axis."""
        return F.softmax(x, dim=self.axis)

    def decodes(self, x: Tensor) -> Tensor:
        """Index of the most likely class."""
        return x.argmax(dim=self.axis)


class BCEWithLogitsLossFlat(BaseLoss):
    """`nn.BCEWithLogitsLoss` flattened, with float targets; decodes by `x > thresh`."""

    def __init__(
        self,
        weight: Tensor | None = None,
        *,
        axis: int = -1,
        floatify: bool = True,
        thresh: float = 0.5,
        pos_weight: Tensor | None = None,
        reduction: str = "mean",
        flatten: bool = True,
        **kwargs: Any,
    ) -> None:
        func = nn.BCEWithLogitsLoss(
            weight=weight, pos_weight=pos_weight, reduction=reduction, **kwargs)
        super().__init__(func, axis=axis, flatten=flatten, floatify=floatify, is_2d=False)
        self.thresh = thresh

    def activation(self, x: Tensor) -> Tensor:
        """Sigmoid of the logits."""
        return torch.sigmoid(x)

    def decodes(self, x: Tensor) -> Tensor:
        """Boolean predictions: probability above `thresh`."""
        return x > self.thresh


class MSELossFlat(BaseLoss):
    """`nn.MSELoss` flattened, with float targets."""

    def __init__(
        self,
        *,
        axis: int = -1,
        floatify: bool = True,
        reduction: str = "mean",
        flatten: bool = True,
        **kwargs: Any,
    ) -> None:
        func = nn.MSELoss(reduction=reduction, **kwargs)
        super().__init__(func, axis=axis, flatten=flatten, floatify=floatify, is_2d=False)


# Rows per chunk hold about this many bytes of logits, so each chunk stays in cache between the passes
# over it. Forward and backward (benchmarks/bench_cross_entropy.py, 2 threads): PTB's 4480 x 10000 logits
# 32 ms with 4 MiB chunks, 36 ms with 1 MiB, 48 ms with 256 KiB, torch's cross_entropy 167 ms;
# WikiText-2's 4480 x 33278: 113, 139, 279 and 809 ms.
_CE_CHUNK_BYTES = 4 << 20


class _ChunkedCrossEntropy(torch.autograd.Function):
    """`F.cross_entropy(x, targ, ignore_index=, reduction=)` for `(N, C)` logits, a chunk of rows at a
    time: no logits-sized temporaries, and the gradient (softmax minus one-hot, recomputed from the
    logits) is written straight into a pooled buffer.

    bfloat16 logits (a decoder under CPU autocast) are read a chunk at a time into float32, where the
    log-softmax, the loss and the gradient are computed; the gradient is stored in bfloat16, like the
    logits. Autocast's own path casts the whole logits block to float32 and runs the plain loss on it:
    PTB's 4480 x 10000 logits, forward + backward on 2 threads, 273 ms that way against 45 ms here
    (`benchmarks/bench_cross_entropy.py --bf16`); with it a whole `--precision bf16` step of the `budget`
    recipe (emb 200, hid 400, bs 64, bptt 70) takes 0.45 s against 0.60 s in float32 (it was 0.66 s)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, targ: Tensor, ignore_index: int, reduction: str) -> Tensor:
        n, c = x.shape
        valid = targ != ignore_index
        t = torch.where(valid, targ, torch.zeros_like(targ))
        lo, hi = (int(t.min()), int(t.max())) if n else (0, 0)
        if lo < 0 or hi >= c:
            bad = hi if hi >= c else lo
            raise IndexError(f"Target {bad} is out of bounds: the model gives {c} classes (targets 0 to {c - 1}).")
        work = torch.float32 if x.dtype == torch.bfloat16 else x.dtype  # the dtype the chunks are computed in
        rows = max(1, _CE_CHUNK_BYTES // max(c * work.itemsize, 1))
        with torch.autocast("cpu", enabled=False):
            nll = x.new_empty(n, dtype=work)
            log_probs = x.new_empty(min(rows, n), c, dtype=work)  # one chunk's log-softmax, reused
            for s in range(0, n, rows):
                e = min(s + rows, n)
                torch.log_softmax(x[s:e].to(work), 1, out=log_probs[: e - s])
                torch.gather(log_probs[: e - s], 1, t[s:e, None], out=nll[s:e, None])
            nll.neg_().masked_fill_(~valid, 0.0)
        ctx.save_for_backward(x, t, valid)
        ctx.reduction, ctx.rows, ctx.work = reduction, rows, work
        if reduction == "none":
            return nll
        total = nll.sum()
        return total / valid.sum() if reduction == "mean" else total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, t, valid = ctx.saved_tensors
        work = ctx.work
        scale = valid.to(work)  # (N,): d loss / d nll_i, zero for ignored targets
        if ctx.reduction == "mean":
            scale.mul_(grad_out.to(work) / valid.sum())
        else:
            scale.mul_(grad_out.to(work))
        grad = buffer_pool.empty(x.shape, x.dtype, x.device)  # (N, C)
        with torch.autocast("cpu", enabled=False):
            if work == x.dtype:
                for s in range(0, x.shape[0], ctx.rows):
                    e = min(s + ctx.rows, x.shape[0])
                    torch.softmax(x[s:e], 1, out=grad[s:e]).mul_(scale[s:e, None])
                grad.scatter_add_(1, t[:, None], scale.neg()[:, None])  # minus the one-hot
                return grad, None, None, None
            chunk = x.new_empty(min(ctx.rows, x.shape[0]), x.shape[1], dtype=work)
            for s in range(0, x.shape[0], ctx.rows):
                e = min(s + ctx.rows, x.shape[0])
                g = torch.softmax(x[s:e].to(work), 1, out=chunk[: e - s]).mul_(scale[s:e, None])
                g.scatter_add_(1, t[s:e, None], scale[s:e, None].neg())  # minus the one-hot, in float32
                grad[s:e].copy_(g)
        return grad, None, None, None
