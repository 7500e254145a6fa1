"""The continuous cache pointer (text/cache_pointer.py) and its search (text/lm_eval.tune_cache): the mixture
equals Grave et al.'s formula computed by hand, it lowers perplexity on repeated text, and the search returns
its best grid point."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rnnkit.data.lm_loader import LMDataLoader
from rnnkit.data.text import TextDataLoaders
from rnnkit.errors import UserError
from rnnkit.text.cache_pointer import CacheConfig, window_mask
from rnnkit.text.learner import LMLearner, language_model_learner
from rnnkit.text.lm_eval import evaluate_stream, tune_cache

V = 5
# The toy model's fixed outputs per input token: logits (what p_vocab is) and a 2-d "last layer output".
LOGITS = [[1.0, 0.0, 0.5, -1.0, 0.2], [0.0, 2.0, 0.0, 0.1, -0.5], [0.3, 0.3, 1.5, 0.0, 0.0],
          [-0.2, 0.4, 0.1, 1.0, 0.6], [0.5, -0.5, 0.0, 0.2, 1.2]]
HIDDEN = [[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.5], [0.3, -0.8]]
STREAM = [0, 1, 2, 0, 1, 3, 0, 1, 2, 4, 2, 0, 1, 2, 3, 0, 1, 4, 0, 2, 1]


class ToyLM(nn.Module):
    """A language model whose outputs depend only on the current token: fixed logits and hidden vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Embedding.from_pretrained(torch.tensor(LOGITS))
        self.hidden = nn.Embedding.from_pretrained(torch.tensor(HIDDEN))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        return self.logits(x), h, h


def _by_hand(inputs: list[int], targets: list[int], window: int, theta: float, lam: float) -> tuple[float, int]:
    """Sum of -log p(target) and number of correct argmax predictions of Grave's mixture, in plain Python."""
    nll, correct = 0.0, 0
    for t, (x, y) in enumerate(zip(inputs, targets)):
        z = sum(math.exp(v) for v in LOGITS[x])
        p = [math.exp(v) / z for v in LOGITS[x]]
        past = range(max(0, t - window), t)
        if past:
            s = [theta * sum(a * b for a, b in zip(HIDDEN[x], HIDDEN[inputs[i]])) for i in past]
            m = max(s)
            e = [math.exp(v - m) for v in s]
            cache = [0.0] * V
            for i, ei in zip(past, e):
                cache[targets[i]] += ei / sum(e)
            p = [(1 - lam) * pv + lam * pc for pv, pc in zip(p, cache)]
        nll -= math.log(p[y])
        correct += int(max(range(V), key=lambda w: p[w]) == y)
    return nll, correct


@pytest.mark.parametrize("bs", [1, 2])
def test_cache_mixture_equals_graves_formula_computed_by_hand(bs):
    window, theta, lam = 3, 1.7, 0.3
    dl = LMDataLoader(torch.tensor(STREAM), bs=bs, seq_len=4)  # segments of 4 cross the window's edge
    res = evaluate_stream(ToyLM(), dl, cache=CacheConfig(window=window, theta=theta, lambdah=lam))
    L = (len(STREAM) - 1) // bs  # each row of the loader is its own stream, with its own cache
    nll, correct = 0.0, 0
    for r in range(bs):
        row = STREAM[r * L: r * L + L + 1]
        a, b = _by_hand(row[:-1], row[1:], window, theta, lam)
        nll, correct = nll + a, correct + b
    assert res["tokens"] == bs * L
    assert res["loss"] == pytest.approx(nll / (bs * L), rel=1e-6)
    assert res["accuracy"] == pytest.approx(correct / (bs * L))


def test_rows_of_a_batch_keep_separate_caches():
    # Row 1 repeats row 0's text: with one shared cache its first tokens would find row 0's entries.
    stream = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0])
    cfg = CacheConfig(window=20, theta=1.0, lambdah=0.5)
    both = evaluate_stream(ToyLM(), LMDataLoader(stream, bs=2, seq_len=5), cache=cfg)
    row0 = evaluate_stream(ToyLM(), LMDataLoader(stream[:6], bs=1, seq_len=5), cache=cfg)
    row1 = evaluate_stream(ToyLM(), LMDataLoader(stream[5:], bs=1, seq_len=5), cache=cfg)
    assert both["loss"] == pytest.approx((row0["loss"] + row1["loss"]) / 2, rel=1e-6)


def test_a_zero_weight_cache_scores_like_the_model_alone():
    dl = LMDataLoader(torch.tensor(STREAM), bs=1, seq_len=6)
    plain = evaluate_stream(ToyLM(), dl)
    zero = evaluate_stream(ToyLM(), dl, cache=CacheConfig(window=4, theta=1.0, lambdah=0.0))
    assert zero["loss"] == pytest.approx(plain["loss"], rel=1e-6) and zero["accuracy"] == plain["accuracy"]


