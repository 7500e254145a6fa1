"""Tests for the AWD-LSTM encoder, its decoder, configs and `get_language_model`."""
from __future__ import annotations

import copy
import dataclasses
import io
import warnings

import pytest
import torch
from torch import nn

from rnnkit.models.awd_lstm import (
    AWD_LSTM,
    AWD_LSTM_CONFIGS,
    AWDLSTMConfig,
    LinearDecoder,
    SequentialRNN,
    awd_lstm_clas_config,
    awd_lstm_lm_config,
    get_language_model,
)
from rnnkit.models.dropout import EmbeddingDropout, RNNDropout, WeightDropout

VOCAB = 30
TINY = dict(emb_sz=8, n_hid=12, n_layers=3, output_p=0.1, hidden_p=0.2, input_p=0.3, embed_p=0.05, weight_p=0.4)


def _enc(**kw) -> AWD_LSTM:
    return AWD_LSTM(VOCAB, **{"emb_sz": 8, "n_hid": 12, "n_layers": 3, **kw})


def _tokens(bs: int = 4, seq_len: int = 5) -> torch.Tensor:
    return torch.randint(0, VOCAB, (bs, seq_len))


def test_awd_lstm_has_fastais_structure_and_sizes():
    enc = _enc()
    assert isinstance(enc.encoder, nn.Embedding) and enc.encoder.padding_idx == 1
    assert isinstance(enc.encoder_dp, EmbeddingDropout) and enc.encoder_dp.emb is enc.encoder
    assert isinstance(enc.input_dp, RNNDropout) and len(enc.hidden_dps) == 3
    assert all(isinstance(r, WeightDropout) for r in enc.rnns)
    sizes = [(r.module.input_size, r.module.hidden_size) for r in enc.rnns]
    assert sizes == [(8, 12), (12, 12), (12, 8)]  # the last layer outputs emb_sz, not n_hid
    assert enc.encoder.weight.abs().max() <= AWD_LSTM.initrange
    got = (enc.encoder_dp.embed_p, enc.input_dp.p, enc.hidden_dps[0].p, enc.rnns[0].weight_p)
    assert got == (0.1, 0.6, 0.2, 0.5)  # fastai's signature defaults


def test_awd_lstm_init_range_sets_the_embedding_init():
    w = _enc(init_range=0.5).encoder.weight
    assert 0.1 < w.abs().max() <= 0.5


def test_awd_lstm_returns_the_last_layer_and_keeps_per_layer_state():
    enc = _enc()
    out = enc(_tokens(4, 5))
    assert out.shape == (4, 5, 8)
    assert enc.bs == 4 and len(enc.hidden) == 3
    assert [tuple(h.shape) for h, _ in enc.hidden] == [(1, 4, 12), (1, 4, 12), (1, 4, 8)]


def test_awd_lstm_matches_fastais_documented_example():
    enc = AWD_LSTM(100, 20, 10, 2, hidden_p=0.2, embed_p=0.02, input_p=0.1, weight_p=0.2)
    x = torch.randint(0, 100, (10, 5))
    r = enc(x)
    assert enc.bs == 10 and len(enc.hidden) == 2
    assert [h.shape for h in enc.hidden[0]] == [(1, 10, 10), (1, 10, 10)]
    assert [h.shape for h in enc.hidden[1]] == [(1, 10, 20), (1, 10, 20)]
    assert r.shape == (10, 5, 20)
    torch.testing.assert_close(r[:, -1], enc.hidden[-1][0][0])  # the state is the last step's output
    enc.eval()
    enc.reset()
    enc(x)
    enc(x)


def test_awd_lstm_forward_layers_gives_raw_and_dropped_outputs_per_layer():
    enc = _enc(hidden_p=0.5)
    raw, out = enc.forward_layers(_tokens())
    assert [r.shape[-1] for r in raw] == [12, 12, 8] and len(out) == 3
    assert out[-1] is raw[-1]  # the decoder applies output dropout to the last layer
    assert not torch.equal(out[0], raw[0])  # hidden dropout between layers
    enc.eval()
    raw, out = enc.forward_layers(_tokens())
    assert all(torch.equal(r, o) for r, o in zip(raw, out))


def test_awd_lstm_carries_the_hidden_state_across_batches_detached():
    enc = _enc().eval()
    x1, x2 = _tokens(), _tokens()
    enc(x1)
    state = [(h.clone(), c.clone()) for h, c in enc.hidden]
    assert all(not h.requires_grad and not c.requires_grad for h, c in enc.hidden)
    assert any(h.abs().sum() > 0 for h, _ in state)
    continued = enc(x2)
    enc.reset()
    fresh = enc(x2)
    assert not torch.allclose(continued, fresh)
    # Same as running both batches as one sequence.
    enc.reset()
    whole = enc(torch.cat([x1, x2], dim=1))
    torch.testing.assert_close(continued, whole[:, x1.shape[1]:])


