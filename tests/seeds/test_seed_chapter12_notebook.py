"""The chapter-12 notebook's code (LMModel5, LMModel6, LMModel7 with TextLearner), run with only the
import line changed, must reach the book's accuracies within noise.

The book reports: LMModel5 0.49-0.51 after `fit_one_cycle(15, 3e-3)`, LMModel6 ~0.75 after
`fit_one_cycle(15, 1e-2)`, LMModel7 0.87-0.89 after `fit_one_cycle(15, 1e-2, wd=0.1)`.
The one change inside the models: the notebook builds the LSTM state as `n_layers` tensors of shape
`(2, bs, n_hidden)`, which only works because it uses two layers; nn.LSTM wants the pair `(h, c)`,
each `(n_layers, bs, n_hidden)`, so the state is built as 2 tensors of `(n_layers, bs, n_hidden)`.
"""
from __future__ import annotations

import pytest

from rnnkit.all import *  # the only line changed from the notebook (`from fastai2.text.all import *`)


@pytest.fixture(scope="module")
def chapter12(tmp_path_factory):
    import os

    old = os.environ.get("RNNKIT_HOME")
    os.environ["RNNKIT_HOME"] = str(tmp_path_factory.mktemp("rnnkit_home"))
    try:
        # The notebook's hidden set-up cell.
        path = untar_data(URLs.HUMAN_NUMBERS)
        lines = L()
        with open(path/'train.txt') as f: lines += L(*f.readlines())
        with open(path/'valid.txt') as f: lines += L(*f.readlines())
        text = ' . '.join([l.strip() for l in lines])
        tokens = text.split(' ')
        vocab = L(*tokens).unique()
        word2idx = {w:i for i,w in enumerate(vocab)}
        nums = L(word2idx[i] for i in tokens)

        def group_chunks(ds, bs):
            m = len(ds) // bs
            new_ds = L()
            for i in range(m): new_ds += L(ds[i + m*j] for j in range(bs))
            return new_ds

        # "To make the comparison fair against our last example, we use the same batch size and sequence length"
        sl,bs = 16,64
        seqs = L((tensor(nums[i:i+sl]), tensor(nums[i+1:i+sl+1]))
                 for i in range(0,len(nums)-sl-1,sl))
        cut = int(len(seqs) * 0.8)
        dls = DataLoaders.from_dsets(group_chunks(seqs[:cut], bs),
                                     group_chunks(seqs[cut:], bs),
                                     bs=bs, drop_last=True, shuffle=False)
        yield vocab, dls, bs
    finally:
        if old is None:
            os.environ.pop("RNNKIT_HOME", None)
        else:
            os.environ["RNNKIT_HOME"] = old


def _final_accuracy(learn):
    return learn.recorder.values[-1][2]


def test_notebook_data_has_the_books_batches(chapter12):
    vocab, dls, bs = chapter12
    x, y = dls.one_batch()
    assert len(vocab) == 30
    assert x.shape == y.shape == (64, 16)
    assert len(dls.train) == 49 and len(dls.valid) == 12  # 3153 and 789 sequences, grouped by 64


def test_lmmodel5_multilayer_rnn_reaches_books_accuracy(chapter12):
    vocab, dls, bs = chapter12

    class LMModel5(Module):
        def __init__(self, vocab_sz, n_hidden, n_layers):
            self.i_h = nn.Embedding(vocab_sz, n_hidden)
            self.rnn = nn.RNN(n_hidden, n_hidden, n_layers, batch_first=True)
            self.h_o = nn.Linear(n_hidden, vocab_sz)
            self.h = torch.zeros(n_layers, bs, n_hidden)

        def forward(self, x):
            res,h = self.rnn(self.i_h(x), self.h)
            self.h = h.detach()
            return self.h_o(res)

        def reset(self): self.h.zero_()

    learn = Learner(dls, LMModel5(len(vocab), 64, 2), loss_func=CrossEntropyLossFlat(), metrics=accuracy, cbs=ModelReseter)
    learn.fit_one_cycle(15, 3e-3)
    assert _final_accuracy(learn) > 0.45  # book: 0.514; here 0.52-0.55 over seeds 0-3


def test_lmmodel6_two_layer_lstm_reaches_books_accuracy(chapter12):
    vocab, dls, bs = chapter12

    class LMModel6(Module):
        def __init__(self, vocab_sz, n_hidden, n_layers):
            self.i_h = nn.Embedding(vocab_sz, n_hidden)
            self.rnn = nn.LSTM(n_hidden, n_hidden, n_layers, batch_first=True)
            self.h_o = nn.Linear(n_hidden, vocab_sz)
            # Fixed: the notebook has [torch.zeros(2, bs, n_hidden) for _ in range(n_layers)].
            self.h = [torch.zeros(n_layers, bs, n_hidden) for _ in range(2)]

        def forward(self, x):
            res,h = self.rnn(self.i_h(x), self.h)
            self.h = [h_.detach() for h_ in h]
            return self.h_o(res)

        def reset(self):
            for h in self.h: h.zero_()

    accs = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        learn = Learner(dls, LMModel6(len(vocab), 64, 2), loss_func=CrossEntropyLossFlat(), metrics=accuracy, cbs=ModelReseter)
        learn.fit_one_cycle(15, 1e-2)
        accs.append(_final_accuracy(learn))
    # book: 0.758 (the notes: 0.753). The two-layer LSTM's result varies a lot with the init and with the
    # CPU's kernels: seeds 0-7 gave 0.58-0.80 (median 0.74) on an AVX2 AMD EPYC, and 0.60-0.78 over 13 runs
    # on an AVX-512 Intel CPU. One seed can land low on some machine, so the median of three is checked.
    assert sorted(accs)[1] > 0.62, accs


def test_lmmodel7_regularized_lstm_with_text_learner_reaches_books_accuracy(chapter12):
    vocab, dls, bs = chapter12

    class LMModel7(Module):
        def __init__(self, vocab_sz, n_hidden, n_layers, p):
            self.i_h = nn.Embedding(vocab_sz, n_hidden)
            self.rnn = nn.LSTM(n_hidden, n_hidden, n_layers, batch_first=True)
            self.drop = nn.Dropout(p)
            self.h_o = nn.Linear(n_hidden, vocab_sz)
            self.h_o.weight = self.i_h.weight
            # Fixed: the notebook has [torch.zeros(2, bs, n_hidden) for _ in range(n_layers)].
            self.h = [torch.zeros(n_layers, bs, n_hidden) for _ in range(2)]

        def forward(self, x):
            raw,h = self.rnn(self.i_h(x), self.h)
            out = self.drop(raw)
            self.h = [h_.detach() for h_ in h]
            return self.h_o(out),raw,out

        def reset(self):
            for h in self.h: h.zero_()

    learn = Learner(dls, LMModel7(len(vocab), 64, 2, 0.5),
                    loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                    cbs=[ModelReseter, RNNRegularizer(alpha=2, beta=1)])
    # The notebook only builds this one; it must train too (RNNRegularizer brings its RNNCallback).
    learn.fit(1, 1e-2)
    assert learn.get_cb(RNNCallback) is not None and learn.recorder.values[-1][2] > 0.2
    learn = TextLearner(dls, LMModel7(len(vocab), 64, 2, 0.4),
                        loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    learn.fit_one_cycle(15, 1e-2, wd=0.1)
    assert _final_accuracy(learn) > 0.82  # book: 0.869; here 0.85-0.90 over seeds 0-6
