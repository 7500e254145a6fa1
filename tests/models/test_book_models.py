"""The book's language models LMModel1-LMModel7: shapes, carried and detached state, reset, batch-size changes."""
from __future__ import annotations

import pytest
import torch

from rnnkit.models.book import LMModel1, LMModel2, LMModel3, LMModel4, LMModel5, LMModel6, LMModel7

V, NH, NL, BS, SL = 11, 8, 2, 4, 5

STATEFUL = {
    "LMModel3": lambda: LMModel3(V, NH),
    "LMModel4": lambda: LMModel4(V, NH, sl=SL),
    "LMModel5": lambda: LMModel5(V, NH, NL),
    "LMModel6": lambda: LMModel6(V, NH, NL),
    "LMModel7": lambda: LMModel7(V, NH, NL, 0.3),
}


def _seq_len(model) -> int:
    return 3 if isinstance(model, LMModel3) else SL


def _tokens(bs: int, seq_len: int) -> torch.Tensor:
    return torch.randint(0, V, (bs, seq_len))


def _logits(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.fixture(params=sorted(STATEFUL))
def stateful(request):
    return STATEFUL[request.param]().eval()  # eval: LMModel7's dropout would make outputs random


def test_three_word_models_predict_one_word_per_row():
    for model in (LMModel1(V, NH), LMModel2(V, NH), LMModel3(V, NH)):
        assert model(_tokens(BS, 3)).shape == (BS, V)


def test_sequence_models_predict_every_next_word():
    for model in (LMModel4(V, NH, sl=SL), LMModel5(V, NH, NL), LMModel6(V, NH, NL)):
        assert model(_tokens(BS, SL)).shape == (BS, SL, V)


def test_lmmodel7_returns_logits_raw_and_dropped_activations():
    logits, raw, dropped = LMModel7(V, NH, NL, 0.5)(_tokens(BS, SL))
    assert logits.shape == (BS, SL, V)
    assert raw.shape == dropped.shape == (BS, SL, NH)


def test_lmmodel7_ties_decoder_to_embedding():
    model = LMModel7(V, NH, NL, 0.5)
    assert model.h_o.weight is model.i_h.weight


def test_lmmodel2_forgets_between_calls_like_lmmodel1():
    model, x = LMModel2(V, NH).eval(), _tokens(BS, 3)
    torch.testing.assert_close(model(x), model(x))


def test_lmmodel1_and_lmmodel2_compute_the_same_function():
    m1, m2 = LMModel1(V, NH), LMModel2(V, NH)
    m2.load_state_dict(m1.state_dict())
    x = _tokens(BS, 3)
    torch.testing.assert_close(m1(x), m2(x))


def test_state_is_carried_to_the_next_batch(stateful):
    x1, x2 = _tokens(BS, _seq_len(stateful)), _tokens(BS, _seq_len(stateful))
    fresh = _logits(stateful(x2))
    stateful.reset()
    stateful(x1)
    after_x1 = _logits(stateful(x2))
    assert not torch.allclose(fresh, after_x1)


def test_reset_makes_the_next_batch_start_from_zeros(stateful):
    x = _tokens(BS, _seq_len(stateful))
    first = _logits(stateful(x))
    stateful(x)
    stateful.reset()
    torch.testing.assert_close(_logits(stateful(x)), first)


def test_carried_state_is_detached_so_backward_stops_at_the_batch(stateful):
    stateful.train()
    x = _tokens(BS, _seq_len(stateful))
    _logits(stateful(x)).sum().backward()  # frees the first batch's graph
    # If the state still pointed into that graph, this would raise "backward through the graph a second time".
    _logits(stateful(x)).sum().backward()
    state = stateful.h if isinstance(stateful.h, tuple) else (stateful.h,)
    assert all(not s.requires_grad for s in state)


def test_a_smaller_last_batch_starts_from_zeros_and_the_next_full_batch_works(stateful):
    sl = _seq_len(stateful)
    stateful(_tokens(BS, sl))
    small = _tokens(2, sl)
    out = _logits(stateful(small))
    assert out.shape[0] == 2
    fresh = STATEFUL[type(stateful).__name__]().eval()
    fresh.load_state_dict(stateful.state_dict())
    torch.testing.assert_close(out, _logits(fresh(small)))
    assert _logits(stateful(_tokens(BS, sl))).shape[0] == BS


def test_state_follows_the_model_to_another_dtype(stateful):
    x = _tokens(BS, _seq_len(stateful))
    stateful(x)
    stateful.double()
    assert _logits(stateful(x)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_state_follows_the_model_to_the_gpu(stateful):
    x = _tokens(BS, _seq_len(stateful))
    stateful(x)
    stateful.cuda()
    assert _logits(stateful(x.cuda())).is_cuda


def test_lmmodel4_names_the_sequence_length_it_was_built_for():
    with pytest.raises(ValueError, match=r"built for sequences of sl=5 tokens.*got shape \(4, 7\)"):
        LMModel4(V, NH, sl=SL)(_tokens(BS, 7))
    with pytest.raises(ValueError, match="at least 1; got 0"):
        LMModel4(V, NH, sl=0)


def test_three_word_models_reject_short_sequences():
    with pytest.raises(ValueError, match=r"LMModel1 expects token ids of shape \(bs, 3\); got shape \(4, 2\)"):
        LMModel1(V, NH)(_tokens(BS, 2))


def test_lmmodel4_defaults_to_the_chapters_sequence_length():
    assert LMModel4(V, NH).sl == 16