def test_awd_lstm_backward_stops_at_the_batch_boundary():
    enc = _enc()
    enc(_tokens()).sum().backward()
    enc.zero_grad()
    enc(_tokens()).sum().backward()  # would raise if the graph of the first batch were reused


def test_awd_lstm_reset_zeroes_the_state():
    enc = _enc()
    enc(_tokens())
    enc.reset()
    assert all(h.eq(0).all() and c.eq(0).all() for h, c in enc.hidden)
    assert enc.hidden[0][0].shape == (1, 4, 12)


def test_awd_lstm_handles_batch_size_changes():
    enc = _enc().eval()
    enc(_tokens(4))
    before = [h.clone() for h, _ in enc.hidden]
    enc(_tokens(2))  # fewer streams: they keep their state
    assert enc.bs == 2 and enc.hidden[0][0].shape == (1, 2, 12)
    enc.reset()
    enc(_tokens(4))
    enc._change_bs(6)  # more streams: the new ones start from zeros
    assert enc.hidden[2][0].shape == (1, 6, 8) and enc.hidden[2][0][:, 4:].eq(0).all()
    assert enc(_tokens(6)).shape == (6, 5, 8)
    assert before[0].shape == (1, 4, 12)


def test_awd_lstm_follows_the_model_to_another_dtype():
    enc = _enc().eval()
    enc(_tokens())
    enc.double()
    assert enc(_tokens()).dtype == torch.float64
    assert enc.hidden[0][0].dtype == torch.float64


def test_awd_lstm_bidirectional():
    enc = _enc(bidir=True)
    assert enc(_tokens(3, 5)).shape == (3, 5, 8)
    assert enc.hidden[0][0].shape == (2, 3, 6)
    assert hasattr(enc.rnns[0], "weight_hh_l0_reverse_raw")
    with pytest.raises(ValueError, match="must be even"):
        AWD_LSTM(VOCAB, 7, 12, 2, bidir=True)


def test_awd_lstm_runs_from_embeddings():
    enc = _enc().eval()
    x = _tokens()
    from_ids = enc(x)
    enc.reset()
    torch.testing.assert_close(enc(enc.encoder(x), from_embeds=True), from_ids)


