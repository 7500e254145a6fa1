"""Tests for the AWD-LSTM dropouts: masks, variational, embedding and weight dropout."""
from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from rnnkit.models.dropout import (EmbeddingDropout, RNNDropout, WeightDropout, _as_one_chunk, _bits16_drop,
                                   dropout_mask)

PS = [0.04, 0.1, 0.3, 0.5, 0.65, 0.9]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _wd_lstm(n_in: int = 4, n_hid: int = 6, weight_p: float = 0.5, **kw) -> WeightDropout:
    return WeightDropout(nn.LSTM(n_in, n_hid, batch_first=True, **kw), weight_p)


def _plain_lstm_like(wd: WeightDropout) -> nn.LSTM:
    """An nn.LSTM holding the raw weights of `wd`."""
    m = wd.module
    ref = nn.LSTM(m.input_size, m.hidden_size, m.num_layers, batch_first=True, bidirectional=m.bidirectional)
    sd = {k.removeprefix("module."): v for k, v in wd.state_dict().items()}
    ref.load_state_dict({k.removesuffix("_raw"): v for k, v in sd.items()})
    return ref


def _fastai_scale(p: float, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """What a kept unit of fastai's `x.new_empty(*sz).bernoulli_(1 - p).div_(1 - p)` holds."""
    return torch.ones(1, dtype=dtype, device=device).bernoulli_(1.0).div_(1 - p)


def _keep_bound(p: float, n: int) -> float:
    """Five standard deviations of a kept fraction over `n` units, plus the 2**-17 rounding of p."""
    return 5 * (p * (1 - p) / n) ** 0.5 + 2**-17


# dropout_mask


def test_dropout_mask_has_shape_dtype_device_and_values():
    x = torch.randn(3, 4, dtype=torch.float64)
    m = dropout_mask(x, (5, 1, 7), 0.25)
    assert m.shape == (5, 1, 7) and m.dtype == torch.float64 and m.device == x.device
    assert set(m.unique().tolist()) <= {0.0, 1 / 0.75}


def test_dropout_mask_keeps_expectation():
    m = dropout_mask(torch.empty(0), (200_000,), 0.3)
    assert m.mean().item() == pytest.approx(1.0, abs=0.02)
    assert (m == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)


def test_dropout_mask_in_low_precision_keeps_the_probability():
    m = dropout_mask(torch.empty(0, dtype=torch.bfloat16), (200_000,), 0.3)
    assert m.dtype == torch.bfloat16
    assert (m == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_from_16_bit_draws_drops_at_p_in_every_lane(p):
    # Four 16-bit numbers come from each 64-bit draw: each of the four positions must be uniform
    # (a lane without its sign bit, say, would never drop at p=0.5).
    torch.manual_seed(0)
    m = dropout_mask(torch.empty(0), (400_000,), p)
    for lane in range(4):
        assert (m[lane::4] == 0).float().mean().item() == pytest.approx(p, abs=0.005)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", PS)
def test_dropout_mask_holds_exactly_zero_or_fastais_scale(p, dtype):
    m = dropout_mask(torch.empty(0, dtype=dtype), (20_000,), p)
    kept = m != 0
    assert kept.any() and (~kept).any()
    assert torch.equal(m[kept], _fastai_scale(p, dtype).expand(int(kept.sum())))
    assert m[~kept].eq(0).all()


@pytest.mark.parametrize("p", PS)
def test_dropout_mask_scale_is_one_over_one_minus_p_rounded_as_float_division_does(p):
    # float64: 1/(1 - p); float32: 1 divided by float32(1 - p), one IEEE float32 division (numpy's)
    m64 = dropout_mask(torch.empty(0, dtype=torch.float64), (1000,), p)
    m32 = dropout_mask(torch.empty(0, dtype=torch.float32), (1000,), p)
    assert set(m64.unique().tolist()) == {0.0, 1 / (1 - p)}
    assert set(m32.unique().tolist()) == {0.0, float(np.float32(1) / np.float32(1 - p))}


def test_dropout_mask_float32_scale_is_not_the_float32_nearest_to_the_exact_quotient():
    # For p = 0.04 fastai's float32 value (1 / float32(0.96)) is one ulp above float32(1/0.96).
    m = dropout_mask(torch.empty(0), (1000,), 0.04)
    assert m.max().item() == float(np.float32(1) / np.float32(0.96)) != float(np.float32(1 / 0.96))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.04, 0.1, 0.3, 0.5, 0.65, 0.9, 0.999])
