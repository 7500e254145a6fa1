"""`PooledLinear`: `nn.Linear` whose large CPU outputs reuse the buffers of `rnnkit.memory.buffer_pool`.

A language model's decoder writes `bs * seq_len * vocab_sz` logits every step; freshly allocated, that
block is mapped and zero-filled by the kernel each time (see `rnnkit.memory`). The layer is an
`nn.Linear` in every other way: same parameters and state-dict keys, module hooks run, and outputs
below the pool's threshold, on other devices or under autocast go through `F.linear` unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from rnnkit.memory import buffer_pool, pooling_applies

__all__ = ["PooledLinear"]


class _PooledLinearFn(torch.autograd.Function):
    """`x @ weight.T + bias` written into a pooled buffer; the backward is nn.Linear's."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out = buffer_pool.empty((*x.shape[:-1], weight.shape[0]), x.dtype, x.device)
        x2d, out2d = x.reshape(-1, x.shape[-1]), out.view(-1, weight.shape[0])  # (bs*seq_len, n_in/n_out)
        if bias is None:
            torch.mm(x2d, weight.t(), out=out2d)
        else:
            torch.addmm(bias, x2d, weight.t(), out=out2d)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        g2d = grad.reshape(-1, grad.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (g2d @ weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            gw = g2d.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2d.sum(0)
        return gx, gw, gb


class PooledLinear(nn.Linear):
    """`nn.Linear` for outputs as large as a language model's logits: on the CPU in float32/float64,
    outputs of at least `buffer_pool.min_bytes` reuse pooled buffers instead of fresh memory."""

    def forward(self, input: Tensor) -> Tensor:
        out_bytes = input.numel() // max(input.shape[-1], 1) * self.out_features * input.element_size()
        if input.dtype != self.weight.dtype or not pooling_applies(input, out_bytes):
            return F.linear(input, self.weight, self.bias)
        return _PooledLinearFn.apply(input, self.weight, self.bias)
