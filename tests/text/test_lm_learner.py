"""language_model_learner: AWD-LSTM sized to the vocabulary, generation, whole-split evaluation."""
from __future__ import annotations

import math

import pytest
import torch

from rnnkit.data.text import TextDataLoaders
from rnnkit.metrics import Perplexity
from rnnkit.models.awd_lstm import AWDLSTMConfig
from rnnkit.text.learner import LMLearner, awd_lstm_lm_split, language_model_learner

TINY = AWDLSTMConfig(emb_sz=16, n_hid=24, n_layers=2, output_p=0.1, hidden_p=0.1, input_p=0.1,
                     embed_p=0.02, weight_p=0.1)


@pytest.fixture(scope="module")
def dls():
    torch.manual_seed(0)
    return TextDataLoaders.from_corpus("human_numbers", bs=16, seq_len=12, seed=0)


def test_learner_is_sized_to_vocab_with_fastai_metrics(dls):
    learn = language_model_learner(dls, config=TINY)
    assert isinstance(learn, LMLearner)
    enc = learn.model[0]
    assert enc.encoder.num_embeddings == len(dls.vocab) == 30
    assert enc.encoder.padding_idx is None  # the corpus has no padding token: no frozen row
    assert learn.model[1].decoder.weight is enc.encoder.weight
    assert [m.name for m in learn.metrics] == ["accuracy", "perplexity"]
    assert isinstance(learn.metrics[1], Perplexity)
    assert len(awd_lstm_lm_split(learn.model)) == 3
    assert sum(len(g) for g in awd_lstm_lm_split(learn.model)) == len(list(learn.model.parameters()))


def test_drop_mult_scales_dropouts_and_pretrained_is_refused(dls):
    learn = language_model_learner(dls, config=TINY, drop_mult=0.5)
    assert learn.model[1].output_dp.p == pytest.approx(0.05)
    assert learn.model[0].input_dp.p == pytest.approx(0.05)
    with pytest.raises(ValueError, match="no pretrained weights"):
        language_model_learner(dls, config=TINY, pretrained=True)


def test_training_improves_and_evaluation_is_one_stateful_pass(dls):
    learn = language_model_learner(dls, config=TINY)
    before = learn.evaluate_lm()
    learn.fit_one_cycle(2, 1e-2)
    after = learn.evaluate_lm()
    assert after["loss"] < before["loss"]
    assert after["perplexity"] == pytest.approx(math.exp(after["loss"]))
    n_valid = len(dls.valid_ds) - 1
    assert after["tokens"] == (n_valid // 16) * 16  # every token of the rows, nothing dropped
    assert learn.model.training is False or learn.model.training is True  # restored, no crash


def test_predict_is_reproducible_under_a_seed_and_greedy_is_deterministic(dls):
    learn = language_model_learner(dls, config=TINY)
    learn.fit(1, 1e-2)
    a = learn.predict("one hundred", n_words=8, temperature=1.0, seed=1)
    b = learn.predict("one hundred", n_words=8, temperature=1.0, seed=1)
    assert a == b and a.startswith("one hundred ") and len(a.split()) == 10
    g1 = learn.predict("two", n_words=5, temperature=0)
    g2 = learn.predict("two", n_words=5, temperature=0)
    assert g1 == g2
    state = torch.get_rng_state()
    learn.predict("two", n_words=3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # sampling leaves the global RNG alone
    assert learn.predict("two", n_words=3, only_new=True, seed=2).count(" ") == 2
    with pytest.raises(ValueError, match="does not know"):
        learn.predict("zebra", n_words=1)