def test_dropout_mask_keeps_a_fraction_close_to_one_minus_p(p, dtype):
    n = 400_000
    kept = (dropout_mask(torch.empty(0, dtype=dtype), (n,), p) != 0).double().mean().item()
    assert abs(kept - (1 - p)) <= _keep_bound(p, n)


@given(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True))
def test_bits16_threshold_is_used_only_within_a_thousandth_of_p_and_of_one_minus_p(p):
    drop = _bits16_drop(p)
    if drop is not None:
        assert 0 < drop < 65536
        assert abs(drop / 65536 - p) <= min(2**-17, 1e-3 * p, 1e-3 * (1 - p))


def test_bits16_threshold_rounds_p_to_the_nearest_step_and_skips_extreme_p():
    assert _bits16_drop(0.3) == 19661  # 0.300003
    assert _bits16_drop(0.5) == 32768
    # 0.9999 -> 65529/65536 keeps 7/65536 instead of 6.55/65536: 7% more than 1 - p, a biased mean.
    assert _bits16_drop(0.9999) is None
    assert _bits16_drop(1e-4) is None  # 7/65536 drops 7% more than p


def test_dropout_mask_close_to_one_draws_float64_uniforms():
    # float32 uniforms step by 2**-24 ~ 6e-8, too coarse a keep probability for 1 - p = 1e-4.
    p, n = 1 - 1e-4, 200_000
    torch.manual_seed(5)
    m = dropout_mask(torch.empty(0), (n,), p)
    torch.manual_seed(5)
    keep = torch.rand(n, dtype=torch.float64) >= p
    assert keep.any() and torch.equal(m != 0, keep)
    assert m[keep].eq(_fastai_scale(p, torch.float32)).all()


def test_dropout_mask_with_p_zero_is_ones():
    assert torch.equal(dropout_mask(torch.empty(0, dtype=torch.bfloat16), (3, 4), 0.0),
                       torch.ones(3, 4, dtype=torch.bfloat16))


def test_dropout_mask_in_float16_where_one_over_one_minus_p_overflows_is_zero_or_inf():
    torch.manual_seed(0)
    m = dropout_mask(torch.empty(0, dtype=torch.float16), (2_000_000,), 1 - 2**-17)  # 1/(1 - p) = 131072
    assert not m.isnan().any() and m.isinf().any()
    assert set(m.unique().tolist()) == {0.0, float("inf")}


def test_dropout_mask_with_a_tiny_p_draws_floats_instead_of_rounding():
    # 1e-4 would round to 7/65536 (5% off): the float path keeps p and scales by 1/(1 - p) exactly.
    torch.manual_seed(0)
    m = dropout_mask(torch.empty(0, dtype=torch.float64), (300_000,), 1e-4)
    assert set(m.unique().tolist()) == {0.0, 1 / (1 - 1e-4)}


def test_dropout_mask_with_p_just_below_one_keeps_a_few_and_stays_finite():
    # 0.999995 would round to 65536/65536 = 1 (nothing kept, scale 1/0): it must take the float path.
    torch.manual_seed(0)
    m = dropout_mask(torch.empty(0, dtype=torch.float64), (1_000_000,), 0.999995)
    assert torch.isfinite(m).all()
    assert set(m.unique().tolist()) <= {0.0, 1 / (1 - 0.999995)}


def test_dropout_mask_is_reproducible_under_a_seed():
    torch.manual_seed(3)
    a = dropout_mask(torch.empty(0), (50, 7), 0.2)
    torch.manual_seed(3)
    assert torch.equal(a, dropout_mask(torch.empty(0), (50, 7), 0.2))


def test_dropout_mask_with_p_one_drops_everything():
    assert dropout_mask(torch.ones(1), (4,), 1.0).eq(0).all()


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", PS)
def test_dropout_mask_on_cuda_holds_exactly_zero_or_fastais_scale(p, dtype):
    m = dropout_mask(torch.empty(0, dtype=dtype, device="cuda"), (400_000,), p)
    kept = m != 0
    assert torch.equal(m[kept], _fastai_scale(p, dtype, "cuda").expand(int(kept.sum())))
    assert abs(kept.double().mean().item() - (1 - p)) <= _keep_bound(p, 400_000)


