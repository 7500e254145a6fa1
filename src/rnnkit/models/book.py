"""The book's language models (fastbook chapter 12, "A Language Model from Scratch"), from three
hand-unrolled steps (`LMModel1`) to a regularized, weight-tied LSTM (`LMModel7`).

The book's slips are fixed: sizes are constructor arguments or read from the batch instead of the
globals `bs` and `sl`; an LSTM's state is a pair `(h, c)` of `(n_layers, bs, n_hidden)` tensors;
a carried state that does not fit the batch (a smaller last batch) is dropped and the batch starts
from zeros, and it follows the model to another device or dtype.

Stateful models (`LMModel3` on) carry the hidden state from one batch to the next, which is only
right when row `j` of a batch continues row `j` of the previous one (see `group_chunks`); call
`reset()` (or use `ModelResetter`) before a new stream. They declare that state as
`hidden_attrs = ("h",)`, the hidden-state protocol checkpoints follow (docs/hidden-state.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LMModel1", "LMModel2", "LMModel3", "LMModel4", "LMModel5", "LMModel6", "LMModel7"]


def _check_tokens(x: Tensor, n: int, name: str) -> None:
    if x.ndim != 2 or x.shape[1] < n:
        raise ValueError(f"{name} expects token ids of shape (bs, {n}); got shape {tuple(x.shape)}.")


def _carried(h: Tensor | None, bs: int, like: Tensor, batch_dim: int) -> Tensor | None:
    """The carried state `h` on `like`'s device and dtype, or None if there is none or it was for another batch size."""
    if h is None or h.shape[batch_dim] != bs:
        return None
    return h.to(like)  # a no-op unless the model was moved


class LMModel1(nn.Module):
    """Predict the 4th word from 3: the same embedding and hidden layer applied once per word, unrolled by hand."""

    hidden_attrs: tuple[str, ...] = ()  # nothing carried across batches

    def __init__(self, vocab_sz: int, n_hidden: int) -> None:
        super().__init__()
        self.i_h = nn.Embedding(vocab_sz, n_hidden)  # input to hidden
        self.h_h = nn.Linear(n_hidden, n_hidden)  # hidden to hidden
        self.h_o = nn.Linear(n_hidden, vocab_sz)  # hidden to output

    def forward(self, x: Tensor) -> Tensor:
        _check_tokens(x, 3, "LMModel1")
        h = F.relu(self.h_h(self.i_h(x[:, 0])))  # (bs, n_hidden)
        h = h + self.i_h(x[:, 1])
        h = F.relu(self.h_h(h))
        h = h + self.i_h(x[:, 2])
        h = F.relu(self.h_h(h))
        return self.h_o(h)  # (bs, vocab_sz)


class LMModel2(nn.Module):
    """`LMModel1` as a loop: the first recurrent network; the hidden state starts at zero on every call."""

    hidden_attrs: tuple[str, ...] = ()  # nothing carried across batches

    def __init__(self, vocab_sz: int, n_hidden: int) -> None:
        super().__init__()
        self.i_h = nn.Embedding(vocab_sz, n_hidden)
        self.h_h = nn.Linear(n_hidden, n_hidden)
        self.h_o = nn.Linear(n_hidden, vocab_sz)

    def forward(self, x: Tensor) -> Tensor:
        _check_tokens(x, 3, "LMModel2")
        h = self.h_h.weight.new_zeros(x.shape[0], self.h_h.out_features)  # a fresh state on every call
        for i in range(3):
            h = h + self.i_h(x[:, i])
            h = F.relu(self.h_h(h))  # (bs, n_hidden)
        return self.h_o(h)  # (bs, vocab_sz)


class _ReluRNN(nn.Module):
    """Shared by `LMModel3` and `LMModel4`: the loop's layers and a hidden state kept between calls."""

    hidden_attrs: tuple[str, ...] = ("h",)  # carried across batches; reset() clears it, checkpoints save it

    def __init__(self, vocab_sz: int, n_hidden: int) -> None:
        super().__init__()
        self.i_h = nn.Embedding(vocab_sz, n_hidden)
        self.h_h = nn.Linear(n_hidden, n_hidden)
        self.h_o = nn.Linear(n_hidden, vocab_sz)
        self.h: Tensor | int = 0  # 0 until the first batch, then a (bs, n_hidden) tensor

    def _state(self, x: Tensor) -> Tensor:
        w = self.h_h.weight
        h = _carried(self.h if isinstance(self.h, Tensor) else None, x.shape[0], w, batch_dim=0)
        return w.new_zeros(x.shape[0], w.shape[0]) if h is None else h  # (bs, n_hidden)

    def _step(self, h: Tensor, x_t: Tensor) -> Tensor:
        return F.relu(self.h_h(h + self.i_h(x_t)))  # (bs, n_hidden)

    def reset(self) -> None:
        """Forget the hidden state (the next batch starts from zeros)."""
        self.h = 0


