"""Recurrent cells written from scratch (fastbook chapter 12 and its "further research"): two LSTM
cells (Hochreiter & Schmidhuber, 1997), a GRU cell (Cho et al., 2014), a layer that runs a cell
over time and a multi-layer stack. They compute exactly what `nn.LSTM` / `nn.GRU` compute, and
`from_torch` copies a PyTorch module's weights in, so the two can be compared number for number.

A cell handles one time step: `out, state = cell(x_t, state)`. The LSTM's state is a pair
`(h, c)` of `(bs, n_hid)` tensors, the GRU's a single `h`.

    x (bs, seq_len, ni) --RNNLayer--> out (bs, seq_len, n_hid)       x[:, t] -> cell -> out[:, t]
                                         state carried from t to t+1 -^
    StackedRNN: layer 0 -> layer 1 -> ...; state in nn.LSTM's layout, (n_layers, bs, n_hid) per tensor

Gate order. The chapter's fused `LSTMCell` splits its `4*n_hid` outputs as
(input, forget, output, cell); `nn.LSTM` stores them as (input, forget, cell, output).
`LSTMCell.from_torch` reorders the rows, so the cell keeps the chapter's order.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor, nn

__all__ = ["GRUCell", "GRULayer", "LSTMCell", "LSTMCellGates", "LSTMLayer", "RNNLayer", "StackedRNN"]

LSTMState = tuple[Tensor, Tensor]
State = Union[Tensor, LSTMState]

# Rows of torch's (i, f, g, o) weight blocks, taken in the chapter's (i, f, o, g) order.
_TORCH_TO_BOOK = (0, 1, 3, 2)


def _torch_weights(rnn: nn.Module, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`(w_ih, w_hh, b_ih, b_hh)` of layer `layer` of an `nn.LSTM`/`nn.GRU`, or of an `nn.LSTMCell`/`nn.GRUCell`."""
    if isinstance(rnn, (nn.LSTMCell, nn.GRUCell)):
        if layer != 0:
            raise ValueError(f"{type(rnn).__name__} has a single layer; got layer={layer}.")
        sfx = ""
    elif isinstance(rnn, (nn.LSTM, nn.GRU)):
        if rnn.bidirectional:
            raise ValueError(f"from_torch copies unidirectional RNNs only; got {rnn}. "
                             "Build one with bidirectional=False.")
        if getattr(rnn, "proj_size", 0):
            raise ValueError(f"from_torch cannot copy an LSTM with proj_size={rnn.proj_size}; "
                             "build it with proj_size=0.")
        if not 0 <= layer < rnn.num_layers:
            raise ValueError(f"layer={layer} is out of range for {rnn} ({rnn.num_layers} layers).")
        sfx = f"_l{layer}"
    else:
        raise TypeError(f"from_torch expects an nn.LSTM, nn.GRU, nn.LSTMCell or nn.GRUCell; "
                        f"got {type(rnn).__name__}.")
    w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
    if rnn.bias:
        b_ih, b_hh = getattr(rnn, "bias_ih" + sfx), getattr(rnn, "bias_hh" + sfx)
    else:  # a bias-free torch RNN is ours with zero biases
        b_ih, b_hh = w_ih.new_zeros(w_ih.shape[0]), w_hh.new_zeros(w_hh.shape[0])
    return w_ih.detach(), w_hh.detach(), b_ih.detach(), b_hh.detach()


def _check_kind(rnn: nn.Module, kinds: tuple[type, ...], cls: type) -> None:
    if not isinstance(rnn, kinds):
        names = " or ".join(f"nn.{k.__name__}" for k in kinds)
        raise TypeError(f"{cls.__name__}.from_torch expects an {names}; got {type(rnn).__name__}.")