def test_window_mask_sees_the_stored_entries_and_earlier_positions_of_the_segment():
    m = window_mask(3, 2, window=2)  # keys: 2 stored entries, then the 3 queries' own positions
    assert m.tolist() == [[True, True, False, False, False],
                          [False, True, True, False, False],
                          [False, False, True, True, False]]


def _small_lm(dls, seed=0):
    torch.manual_seed(seed)
    cfg = dict(emb_sz=16, n_hid=32, n_layers=2, pad_token=None, output_p=0.0, hidden_p=0.0, input_p=0.0,
               embed_p=0.0, weight_p=0.0)
    return language_model_learner(dls, config=cfg)


def _repeats(vocab_sz=200, block=50, times=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_sz, (block,), generator=g).repeat(times)


def test_cache_lowers_perplexity_on_text_with_long_repeats():
    stream = _repeats()
    dls = TextDataLoaders.from_tensors(stream, stream, [str(i) for i in range(200)], bs=1, seq_len=10)
    learn = _small_lm(dls)
    plain = learn.evaluate()
    cached = learn.evaluate(cache=CacheConfig(window=100, theta=1.0, lambdah=0.5))
    assert cached["perplexity"] < 0.7 * plain["perplexity"]
    assert cached["cache"] == {"window": 100, "theta": 1.0, "lambdah": 0.5} and plain["cache"] is None


def test_tune_cache_returns_the_grid_point_with_the_lowest_perplexity():
    stream = _repeats(times=4)
    dls = TextDataLoaders.from_tensors(stream, stream, [str(i) for i in range(200)], bs=2, seq_len=10)
    learn = _small_lm(dls)
    windows, thetas, lambdas = (20, 60), (1.0, 50.0), (0.1, 0.5)
    best, table = tune_cache(learn, windows=windows, thetas=thetas, lambdas=lambdas, chunk=16)  # several chunks
    assert len(table) == 8
    direct = {}
    for row in table:
        cfg = CacheConfig(row["window"], row["theta"], row["lambdah"])
        direct[cfg] = learn.evaluate(cache=cfg)["perplexity"]
        assert row["perplexity"] == pytest.approx(direct[cfg], rel=1e-5)
    assert best == min(direct, key=direct.__getitem__)
    assert best.window == 60 and best.lambdah == 0.5  # the repeats are 50 tokens apart


def test_evaluate_reads_the_test_loader_and_says_when_there_is_none():
    stream = _repeats(times=2)
    train = TextDataLoaders.from_tensors(stream, stream, [str(i) for i in range(200)], bs=2, seq_len=10)
    learn = _small_lm(train)
    with pytest.raises(UserError, match="no test loader"):
        learn.evaluate("test")
    test_dl = LMDataLoader(stream[:41], bs=2, seq_len=10)
    learn.dls = TextDataLoaders(train.train, train.valid, test_dl, vocab=train.vocab)
    res = learn.evaluate("test", bs=1)
    assert res["split"] == "test" and res["bs"] == 1 and res["tokens"] == 40
    with pytest.raises(UserError, match="split must be one of"):
        learn.evaluate("dev")


def test_plain_evaluate_matches_evaluate_lm():
    stream = _repeats(times=2)
    dls = TextDataLoaders.from_tensors(stream, stream, [str(i) for i in range(200)], bs=2, seq_len=10)
    learn = _small_lm(dls)
    assert isinstance(learn, LMLearner)
    res, ref = learn.evaluate(bptt=7), learn.evaluate_lm()
    assert res["loss"] == pytest.approx(ref["loss"], rel=1e-6) and res["tokens"] == ref["tokens"]
    assert res["bptt"] == 7 and res["split"] == "valid" and res["dynamic"] is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=0), "window must be an int >= 1"),
    (dict(window=2.5), "window must be an int >= 1"),
    (dict(theta=-1.0), "theta must be a finite number >= 0"),
    (dict(lambdah=1.5), r"lambdah is a mixture weight and must be in \[0, 1\], got 1.5"),
])
def test_cache_config_rejects_bad_values_naming_them(kwargs, match):
    with pytest.raises(UserError, match=match):
        CacheConfig(**kwargs)


def test_cache_config_for_corpus_gives_the_papers_values():
    assert CacheConfig.for_corpus("ptb") == CacheConfig(500, 1.0, 0.1)
    assert CacheConfig.for_corpus("wikitext-2") == CacheConfig(3785, 0.6625, 0.1279)
    assert CacheConfig.for_corpus("human_numbers") == CacheConfig.for_corpus("ptb")