class LMModel3(_ReluRNN):
    """`LMModel2` that keeps its hidden state from one batch to the next."""

    def forward(self, x: Tensor) -> Tensor:
        _check_tokens(x, 3, "LMModel3")
        h = self._state(x)
        for i in range(3):
            h = self._step(h, x[:, i])
        out = self.h_o(h)  # (bs, vocab_sz)
        # Truncated BPTT: keep the state's values, drop its history, so backward stops at this batch.
        self.h = h.detach()
        return out


class LMModel4(_ReluRNN):
    """`LMModel3` predicting the next word after every one of the `sl` words, not only after the last."""

    def __init__(self, vocab_sz: int, n_hidden: int, sl: int = 16) -> None:
        super().__init__(vocab_sz, n_hidden)
        if sl < 1:
            raise ValueError(f"sl is the number of tokens per sequence and must be at least 1; got {sl}.")
        self.sl = sl

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.sl:
            raise ValueError(f"LMModel4 was built for sequences of sl={self.sl} tokens, (bs, {self.sl}); got "
                             f"shape {tuple(x.shape)}. Build it with LMModel4(vocab_sz, n_hidden, sl=...) "
                             "to match your data.")
        h = self._state(x)
        outs = []
        for i in range(self.sl):
            h = self._step(h, x[:, i])
            outs.append(self.h_o(h))  # (bs, vocab_sz)
        self.h = h.detach()  # truncated BPTT, as in LMModel3
        return torch.stack(outs, dim=1)  # (bs, sl, vocab_sz)


class LMModel5(nn.Module):
    """A multi-layer `nn.RNN` language model whose `(n_layers, bs, n_hidden)` state is carried across batches."""

    hidden_attrs: tuple[str, ...] = ("h",)  # carried across batches; reset() clears it, checkpoints save it

    def __init__(self, vocab_sz: int, n_hidden: int, n_layers: int) -> None:
        super().__init__()
        self.i_h = nn.Embedding(vocab_sz, n_hidden)
        self.rnn = nn.RNN(n_hidden, n_hidden, n_layers, batch_first=True)
        self.h_o = nn.Linear(n_hidden, vocab_sz)
        self.n_layers, self.n_hidden = n_layers, n_hidden
        self.h: Tensor | None = None  # (n_layers, bs, n_hidden), made to fit the first batch

    def _state(self, x: Tensor) -> Tensor:
        w = self.h_o.weight
        h = _carried(self.h, x.shape[0], w, batch_dim=1)
        if h is None:
            h = torch.zeros(self.n_layers, x.shape[0], self.n_hidden, device=w.device, dtype=w.dtype)
        return h

    def forward(self, x: Tensor) -> Tensor:
        res, h = self.rnn(self.i_h(x), self._state(x))  # res: (bs, seq_len, n_hidden)
        self.h = h.detach()  # truncated BPTT: keep the values, drop the history
        return self.h_o(res)  # (bs, seq_len, vocab_sz)

    def reset(self) -> None:
        """Forget the hidden state (the next batch starts from zeros)."""
        self.h = None


class _StatefulLSTM(nn.Module):
    """Embedding -> multi-layer LSTM whose hidden state is carried across batches."""

    hidden_attrs: tuple[str, ...] = ("h",)  # carried across batches; reset() clears it, checkpoints save it

    def __init__(self, vocab_sz: int, n_hidden: int, n_layers: int) -> None:
        super().__init__()
        self.i_h = nn.Embedding(vocab_sz, n_hidden)
        self.rnn = nn.LSTM(n_hidden, n_hidden, n_layers, batch_first=True)
        self.h_o = nn.Linear(n_hidden, vocab_sz)
        self.n_layers, self.n_hidden = n_layers, n_hidden
        self.h: tuple[Tensor, Tensor] | None = None  # (h, c), each (n_layers, bs, n_hidden)

    def _state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w, bs = self.i_h.weight, x.shape[0]
        if self.h is not None:
            h, c = (_carried(s, bs, w, batch_dim=1) for s in self.h)
            if h is not None and c is not None:
                return h, c
        z = torch.zeros(self.n_layers, bs, self.n_hidden, device=w.device, dtype=w.dtype)
        return z, z.clone()

    def _run(self, x: Tensor) -> Tensor:
        raw, h = self.rnn(self.i_h(x), self._state(x))  # raw: (bs, seq_len, n_hidden)
        # Truncated BPTT: keep the state's values, drop its history.
        self.h = (h[0].detach(), h[1].detach())
        return raw

    def reset(self) -> None:
        """Forget the hidden state (the next batch starts from zeros)."""
        self.h = None


class LMModel6(_StatefulLSTM):
    """A multi-layer LSTM language model."""

    def forward(self, x: Tensor) -> Tensor:
        return self.h_o(self._run(x))  # (bs, seq_len, vocab_sz)


class LMModel7(_StatefulLSTM):
    """LSTM language model with dropout and weight tying; returns `(logits, raw, dropped)` for AR/TAR."""

    def __init__(self, vocab_sz: int, n_hidden: int, n_layers: int, p: float) -> None:
        super().__init__(vocab_sz, n_hidden, n_layers)
        self.drop = nn.Dropout(p)
        self.h_o.weight = self.i_h.weight  # weight tying: the same matrix maps words in and out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raw = self._run(x)
        out = self.drop(raw)
        return self.h_o(out), raw, out