class _LSTMZeroState:
    """`zero_state` of the LSTM cells, which keep their hidden size in `n_hid`."""

    n_hid: int

    def zero_state(self, bs: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> LSTMState:
        """An all-zeros `(h, c)` for a batch of `bs`."""
        z = torch.zeros(bs, self.n_hid, device=device, dtype=dtype)
        return z, z.clone()


class LSTMCellGates(_LSTMZeroState, nn.Module):
    """The chapter's first LSTM cell: one `Linear(ni + n_hid, n_hid)` per gate on `[h, x]`, easiest to read."""

    def __init__(self, ni: int, n_hid: int) -> None:
        super().__init__()
        self.ni, self.n_hid = ni, n_hid
        self.forget_gate = nn.Linear(ni + n_hid, n_hid)
        self.input_gate = nn.Linear(ni + n_hid, n_hid)
        self.cell_gate = nn.Linear(ni + n_hid, n_hid)
        self.output_gate = nn.Linear(ni + n_hid, n_hid)

    def forward(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        h, c = state
        hx = torch.cat([h, x], dim=1)  # (bs, n_hid + ni): the book's `torch.stack` cannot join these
        forget = torch.sigmoid(self.forget_gate(hx))  # (bs, n_hid), what to keep of c
        c = c * forget
        inp = torch.sigmoid(self.input_gate(hx))  # which cells to update
        cell = torch.tanh(self.cell_gate(hx))  # the values to write
        c = c + inp * cell
        out = torch.sigmoid(self.output_gate(hx))  # which cells to show
        h = out * torch.tanh(c)  # (bs, n_hid)
        return h, (h, c)

    @classmethod
    def from_torch(cls, rnn: nn.LSTM | nn.LSTMCell, layer: int = 0) -> LSTMCellGates:
        """A cell computing what layer `layer` of `rnn` computes, with its weights copied."""
        _check_kind(rnn, (nn.LSTM, nn.LSTMCell), cls)
        w_ih, w_hh, b_ih, b_hh = _torch_weights(rnn, layer)
        n_hid = w_hh.shape[1]
        cell = cls(w_ih.shape[1], n_hid).to(device=w_ih.device, dtype=w_ih.dtype)
        gates = (cell.input_gate, cell.forget_gate, cell.cell_gate, cell.output_gate)  # torch's order
        with torch.no_grad():
            for k, gate in enumerate(gates):
                rows = slice(k * n_hid, (k + 1) * n_hid)
                gate.weight.copy_(torch.cat([w_hh[rows], w_ih[rows]], dim=1))  # columns match [h, x]
                gate.bias.copy_(b_ih[rows] + b_hh[rows])
        return cell


class LSTMCell(_LSTMZeroState, nn.Module):
    """The chapter's fused LSTM cell: all four gates from one `ih` and one `hh` matrix product."""

    def __init__(self, ni: int, n_hid: int) -> None:
        super().__init__()
        self.ni, self.n_hid = ni, n_hid
        self.ih = nn.Linear(ni, 4 * n_hid)
        self.hh = nn.Linear(n_hid, 4 * n_hid)

    def forward(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        h, c = state
        # One big multiplication for all the gates is faster than four small ones.
        gates = (self.ih(x) + self.hh(h)).chunk(4, 1)  # 4 x (bs, n_hid)
        ingate, forgetgate, outgate = map(torch.sigmoid, gates[:3])
        cellgate = gates[3].tanh()
        c = (forgetgate * c) + (ingate * cellgate)
        h = outgate * c.tanh()  # (bs, n_hid)
        return h, (h, c)

    @classmethod
    def from_torch(cls, rnn: nn.LSTM | nn.LSTMCell, layer: int = 0) -> LSTMCell:
        """A cell computing what layer `layer` of `rnn` computes; gate rows reordered to the chapter's."""
        _check_kind(rnn, (nn.LSTM, nn.LSTMCell), cls)
        w_ih, w_hh, b_ih, b_hh = _torch_weights(rnn, layer)
        cell = cls(w_ih.shape[1], w_hh.shape[1]).to(device=w_ih.device, dtype=w_ih.dtype)

        def book_order(t: Tensor) -> Tensor:
            blocks = t.chunk(4, 0)  # torch's (input, forget, cell, output)
            return torch.cat([blocks[k] for k in _TORCH_TO_BOOK], dim=0)

        with torch.no_grad():
            cell.ih.weight.copy_(book_order(w_ih))
            cell.hh.weight.copy_(book_order(w_hh))
            cell.ih.bias.copy_(book_order(b_ih))
            cell.hh.bias.copy_(book_order(b_hh))
        return cell


class GRUCell(nn.Module):
    """A GRU cell with PyTorch's equations: reset gate `r`, update gate `z`, candidate `n`."""

    def __init__(self, ni: int, n_hid: int) -> None:
        super().__init__()
        self.ni, self.n_hid = ni, n_hid
        self.ih = nn.Linear(ni, 3 * n_hid)  # rows (r, z, n), as in nn.GRU
        self.hh = nn.Linear(n_hid, 3 * n_hid)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        i_r, i_z, i_n = self.ih(x).chunk(3, 1)  # 3 x (bs, n_hid)
        h_r, h_z, h_n = self.hh(h).chunk(3, 1)
        r = torch.sigmoid(i_r + h_r)  # how much of the old state the candidate may read
        z = torch.sigmoid(i_z + h_z)  # how much of the old state to keep
        n = torch.tanh(i_n + r * h_n)  # the candidate; r multiplies h_n *with* its bias, as torch does
        h = (1 - z) * n + z * h  # (bs, n_hid)
        return h, h

    def zero_state(self, bs: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Tensor:
        """An all-zeros `h` for a batch of `bs`."""
        return torch.zeros(bs, self.n_hid, device=device, dtype=dtype)

    @classmethod
    def from_torch(cls, rnn: nn.GRU | nn.GRUCell, layer: int = 0) -> GRUCell:
        """A cell computing what layer `layer` of `rnn` computes, with its weights copied."""
        _check_kind(rnn, (nn.GRU, nn.GRUCell), cls)
        w_ih, w_hh, b_ih, b_hh = _torch_weights(rnn, layer)
        cell = cls(w_ih.shape[1], w_hh.shape[1]).to(device=w_ih.device, dtype=w_ih.dtype)
        with torch.no_grad():
            cell.ih.weight.copy_(w_ih)
            cell.hh.weight.copy_(w_hh)
            cell.ih.bias.copy_(b_ih)
            cell.hh.bias.copy_(b_hh)
        return cell


class RNNLayer(nn.Module):
    """Run a cell over time: `(bs, seq_len, ni)` inputs to `(bs, seq_len, n_hid)` outputs and the final state."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        if not hasattr(cell, "zero_state"):
            raise TypeError(f"RNNLayer needs a cell with a zero_state(bs, device, dtype) method, such as "
                            f"LSTMCell or GRUCell; got {type(cell).__name__}.")
        self.cell = cell

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if x.ndim != 3:
            raise ValueError(f"RNNLayer expects batch-first inputs (bs, seq_len, ni); got shape {tuple(x.shape)}.")
        if state is None:
            # zero_state exists: __init__ checked it (nn.Module's attribute typing cannot say so).
            state = self.cell.zero_state(x.shape[0], x.device, x.dtype)  # type: ignore[operator]
        outs = []
        for t in range(x.shape[1]):
            out, state = self.cell(x[:, t], state)  # (bs, n_hid)
            outs.append(out)
        return torch.stack(outs, dim=1), state  # (bs, seq_len, n_hid)


class LSTMLayer(RNNLayer):
    """An `RNNLayer` over the chapter's fused `LSTMCell`."""

    def __init__(self, ni: int, n_hid: int) -> None:
        super().__init__(LSTMCell(ni, n_hid))


class GRULayer(RNNLayer):
    """An `RNNLayer` over a `GRUCell`."""

    def __init__(self, ni: int, n_hid: int) -> None:
        super().__init__(GRUCell(ni, n_hid))


def _layer_states(state: State, n_layers: int) -> list[State]:
    """Split an nn.LSTM/nn.GRU-layout state (`(n_layers, bs, n_hid)` tensors) into per-layer states."""
    if isinstance(state, tuple):
        h, c = state
        return [(h[i], c[i]) for i in range(n_layers)]
    return [state[i] for i in range(n_layers)]


def _stack_states(states: list[State]) -> State:
    """Join per-layer states into nn.LSTM/nn.GRU's layout: `(n_layers, bs, n_hid)` tensors."""
    first = states[0]
    if isinstance(first, tuple):
        return (torch.stack([s[0] for s in states]), torch.stack([s[1] for s in states]))
    return torch.stack(states)  # type: ignore[arg-type]  # all per-layer states are tensors here


class StackedRNN(nn.Module):
    """Layers run one after the other, called like `nn.LSTM`/`nn.GRU` with `batch_first=True` (no
    inter-layer dropout): `out, state = rnn(x, state)`, state tensors `(n_layers, bs, n_hid)`."""

    def __init__(self, layers: Sequence[RNNLayer]) -> None:
        super().__init__()
        if len(layers) == 0:
            raise ValueError("StackedRNN needs at least one layer; got an empty list.")
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        states = [None] * len(self.layers) if state is None else _layer_states(state, len(self.layers))
        new_states = []
        for layer, s in zip(self.layers, states):
            x, s = layer(x, s)  # (bs, seq_len, n_hid): the next layer's input
            new_states.append(s)
        return x, _stack_states(new_states)

    @classmethod
    def from_torch(cls, rnn: nn.LSTM | nn.GRU) -> StackedRNN:
        """A stack of `LSTMCell`/`GRUCell` layers computing what `rnn` computes, with its weights copied."""
        if isinstance(rnn, nn.LSTM):
            cells: list[nn.Module] = [LSTMCell.from_torch(rnn, i) for i in range(rnn.num_layers)]
        elif isinstance(rnn, nn.GRU):
            cells = [GRUCell.from_torch(rnn, i) for i in range(rnn.num_layers)]
        else:
            raise TypeError(f"StackedRNN.from_torch expects an nn.LSTM or nn.GRU; got {type(rnn).__name__}.")
        return cls([RNNLayer(c) for c in cells])
