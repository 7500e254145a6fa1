"""The dropouts of AWD-LSTM (Merity, Keskar & Socher, 2017, "Regularizing and Optimizing LSTM
Language Models"): variational dropout on activations (one mask per sequence), embedding dropout
(whole words), and DropConnect on the hidden-to-hidden weights that keeps PyTorch's fused LSTM."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, _VF, nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence

from rnnkit.utils import cpu_autocast_dtype, cpu_computes_natively

__all__ = ["EmbeddingDropout", "RNNDropout", "WeightDropout", "dropout_mask"]


def _check_p(p: float, name: str) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}.")
    return float(p)


# The CPU draws 16-bit integers when the keep probability they give is within this fraction of both
# `p` and `1 - p` (an error in `1 - p` biases the mask's mean: kept units are scaled by exactly 1/(1 - p)).
_BITS16_REL_TOL = 1e-3
# Below this keep probability, float32 uniforms (steps of 2**-24) would miss 1 - p by more than 0.1%.
_FLOAT64_BELOW = 2**-13


def _bits16_drop(p: float) -> int | None:
    """How many of the 65536 16-bit values to drop for `p`, or None if no multiple of 2**-16 is close enough."""
    drop = round(p * 65536)  # within 2**-17 of p
    if 0 < drop < 65536 and abs(drop / 65536 - p) <= _BITS16_REL_TOL * min(p, 1.0 - p):
        return drop
    return None


def _scale_keep(keep: Tensor, p: float) -> Tensor:
    """`keep` (0s and 1s in the mask's dtype) with the 1s made 1/(1 - p), in place, by fastai's very
    operation (`div_(1 - p)`), so the value matches it to the last bit in every dtype: float32 divides by
    float32(1 - p), which for p = 0.04 is one ulp away from the float32 nearest to 1/(1 - p).

    Multiplying by a scale computed once (as this did before, with the scale of the rounded p) is only a
    little faster on 2 threads (benchmarks/bench_dropout.py): 50-110 us of a 4608x1152 weight mask's 20 ms
    (float32) or 5.5 ms (bfloat16), 25 us of 0.6 ms for 1600x400, 3-4 us of 30-70 us for an embedding or
    RNNDropout mask; about 0.2 ms per fastai-size AWD-LSTM step. Not worth a cached copy of the value,
    whose `.item()` would also break torch.compile graphs.
    """
    if keep.dtype != torch.float16 or 1.0 - p > 2**-15:
        return keep.div_(1 - p)
    # 1/(1 - p) is near or past float16's largest value, 65504 (other dtypes reach further than a float
    # 1 - p can come close to 0): accelerators divide by multiplying with the reciprocal, and 0 * inf
    # would be nan where units are dropped.
    return keep.masked_fill_(keep != 0, keep.new_ones(()).div_(1 - p))


def _mask_bits16(sz: Sequence[int], drop: int, p: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1/(1 - p) where a 16-bit random integer is not among the lowest `drop` of 65536, else 0.

    PyTorch's CPU generator fills tensors one number at a time on one core, and that dominated the cost
    of weight dropout (tens of ms per step for an AWD-LSTM's 11M hidden-to-hidden weights). One 64-bit
    draw gives four 16-bit numbers, so this needs a quarter of the draws of `torch.rand(sz) >= p`; the
    comparison writes the mask straight in `dtype` (no boolean tensor to convert). Measured on 2 threads
    (`benchmarks/bench_dropout.py`, the 'rand' column): 2.0-3.4x faster than the plain mask, e.g. 13 vs 27 ms
    (float32) and 6 vs 20 ms (bfloat16) for a 4608x1152 hidden-to-hidden weight.
    """
    n = math.prod(sz)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    mask = torch.empty(sz, dtype=dtype, device=device)
    # Each int16 is one of 65536 equally likely values in [-32768, 32767]; the lowest `drop` are dropped.
    torch.ge(bits.view(torch.int16)[:n].view(mask.shape), drop - 32768, out=mask)
    return _scale_keep(mask, p)


def dropout_mask(x: Tensor, sz: Sequence[int], p: float) -> Tensor:
    """A Bernoulli(1 - p) mask of shape `sz`, scaled by 1/(1 - p), with the dtype and device of `x`.

    The mask holds exactly 0 or fastai's 1/(1 - p) (`x.new_empty(sz).bernoulli_(1 - p).div_(1 - p)`, to the
    last bit in every dtype), so `x * mask` keeps what fastai keeps. Only the keep PROBABILITY is rounded:
    on the CPU, `p` becomes the nearest multiple of 2**-16 (0.3 -> 19661/65536 = 0.300003) when that is
    within 0.1% of both `p` and `1 - p`, so units are kept with a probability within 2**-17 of 1 - p and
    the mask's mean is within 0.1% of 1 in expectation; otherwise (and on accelerators) `p` is compared
    with uniform float32s, in steps of 2**-24 (float64s, steps of 2**-53, when 1 - p < 2**-13).
    """
    if p >= 1.0:  # everything dropped, as in F.dropout (fastai's mask would be 0/0 = nan)
        return x.new_zeros(sz)
    drop = _bits16_drop(p) if x.device.type == "cpu" else None
    if drop is not None:
        return _mask_bits16(sz, drop, p, x.dtype, x.device)
    # `rand >= p` is Bernoulli(1 - p), faster than `bernoulli_(1 - p)`; float32 at least so that
    # low-precision dtypes do not bias the keep probability. Accelerators' generators are parallel: no
    # need for bits.
    u_dtype = torch.float64 if 1.0 - p < _FLOAT64_BELOW else torch.float32
    keep = torch.rand(sz, device=x.device, dtype=u_dtype) >= p
    return _scale_keep(keep.to(x.dtype), p)


class RNNDropout(nn.Module):
    """Variational dropout for `(bs, seq_len, n)` activations: one mask per sequence, shared over time."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = _check_p(p, "p")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.dim() < 3:
            raise ValueError(f"RNNDropout expects (bs, seq_len, n) activations, got shape {tuple(x.shape)}; "
                             "use nn.Dropout for activations without a time axis.")
        return x * dropout_mask(x, (x.size(0), 1, *x.shape[2:]), self.p)  # mask: (bs, 1, n)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class EmbeddingDropout(nn.Module):
    """Drop whole words: zero rows of `emb.weight` in training and rescale the kept rows by 1/(1 - embed_p)."""

    def __init__(self, emb: nn.Embedding, embed_p: float) -> None:
        super().__init__()
        self.emb, self.embed_p = emb, _check_p(embed_p, "embed_p")

    def forward(self, words: Tensor, scale: float | None = None) -> Tensor:
        emb = self.emb
        out = F.embedding(words, emb.weight, emb.padding_idx, emb.max_norm, emb.norm_type,
                          emb.scale_grad_by_freq, emb.sparse)
        if self.training and self.embed_p != 0.0:
            # Same result as masking the rows of the (vocab_sz, emb_sz) matrix, but only the looked-up
            # rows are multiplied: far cheaper for large vocabularies, and sparse gradients still work.
            row_mask = dropout_mask(emb.weight, (emb.weight.size(0), 1), self.embed_p)
            out = out * F.embedding(words, row_mask)  # (bs, seq_len, 1): one factor per word
        if scale is not None:
            out = out * scale
        return out

    def extra_repr(self) -> str:
        return f"embed_p={self.embed_p}"


# The fused kernels nn.LSTM/GRU/RNN call, by `RNNBase.mode`.
_RNN_FUNCS: dict[str, Callable[..., Any]] = {
    "LSTM": _VF.lstm, "GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}


def _cpu_autocast_cannot_run_rnn(x: Tensor) -> bool:
    if x.device.type != "cpu":
        return False
    dtype = cpu_autocast_dtype()
    return dtype is not None and not cpu_computes_natively(dtype)


class WeightDropout(nn.Module):
    """DropConnect on weights of `module` (by default an LSTM's hidden-to-hidden matrix), a new mask per
    training forward; `nn.LSTM`/`nn.GRU`/`nn.RNN` still run PyTorch's fused kernel.

    Args:
        module: the wrapped module; its weights named in `layer_names` move here as `<name>_raw`
            parameters, and `module.<name>` becomes a plain tensor: the weight of the last forward.
        weight_p: probability of dropping each weight (kept weights are scaled by 1/(1 - weight_p)).
        layer_names: one parameter name or a list, e.g. `[f"weight_hh_l{k}" for k in range(n_layers)]`.
    """

    def __init__(self, module: nn.Module, weight_p: float,
                 layer_names: str | Sequence[str] = "weight_hh_l0") -> None:
        super().__init__()
        self.module, self.weight_p = module, _check_p(weight_p, "weight_p")
        self.layer_names = [layer_names] if isinstance(layer_names, str) else list(layer_names)
        for name in self.layer_names:
            w = module._parameters.get(name)
            if w is None:
                own = [n for n, p in module._parameters.items() if p is not None]
                raise ValueError(f"WeightDropout: {type(module).__name__} has no parameter {name!r}; "
                                 f"its parameters are {own}.")
            # The raw weight lives here only, so parameters() and the state_dict hold it once (as
            # `<name>_raw`, fastai's key), and the module never sees an in-place-modified copy.
            delattr(module, name)
            self.register_parameter(f"{name}_raw", w)
            setattr(module, name, w.detach())  # a plain tensor attribute: not a parameter, not saved
        self._cudnn_layouts: dict[tuple[torch.device, torch.dtype], tuple[list[int], int] | None] = {}

    def _weight(self, name: str) -> Tensor:
        raw = getattr(self, f"{name}_raw")
        if self.training and self.weight_p > 0.0:
            return raw * dropout_mask(raw, raw.shape, self.weight_p)  # out of place: `raw` stays intact
        return raw

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        weights = {name: self._weight(name) for name in self.layer_names}
        for name, w in weights.items():
            # As in fastai, `module.<name>` shows the weight the last forward used (detached: for
            # inspection only; a non-leaf attribute would also break copy.deepcopy).
            setattr(self.module, name, w.detach())
        if type(self.module) in (nn.LSTM, nn.GRU, nn.RNN):
            return self._rnn_forward(weights, *args, **kwargs)
        return functional_call(self.module, weights, args, kwargs, strict=False)

    def _rnn_forward(self, weights: dict[str, Tensor], input: Tensor, hx: Any = None) -> tuple[Tensor, Any]:
        rnn: nn.RNNBase = self.module  # type: ignore[assignment]
        if isinstance(input, PackedSequence) or input.dim() != 3:
            shape = "a PackedSequence" if isinstance(input, PackedSequence) else f"shape {tuple(input.shape)}"
            raise ValueError(f"WeightDropout runs {type(rnn).__name__} on padded 3-D batches, got {shape}; "
                             "pad the sequences and pass a (bs, seq_len, n) tensor (batch_first=True).")
        if input.size(-1) != rnn.input_size:
            raise ValueError(f"{type(rnn).__name__} expects input feature size {rnn.input_size}, "
                             f"got {input.size(-1)}.")
        if hx is None:
            bs = input.size(0 if rnn.batch_first else 1)
            n_states = rnn.num_layers * (2 if rnn.bidirectional else 1)
            h_sz = rnn.proj_size if rnn.proj_size > 0 else rnn.hidden_size
            h = input.new_zeros(n_states, bs, h_sz)
            hx = (h, input.new_zeros(n_states, bs, rnn.hidden_size)) if rnn.mode == "LSTM" else h
        else:
            # nn.LSTM.forward's own check (2 us): the fused kernel called directly does not check the state's
            # shape, and on the CPU would run with a state of another batch size.
            rnn.check_forward_args(input, hx, None)
        flat = [weights[n] if n in weights else getattr(rnn, n) for n in rnn._flat_weights_names]
        if flat[0].is_cuda:
            flat = self._one_chunk_for_cudnn(flat)
        # One call into the fused kernel (cuDNN, oneDNN or ATen's), exactly what nn.LSTM.forward makes,
        # with the dropped weights in place of the module's own.
        kernel = _RNN_FUNCS[rnn.mode]
        args = (rnn.bias, rnn.num_layers, float(rnn.dropout), rnn.training, rnn.bidirectional, rnn.batch_first)
        if _cpu_autocast_cannot_run_rnn(input):
            # oneDNN has no LSTM/GRU in this autocast dtype on this CPU (plain nn.LSTM fails here):
            # run the kernel in float32, as autocast does for ops it has no low-precision kernel for.
            with torch.autocast("cpu", enabled=False):
                hx = tuple(h.float() for h in hx) if isinstance(hx, tuple) else hx.float()
                res = kernel(input.float(), hx, [w.float() for w in flat], *args)
        else:
            res = kernel(input, hx, flat, *args)
        if rnn.mode == "LSTM":
            return res[0], (res[1], res[2])
        return res[0], res[1]

    def _one_chunk_for_cudnn(self, flat: list[Tensor]) -> list[Tensor]:
        # cuDNN wants all weights as views of one buffer; otherwise it copies them into one and warns
        # ("RNN module weights are not part of single contiguous chunk of memory"). A fresh dropped
        # weight is never in the module's buffer, so build the buffer ourselves, in cuDNN's layout.
        key = (flat[0].device, flat[0].dtype)
        if key not in self._cudnn_layouts:
            self._cudnn_layouts[key] = _cudnn_layout(self.module, flat)  # type: ignore[arg-type]
        layout = self._cudnn_layouts[key]
        return flat if layout is None else _as_one_chunk(flat, *layout)

    def reset(self) -> None:
        """Show the raw weights on the module again, as fastai does, and reset the module if it has state
        (masks are drawn afresh every forward anyway)."""
        for name in self.layer_names:
            setattr(self.module, name, getattr(self, f"{name}_raw").detach())  # unscaled, nothing dropped
        reset = getattr(self.module, "reset", None)
        if callable(reset):
            reset()

    def extra_repr(self) -> str:
        return f"weight_p={self.weight_p}, layer_names={self.layer_names}"


def _cudnn_layout(rnn: nn.RNNBase, flat: list[Tensor]) -> tuple[list[int], int] | None:
    """Offsets of each weight in cuDNN's flat buffer and its size, learned by letting PyTorch flatten
    copies of the weights once; `None` when cuDNN will not run this module."""
    w = flat[0]
    if not (torch.backends.cudnn.enabled and torch.backends.cudnn.is_acceptable(w)
            and torch._use_cudnn_rnn_flatten_weight() and all(t.dtype == w.dtype for t in flat)):
        return None
    from torch.backends.cudnn import rnn as cudnn_rnn

    copies = [t.detach().clone() for t in flat]
    n_per_layer = (4 if rnn.bias else 2) + (1 if rnn.proj_size > 0 else 0)
    with torch.no_grad():  # flattening points each copy into the new buffer
        buf = torch._cudnn_rnn_flatten_weight(copies, n_per_layer, rnn.input_size,
                                              cudnn_rnn.get_cudnn_mode(rnn.mode), rnn.hidden_size,
                                              rnn.proj_size, rnn.num_layers, rnn.batch_first,
                                              bool(rnn.bidirectional))
    return [int(c.storage_offset()) for c in copies], buf.numel()


def _as_one_chunk(weights: list[Tensor], offsets: list[int], total: int) -> list[Tensor]:
    """Copy `weights` into one new flat tensor of `total` elements at `offsets`; return views into it."""
    pieces, pos = [], 0
    for i in sorted(range(len(weights)), key=offsets.__getitem__):
        if offsets[i] > pos:  # alignment gap
            pieces.append(weights[i].new_zeros(offsets[i] - pos))
        pieces.append(weights[i].reshape(-1))
        pos = offsets[i] + weights[i].numel()
    if total > pos:
        pieces.append(weights[0].new_zeros(total - pos))
    buf = torch.cat(pieces)  # differentiable: gradients flow back to each weight
    return [buf[o:o + w.numel()].view_as(w) for w, o in zip(weights, offsets)]