def test_awd_lstm_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"token ids of shape \(bs, seq_len\)"):
        _enc()(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one layer"):
        AWD_LSTM(VOCAB, 8, 12, 0)


def test_awd_lstm_eval_is_deterministic_and_training_is_not():
    enc = _enc()
    x = _tokens()
    enc.reset()
    a = enc(x)
    enc.reset()
    assert not torch.allclose(a, enc(x))
    enc.eval()
    enc.reset()
    a = enc(x)
    enc.reset()
    torch.testing.assert_close(a, enc(x))


# Decoder, SequentialRNN, get_language_model


def test_linear_decoder_ties_and_returns_activations():
    emb = nn.Embedding(VOCAB, 8)
    dec = LinearDecoder(VOCAB, 8, 0.5, tie_encoder=emb)
    assert dec.decoder.weight is emb.weight and dec.decoder.bias.eq(0).all()
    x = torch.randn(2, 3, 8)
    logits, raw, dropped = dec(x)
    assert logits.shape == (2, 3, VOCAB) and raw is x and not torch.equal(dropped, x)
    with pytest.raises(ValueError, match="Cannot tie the decoder"):
        LinearDecoder(VOCAB, 9, tie_encoder=emb)
    assert LinearDecoder(VOCAB, 8, bias=False).decoder.bias is None


def test_sequential_rnn_resets_children_with_state():
    enc = _enc()
    model = SequentialRNN(enc, nn.Identity())
    enc(_tokens())
    model.reset()
    assert all(h.eq(0).all() for h, _ in enc.hidden)


def test_get_language_model_returns_logits_and_activations():
    model = get_language_model(AWD_LSTM, VOCAB, TINY)
    logits, raw, out = model(_tokens(4, 5))
    assert logits.shape == (4, 5, VOCAB) and raw.shape == (4, 5, 8) and out.shape == (4, 5, 8)
    assert model[1].decoder.weight is model[0].encoder.weight  # weight tying
    assert model[1].output_dp.p == 0.1
    logits.sum().backward()
    model.reset()


def test_get_language_model_default_is_fastais_lm():
    model = get_language_model(AWD_LSTM, VOCAB)
    enc = model[0]
    assert (enc.emb_sz, enc.n_hid, enc.n_layers) == (400, 1152, 3)
    assert (model[1].output_dp.p, enc.hidden_dps[0].p, enc.input_dp.p, enc.encoder_dp.embed_p,
            enc.rnns[0].weight_p) == (0.1, 0.15, 0.25, 0.02, 0.2)


def test_drop_mult_scales_the_five_dropouts():
    model = get_language_model(AWD_LSTM, VOCAB, TINY, drop_mult=0.5)
    enc, dec = model
    got = (dec.output_dp.p, enc.hidden_dps[0].p, enc.input_dp.p, enc.encoder_dp.embed_p, enc.rnns[0].weight_p)
    assert got == pytest.approx((0.05, 0.1, 0.15, 0.025, 0.2))
    assert TINY["output_p"] == 0.1  # the caller's dict is untouched


def test_config_presets_and_fastai_dicts():
    assert set(AWD_LSTM_CONFIGS) == {"fastai", "paper", "small"}
    assert awd_lstm_lm_config == dict(emb_sz=400, n_hid=1152, n_layers=3, pad_token=1, bidir=False, output_p=0.1,
                                      hidden_p=0.15, input_p=0.25, embed_p=0.02, weight_p=0.2, tie_weights=True,
                                      out_bias=True)
    assert (awd_lstm_clas_config["output_p"], awd_lstm_clas_config["hidden_p"], awd_lstm_clas_config["input_p"],
            awd_lstm_clas_config["embed_p"], awd_lstm_clas_config["weight_p"]) == (0.4, 0.3, 0.4, 0.05, 0.5)
    paper = AWD_LSTM_CONFIGS["paper"]
    assert (paper.emb_sz, paper.n_hid, paper.n_layers) == (400, 1150, 3)
    got = (paper.output_p, paper.hidden_p, paper.input_p, paper.embed_p, paper.weight_p)
    assert got == (0.4, 0.3, 0.65, 0.1, 0.5)
    assert AWD_LSTM_CONFIGS["fastai"].to_dict() == {**awd_lstm_lm_config, "init_range": AWD_LSTM.initrange}
    half = paper.scaled(0.5)
    assert (half.input_p, half.emb_sz) == (0.325, 400) and paper.input_p == 0.65


def test_get_language_model_accepts_a_preset_name_or_a_dataclass():
    by_name = get_language_model(AWD_LSTM, VOCAB, "small")
    small = AWD_LSTM_CONFIGS["small"]
    assert by_name[0].emb_sz == small.emb_sz and by_name[0].n_layers == small.n_layers
    untied = get_language_model(AWD_LSTM, VOCAB, dataclasses.replace(small, tie_weights=False, out_bias=False))
    assert untied[1].decoder.weight is not untied[0].encoder.weight and untied[1].decoder.bias is None
    with pytest.raises(ValueError, match="Unknown AWD_LSTM config 'big'"):
        get_language_model(AWD_LSTM, VOCAB, "big")
    with pytest.raises(TypeError, match="config must be"):
        get_language_model(AWD_LSTM, VOCAB, 3)  # type: ignore[arg-type]


def test_language_model_state_dict_round_trip_and_deepcopy_without_warnings():
    model = get_language_model(AWD_LSTM, VOCAB, TINY)
    x = _tokens()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)[0].sum().backward()
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        buf.seek(0)
        fresh = get_language_model(AWD_LSTM, VOCAB, TINY)
        fresh.load_state_dict(torch.load(buf, weights_only=True))
        twin = copy.deepcopy(model)
        outs = []
        for m in (model, fresh, twin):
            m.eval()
            m.reset()
            outs.append(m(x)[0])
        torch.testing.assert_close(outs[1], outs[0])
        torch.testing.assert_close(outs[2], outs[0])
    assert twin[1].decoder.weight is twin[0].encoder.weight  # tying survives the copy
    assert "0.rnns.0.weight_hh_l0_raw" in model.state_dict()


def test_language_model_under_bf16_autocast_without_warnings():
    model = get_language_model(AWD_LSTM, VOCAB, TINY)
    x = _tokens()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _, _ = model(x)
        logits.float().sum().backward()
        assert model[0].hidden[0][0].dtype == torch.float32
        model.eval()
        model(x)  # after autocast, outside it


@pytest.mark.parametrize("backend", ["eager", pytest.param("aot_eager", marks=pytest.mark.skipif(
    tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 3),
    reason="PyTorch 2.2's aot_eager backend fails on Python 3.11 with a SyntaxError of its own"))])
def test_language_model_under_torch_compile_without_warnings(backend):
    model = get_language_model(AWD_LSTM, VOCAB, TINY)
    x = _tokens()
    # Record rather than raise: Dynamo reads `.grad` of non-leaf tensors internally and hides that
    # warning from the user through `warnings.showwarning`, which an "error" filter would bypass.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(model, backend=backend)
        for _ in range(2):
            logits, raw, out = compiled(x)
            logits.sum().backward()
        model.eval()
        model.reset()
        got = compiled(x)[0]
    assert [str(w.message) for w in caught] == []
    assert logits.shape == (4, 5, VOCAB) and raw.shape == out.shape == (4, 5, 8)
    model.reset()
    torch.testing.assert_close(got, model(x)[0])
