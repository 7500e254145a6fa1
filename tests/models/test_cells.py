"""The from-scratch cells compute what nn.LSTM / nn.GRU compute, given the same weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit.models.cells import (
    GRUCell,
    GRULayer,
    LSTMCell,
    LSTMCellGates,
    LSTMLayer,
    RNNLayer,
    StackedRNN,
)

TOL = dict(atol=1e-5, rtol=1e-5)
BS, SEQ_LEN, NI, NH = 3, 7, 5, 6  # ni != n_hid catches a swapped concatenation or weight block


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, **TOL)


def _lstm_state(n_layers: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n_layers, BS, NH), torch.randn(n_layers, BS, NH)


@pytest.mark.parametrize("cell_cls", [LSTMCell, LSTMCellGates])
def test_lstm_cells_step_like_nn_lstm_cell(cell_cls):
    ref = nn.LSTMCell(NI, NH)
    cell = cell_cls.from_torch(ref)
    x, h, c = torch.randn(BS, NI), torch.randn(BS, NH), torch.randn(BS, NH)
    out, (h1, c1) = cell(x, (h, c))
    h_ref, c_ref = ref(x, (h, c))
    _close(h1, h_ref)
    _close(c1, c_ref)
    assert out is h1


def test_gru_cell_steps_like_nn_gru_cell():
    ref = nn.GRUCell(NI, NH)
    cell = GRUCell.from_torch(ref)
    x, h = torch.randn(BS, NI), torch.randn(BS, NH)
    out, h1 = cell(x, h)
    _close(h1, ref(x, h))
    assert out is h1


def test_fused_lstm_cell_keeps_the_chapters_gate_order():
    ref = nn.LSTMCell(NI, NH)
    cell = LSTMCell.from_torch(ref)
    w = ref.weight_ih.detach()
    # chapter: (input, forget, output, cell); torch: (input, forget, cell, output)
    _close(cell.ih.weight[2 * NH:3 * NH], w[3 * NH:4 * NH])  # output gate
    _close(cell.ih.weight[3 * NH:4 * NH], w[2 * NH:3 * NH])  # cell gate


@pytest.mark.parametrize("cell_cls", [LSTMCell, LSTMCellGates])
def test_lstm_layer_matches_one_layer_nn_lstm(cell_cls):
    ref = nn.LSTM(NI, NH, 1, batch_first=True)
    layer = RNNLayer(cell_cls.from_torch(ref))
    x = torch.randn(BS, SEQ_LEN, NI)
    h0, c0 = _lstm_state()
    out, (h, c) = layer(x, (h0[0], c0[0]))
    out_ref, (h_ref, c_ref) = ref(x, (h0, c0))
    assert out.shape == (BS, SEQ_LEN, NH)
    _close(out, out_ref)
    _close(h, h_ref[0])
    _close(c, c_ref[0])


def test_lstm_layer_starts_from_zeros_without_a_state():
    ref = nn.LSTM(NI, NH, 1, batch_first=True)
    layer = RNNLayer(LSTMCell.from_torch(ref))
    x = torch.randn(BS, SEQ_LEN, NI)
    out, (h, c) = layer(x)
    out_ref, (h_ref, c_ref) = ref(x)
    _close(out, out_ref)
    _close(h, h_ref[0])
    _close(c, c_ref[0])


def test_gru_layer_matches_one_layer_nn_gru():
    ref = nn.GRU(NI, NH, 1, batch_first=True)
    layer = RNNLayer(GRUCell.from_torch(ref))
    x, h0 = torch.randn(BS, SEQ_LEN, NI), torch.randn(1, BS, NH)
    out, h = layer(x, h0[0])
    out_ref, h_ref = ref(x, h0)
    _close(out, out_ref)
    _close(h, h_ref[0])


@pytest.mark.parametrize("n_layers", [1, 2])
def test_stacked_lstm_matches_nn_lstm(n_layers):
    ref = nn.LSTM(NI, NH, n_layers, batch_first=True)
    rnn = StackedRNN.from_torch(ref)
    x, state = torch.randn(BS, SEQ_LEN, NI), _lstm_state(n_layers)
    out, (h, c) = rnn(x, state)
    out_ref, (h_ref, c_ref) = ref(x, state)
    assert h.shape == c.shape == (n_layers, BS, NH)
    _close(out, out_ref)
    _close(h, h_ref)
    _close(c, c_ref)
    out0, (h0, c0) = rnn(x)  # zero initial state, like nn.LSTM's default
    out0_ref, (h0_ref, c0_ref) = ref(x)
    _close(out0, out0_ref)
    _close(h0, h0_ref)
    _close(c0, c0_ref)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_stacked_gru_matches_nn_gru(n_layers):
    ref = nn.GRU(NI, NH, n_layers, batch_first=True)
    rnn = StackedRNN.from_torch(ref)
    x, h0 = torch.randn(BS, SEQ_LEN, NI), torch.randn(n_layers, BS, NH)
    out, h = rnn(x, h0)
    out_ref, h_ref = ref(x, h0)
    assert h.shape == (n_layers, BS, NH)
    _close(out, out_ref)
    _close(h, h_ref)


def test_stacked_rnn_gradients_match_nn_lstm():
    ref = nn.LSTM(NI, NH, 2, batch_first=True)
    rnn = StackedRNN.from_torch(ref)
    x = torch.randn(BS, SEQ_LEN, NI)
    x_ref = x.clone().requires_grad_()
    x = x.requires_grad_()
    rnn(x)[0].pow(2).sum().backward()
    ref(x_ref)[0].pow(2).sum().backward()
    _close(x.grad, x_ref.grad)


def test_bias_free_torch_rnns_copy_as_zero_biases():
    ref = nn.GRU(NI, NH, 2, batch_first=True, bias=False)
    rnn = StackedRNN.from_torch(ref)
    x = torch.randn(BS, SEQ_LEN, NI)
    _close(rnn(x)[0], ref(x)[0])


def test_layers_built_from_sizes_run_and_train():
    for layer in (LSTMLayer(NI, NH), GRULayer(NI, NH)):
        out, _ = layer(torch.randn(BS, SEQ_LEN, NI))
        assert out.shape == (BS, SEQ_LEN, NH)
        out.sum().backward()
        assert all(p.grad is not None for p in layer.parameters())


def test_from_torch_rejects_what_it_cannot_copy():
    with pytest.raises(ValueError, match="bidirectional=False"):
        LSTMCell.from_torch(nn.LSTM(NI, NH, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size=0"):
        LSTMCell.from_torch(nn.LSTM(NI, NH, proj_size=2))
    with pytest.raises(ValueError, match="layer=2 is out of range"):
        LSTMCell.from_torch(nn.LSTM(NI, NH, 2), layer=2)
    with pytest.raises(TypeError, match="expects an nn.LSTM or nn.LSTMCell; got GRU"):
        LSTMCell.from_torch(nn.GRU(NI, NH))
    with pytest.raises(TypeError, match="expects an nn.LSTM or nn.GRU; got RNN"):
        StackedRNN.from_torch(nn.RNN(NI, NH))


def test_rnn_layer_rejects_unbatched_input():
    with pytest.raises(ValueError, match=r"\(bs, seq_len, ni\); got shape \(7, 5\)"):
        LSTMLayer(NI, NH)(torch.randn(SEQ_LEN, NI))