@needs_cuda
def test_dropout_mask_on_cuda_in_float16_where_one_over_one_minus_p_overflows_is_zero_or_inf():
    # CUDA divides by multiplying with the reciprocal: 0 * inf would be nan where units are dropped.
    m = dropout_mask(torch.empty(0, dtype=torch.float16, device="cuda"), (2_000_000,), 1 - 2**-17)
    assert not m.isnan().any() and m.isinf().any()


# RNNDropout


def test_rnn_dropout_shares_one_mask_over_time():
    dp = RNNDropout(0.5)
    y = dp(torch.ones(8, 10, 5))
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same for every time step
    assert (y == 0).any() and (y == 2).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", PS)
def test_rnn_dropout_scales_kept_activations_exactly_as_fastai(p, dtype):
    x = torch.rand(256, 3, 40, dtype=dtype) + 0.5  # no zeros: a zero output means a dropped unit
    y = RNNDropout(p)(x)
    kept = y != 0
    assert torch.equal(kept, kept[:, :1].expand_as(kept))
    assert torch.equal(y[kept], x[kept] * _fastai_scale(p, dtype))  # fastai: x * mask
    assert abs(kept.double().mean().item() - (1 - p)) <= _keep_bound(p, 256 * 40)


def test_rnn_dropout_keeps_expectation():
    y = RNNDropout(0.4)(torch.ones(2000, 3, 50))
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)


def test_rnn_dropout_is_identity_in_eval_and_with_p_zero():
    x = torch.randn(4, 3, 5)
    assert RNNDropout(0.5).eval()(x) is x
    assert RNNDropout(0.0)(x) is x


def test_rnn_dropout_rejects_bad_inputs():
    with pytest.raises(ValueError, match="probability in"):
        RNNDropout(1.5)
    with pytest.raises(ValueError, match=r"\(bs, seq_len, n\)"):
        RNNDropout(0.5)(torch.ones(4, 5))


# EmbeddingDropout


