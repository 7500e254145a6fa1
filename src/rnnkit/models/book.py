"""The book's LSTM language models (fastbook chapter 12), with its slips fixed: the hidden
state is a pair `(h, c)` of `(n_layers, bs, n_hidden)` tensors, made to fit each batch."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["LMModel6", "LMModel7"]


class _StatefulLSTM(nn.Module):
    """Embedding -> multi-layer LSTM whose hidden state is carried across batches."""

    def __init__(self, vocab_sz: int, n_hidden: int, n_layers: int) -> None:
        super().__init__()
        self.i_h = nn.Embedding(vocab_sz, n_hidden)
        self.rnn = nn.LSTM(n_hidden, n_hidden, n_layers, batch_first=True)
        self.h_o = nn.Linear(n_hidden, vocab_sz)
        self.n_layers, self.n_hidden = n_layers, n_hidden
        self.h: tuple[torch.Tensor, torch.Tensor] | None = None

    def _state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bs = x.shape[0]
        if self.h is None or self.h[0].shape[1] != bs or self.h[0].device != x.device:
            z = torch.zeros(self.n_layers, bs, self.n_hidden, device=x.device)
            self.h = (z, z.clone())
        return self.h

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        raw, h = self.rnn(self.i_h(x), self._state(x))  # raw: (bs, seq_len, n_hidden)
        # Truncated BPTT: keep the state's values, drop its history.
        self.h = (h[0].detach(), h[1].detach())
        return raw

    def reset(self) -> None:
        """Forget the hidden state (the next batch starts from zeros)."""
        self.h = None


class LMModel6(_StatefulLSTM):
    """A multi-layer LSTM language model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h_o(self._run(x))


class LMModel7(_StatefulLSTM):
    """LSTM language model with dropout and weight tying; returns `(logits, raw, dropped)` for AR/TAR."""

    def __init__(self, vocab_sz: int, n_hidden: int, n_layers: int, p: float) -> None:
        super().__init__(vocab_sz, n_hidden, n_layers)
        self.drop = nn.Dropout(p)
        self.h_o.weight = self.i_h.weight  # weight tying: the same matrix maps words in and out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw = self._run(x)
        out = self.drop(raw)
        return self.h_o(out), raw, out