def test_embedding_dropout_zeroes_whole_words_and_rescales():
    emb = nn.Embedding(50, 8, padding_idx=1)
    edp = EmbeddingDropout(emb, 0.5)
    words = torch.arange(50).repeat(3, 1)  # every word three times
    out = edp(words)
    ref = emb(words)
    dropped = out.eq(0).all(-1)  # (3, 50): a word's whole vector
    assert dropped.any() and (~dropped).any()
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # a word is dropped everywhere or nowhere
    torch.testing.assert_close(out[~dropped], ref[~dropped] * 2)
    assert out[dropped].eq(0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", PS)
def test_embedding_dropout_scales_kept_rows_exactly_as_fastai(p, dtype):
    emb = nn.Embedding(4000, 6, dtype=dtype)
    with torch.no_grad():
        emb.weight.uniform_(0.5, 1.5)  # no zeros
    words = torch.arange(4000)[None]
    out = EmbeddingDropout(emb, p)(words, scale=3.0)
    kept = out.ne(0).all(-1)
    assert torch.equal(kept, out.ne(0).any(-1))  # whole rows
    w = emb.weight.detach()
    # fastai: F.embedding(words, (emb.weight * mask).mul_(scale))
    assert torch.equal(out[kept], (w[None] * _fastai_scale(p, dtype) * 3.0)[kept])
    assert abs(kept.double().mean().item() - (1 - p)) <= _keep_bound(p, 4000)


def test_embedding_dropout_with_p_zero_is_the_embedding():
    emb = nn.Embedding(10, 4)
    words = torch.randint(0, 10, (2, 5))
    assert torch.equal(EmbeddingDropout(emb, 0.0)(words), emb(words))


def test_embedding_dropout_takes_a_flat_batch_of_words():
    emb = nn.Embedding(10, 7, padding_idx=1)
    words = torch.randint(0, 10, (8,))
    out = EmbeddingDropout(emb, 0.5)(words)
    for i in range(8):
        assert out[i].eq(0).all() or torch.allclose(out[i], 2 * emb.weight[words[i]])


def test_embedding_dropout_gradient_only_reaches_kept_words():
    emb = nn.Embedding(30, 4)
    edp = EmbeddingDropout(emb, 0.5)
    words = torch.arange(30)[None]
    out = edp(words)
    out.sum().backward()
    kept = out[0].ne(0).any(-1)
    assert emb.weight.grad[~kept].eq(0).all()
    torch.testing.assert_close(emb.weight.grad[kept], torch.full_like(emb.weight.grad[kept], 2.0))


def test_embedding_dropout_is_the_embedding_in_eval_and_uses_padding_idx():
    emb = nn.Embedding(10, 4, padding_idx=0)
    edp = EmbeddingDropout(emb, 0.5).eval()
    words = torch.tensor([[0, 3, 0, 5]])
    torch.testing.assert_close(edp(words), emb(words))
    edp(words).sum().backward()
    assert emb.weight.grad[0].eq(0).all()  # padding_idx gets no gradient
    torch.testing.assert_close(edp(words, scale=3.0), emb(words) * 3)


# WeightDropout


def test_weight_dropout_moves_the_weight_to_a_raw_parameter():
    wd = _wd_lstm()
    names = [n for n, _ in wd.named_parameters()]
    assert names == ["weight_hh_l0_raw", "module.weight_ih_l0", "module.bias_ih_l0", "module.bias_hh_l0"]
    assert list(wd.state_dict()) == names
    assert isinstance(wd.module, nn.LSTM) and isinstance(wd.weight_hh_l0_raw, nn.Parameter)


def test_weight_dropout_shows_the_last_used_weight_on_the_module_as_fastai_does():
    wd = WeightDropout(nn.LSTM(5, 7), 0.4)  # seq_len first, as in fastai's docs
    before = wd.module.weight_hh_l0.clone()
    torch.testing.assert_close(before, wd.weight_hh_l0_raw.detach())
    h = torch.zeros(1, 20, 7), torch.zeros(1, 20, 7)
    x, h = wd(torch.randn(10, 20, 5), h)
    assert x.shape == (10, 20, 7)
    x.sum().backward()
    used = wd.module.weight_hh_l0
    assert 0.2 <= used.eq(0).float().mean().item() <= 0.6
    assert not isinstance(used, nn.Parameter) and "module.weight_hh_l0" not in wd.state_dict()
    assert torch.equal(wd.weight_hh_l0_raw.detach(), before)
    assert (wd.weight_hh_l0_raw.grad.eq(0) & used.eq(0)).any()
    wd.eval()
    wd(torch.randn(10, 20, 5))
    torch.testing.assert_close(wd.module.weight_hh_l0, before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", PS)
def test_weight_dropout_scales_kept_weights_exactly_as_fastai(p, dtype):
    wd = WeightDropout(nn.Linear(100, 100, dtype=dtype), p, "weight")
    with torch.no_grad():
        wd.weight_raw.uniform_(0.5, 1.5)  # no zeros
    x = torch.randn(2, 100, dtype=dtype)
    out = wd(x)
    used = wd.module.weight
    kept = used != 0
    raw = wd.weight_raw.detach()
    assert torch.equal(used[kept], raw[kept] * _fastai_scale(p, dtype))  # fastai: raw * mask
    assert torch.equal(out, nn.functional.linear(x, used, wd.module.bias))
    assert abs(kept.double().mean().item() - (1 - p)) <= _keep_bound(p, 100 * 100)


@pytest.mark.parametrize("p", [0.1, 0.65])
def test_weight_dropout_of_an_lstm_scales_kept_weights_exactly_as_fastai(p):
    wd = _wd_lstm(n_hid=50, weight_p=p)
    wd(torch.randn(2, 3, 4))
    used, raw = wd.module.weight_hh_l0, wd.weight_hh_l0_raw.detach()
    kept = used != 0
    assert torch.equal(used[kept], raw[kept] * _fastai_scale(p, torch.float32))


def test_weight_dropout_with_p_zero_uses_the_raw_weight():
    wd = WeightDropout(nn.Linear(4, 4), 0.0, "weight")
    x = torch.randn(3, 4)
    assert torch.equal(wd(x), nn.functional.linear(x, wd.weight_raw, wd.module.bias))


def test_weight_dropout_reset_shows_the_raw_weight_again_as_fastai_does():
    wd = _wd_lstm(weight_p=0.5)
    wd(torch.randn(2, 3, 4))
    raw = wd.weight_hh_l0_raw.detach()
    assert not torch.equal(wd.module.weight_hh_l0, raw)  # dropped and scaled
    wd.reset()
    assert torch.equal(wd.module.weight_hh_l0, raw)
    assert not isinstance(wd.module.weight_hh_l0, nn.Parameter)


def test_weight_dropout_rejects_unknown_layer_names():
    with pytest.raises(ValueError, match="has no parameter 'weight_hh_l1'"):
        WeightDropout(nn.LSTM(3, 3), 0.5, "weight_hh_l1")


def test_weight_dropout_in_eval_equals_the_plain_lstm():
    wd = _wd_lstm().eval()
    ref = _plain_lstm_like(wd)
    x = torch.randn(3, 7, 4)
    out, (h, c) = wd(x)
    ref_out, (ref_h, ref_c) = ref(x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h, ref_h)
    torch.testing.assert_close(c, ref_c)


def test_weight_dropout_in_training_equals_the_lstm_with_masked_weights():
    wd = _wd_lstm(weight_p=0.5)
    raw = wd.weight_hh_l0_raw.detach().clone()
    x, hx = torch.randn(3, 7, 4), (torch.randn(1, 3, 6), torch.randn(1, 3, 6))
    torch.manual_seed(1)
    out, _ = wd(x, hx)
    torch.manual_seed(1)
    dropped = raw * dropout_mask(raw, raw.shape, 0.5)
    ref = _plain_lstm_like(wd)
    with torch.no_grad():
        ref.weight_hh_l0.copy_(dropped)
    torch.testing.assert_close(out, ref(x, hx)[0])
    assert not torch.allclose(out, _plain_lstm_like(wd)(x, hx)[0])


def test_weight_dropout_draws_a_new_mask_every_forward_and_never_changes_the_raw_weight():
    wd = _wd_lstm()
    raw = wd.weight_hh_l0_raw.detach().clone()
    x = torch.randn(2, 5, 4)
    a, b = wd(x)[0], wd(x)[0]
    assert not torch.allclose(a, b)
    (a.sum() + b.sum()).backward()
    assert torch.equal(wd.weight_hh_l0_raw.detach(), raw)
    assert wd.weight_hh_l0_raw.grad is not None and wd.module.weight_ih_l0.grad is not None


def test_weight_dropout_gradient_is_zero_where_weights_are_dropped():
    wd = WeightDropout(nn.Linear(20, 20), 0.5, "weight")
    torch.manual_seed(3)
    wd(torch.ones(1, 20)).sum().backward()
    torch.manual_seed(3)
    mask = dropout_mask(torch.ones(1), (20, 20), 0.5)
    torch.testing.assert_close(wd.weight_raw.grad, mask)  # d/dw of sum(w*mask @ 1) is the mask


def test_weight_dropout_wraps_every_layer_of_a_multi_layer_lstm():
    lstm = nn.LSTM(4, 6, num_layers=2, batch_first=True)
    wd = WeightDropout(lstm, 0.5, ["weight_hh_l0", "weight_hh_l1"])
    assert hasattr(wd, "weight_hh_l1_raw") and "weight_hh_l1" not in dict(lstm.named_parameters())
    out, (h, c) = wd(torch.randn(2, 3, 4))
    assert out.shape == (2, 3, 6) and h.shape == (2, 2, 6)
    wd.eval()
    torch.testing.assert_close(wd(torch.ones(2, 3, 4))[0], _plain_lstm_like(wd)(torch.ones(2, 3, 4))[0])


def test_weight_dropout_runs_gru_too():
    wd = WeightDropout(nn.GRU(4, 6, batch_first=True), 0.3).eval()
    out, h = wd(torch.randn(2, 3, 4))
    assert out.shape == (2, 3, 6) and h.shape == (1, 2, 6)


def test_weight_dropout_checks_lstm_inputs():
    wd = _wd_lstm()
    with pytest.raises(ValueError, match="expects input feature size 4, got 5"):
        wd(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="padded 3-D batches"):
        wd(torch.randn(3, 4))


def _aten_ops(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


def test_weight_dropout_keeps_the_fused_lstm_kernel():
    wd = _wd_lstm()
    ref = nn.LSTM(4, 6, batch_first=True)
    short, long = torch.randn(2, 4, 4), torch.randn(2, 40, 4)
    ops = {n: _aten_ops(lambda: m(x)) for n, m, x in
           [("wd_short", wd, short), ("wd_long", wd, long), ("ref_short", ref, short), ("ref_long", ref, long)]}
    assert ops["wd_long"].count("aten::lstm") == 1
    # Ten times more time steps add no more dispatched ops than they add to nn.LSTM itself:
    # no Python loop over time.
    assert len(ops["wd_long"]) - len(ops["wd_short"]) == len(ops["ref_long"]) - len(ops["ref_short"])


def test_as_one_chunk_packs_views_of_one_buffer_at_the_offsets():
    a = torch.randn(3, 2, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    views = _as_one_chunk([a, b], [10, 0], 20)  # b first, then a gap, then a, then a tail
    assert views[0].untyped_storage().data_ptr() == views[1].untyped_storage().data_ptr()
    assert [v.storage_offset() for v in views] == [10, 0]
    torch.testing.assert_close(views[0], a)
    torch.testing.assert_close(views[1], b)
    (views[0].sum() * 2 + views[1].sum()).backward()
    torch.testing.assert_close(a.grad, torch.full_like(a, 2.0))
    torch.testing.assert_close(b.grad, torch.ones_like(b))


def test_weight_dropout_survives_deepcopy_without_warnings():
    wd = _wd_lstm()
    x = torch.randn(2, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wd2 = copy.deepcopy(wd)
        wd2(x)[0].sum().backward()
        wd.eval(), wd2.eval()
        torch.testing.assert_close(wd(x)[0], wd2(x)[0])
    assert wd2.weight_hh_l0_raw.data_ptr() != wd.weight_hh_l0_raw.data_ptr()
    assert wd.weight_hh_l0_raw.grad is None  # the copy trained its own weights


def test_weight_dropout_state_dict_round_trip_without_warnings():
    wd = _wd_lstm()
    x = torch.randn(2, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        buf = io.BytesIO()
        torch.save(wd.state_dict(), buf)
        buf.seek(0)
        fresh = _wd_lstm()
        fresh.load_state_dict(torch.load(buf, weights_only=True))
        wd.eval(), fresh.eval()
        torch.testing.assert_close(fresh(x)[0], wd(x)[0])
        fresh.train()
        fresh(x)[0].sum().backward()


def test_weight_dropout_under_bf16_autocast_without_warnings():
    wd = _wd_lstm()
    x = torch.randn(2, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, (h, c) = wd(x)
        out.float().sum().backward()
    assert wd.weight_hh_l0_raw.grad.dtype == torch.float32
    assert wd.weight_hh_l0_raw.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weight_dropout_runs_the_rnn_in_float32_under_an_autocast_dtype_the_cpu_lacks(monkeypatch, dtype):
    # Plain nn.LSTM fails there ("could not create a primitive descriptor for the LSTM forward").
    monkeypatch.setattr("rnnkit.models.dropout.cpu_computes_natively", lambda dt: False)
    wd = _wd_lstm().eval()
    x = torch.randn(2, 5, 4)
    ref, (h_ref, c_ref) = wd(x)
    with torch.autocast("cpu", dtype=dtype):
        out, (h, c) = wd(x)
    assert out.dtype == h.dtype == c.dtype == torch.float32
    torch.testing.assert_close((out, h, c), (ref, h_ref, c_ref), rtol=0, atol=0)
    wd.train()
    with torch.autocast("cpu", dtype=dtype):
        out = wd(x)[0]
    out.sum().backward()
    assert wd.weight_hh_l0_raw.grad is not None and wd.weight_hh_l0_raw.grad.dtype == torch.float32


@pytest.mark.parametrize("backend", ["eager", pytest.param("aot_eager", marks=pytest.mark.skipif(
    tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 3),
    reason="PyTorch 2.2's aot_eager backend fails on Python 3.11 with a SyntaxError of its own"))])
def test_weight_dropout_under_torch_compile_without_warnings(backend):
    wd = _wd_lstm()
    x = torch.randn(2, 5, 4)
    # Record rather than raise: Dynamo reads `.grad` of non-leaf tensors internally and hides that
    # warning from the user through `warnings.showwarning`, which an "error" filter would bypass.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(wd, backend=backend)
        a = compiled(x)[0]
        a.sum().backward()
        assert not torch.allclose(a, compiled(x)[0])  # still a new mask per call
        wd.eval()
        torch.testing.assert_close(compiled(x)[0], _plain_lstm_like(wd)(x)[0])
    assert [str(w.message) for w in caught] == []


def test_weight_dropout_reset_forwards_to_the_module():
    class WithReset(nn.Linear):
        calls = 0

        def reset(self):
            self.calls += 1

    wd = WeightDropout(WithReset(3, 3), 0.2, "weight")
    wd.reset()
    assert wd.module.calls == 1
    _wd_lstm().reset()  # a module without reset is fine
