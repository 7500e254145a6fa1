"""LMDataLoader: continuing rows of a token stream, fixed or AWD-LSTM random windows, shuffling, resume."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

from rnnkit.data.core import DataLoader, DataLoaders
from rnnkit.data.external import URLs, untar_data
from rnnkit.data.human_numbers import group_chunks, human_numbers_lm_dls, human_numbers_tokens
from rnnkit.data.lm_loader import LMDataLoader
from rnnkit.data.stream import TokenStream
from rnnkit.errors import UserError
from rnnkit.losses import CrossEntropyLossFlat
from rnnkit.training.learner import Learner


def _batches(dl):
    return [(x.clone(), y.clone()) for x, y in dl]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _docs(n_docs=12, seed=0):
    """Documents whose tokens all equal their index, of different lengths."""
    g = np.random.default_rng(seed)
    return [torch.full((int(g.integers(3, 20)),), k) for k in range(n_docs)]


def _epoch_stream(dl):
    """The whole stream an epoch reads, rebuilt from bs=1 batches (x, then y's last token)."""
    assert dl.bs == 1
    bs = list(dl)
    return torch.cat([x[0] for x, _ in bs] + [bs[-1][1][0, -1:]]).tolist()


# ---- the chapter's group_chunks construction ----

@pytest.fixture(scope="module")
def human_numbers_nums(tmp_path_factory):
    path = untar_data(URLs.HUMAN_NUMBERS, base=tmp_path_factory.mktemp("rnnkit_home"))
    return human_numbers_tokens(path)[1]


@pytest.mark.parametrize("bs,sl", [(64, 16), (64, 3), (10, 7)])
def test_matches_group_chunks_batches_train_and_valid(human_numbers_nums, bs, sl):
    nums = human_numbers_nums
    seqs = [(nums[i:i + sl], nums[i + 1:i + sl + 1]) for i in range(0, len(nums) - sl - 1, sl)]
    cut = int(len(seqs) * 0.8)
    dls = DataLoaders.from_dsets(group_chunks(seqs[:cut], bs), group_chunks(seqs[cut:], bs),
                                 bs=bs, drop_last=True, shuffle=False, device="cpu")
    m_train, m_valid = cut // bs, (len(seqs) - cut) // bs
    # the same tokens the chapter's batches cover: whole rows of m windows, plus one target token
    train = LMDataLoader(nums[:m_train * bs * sl + 1], bs=bs, seq_len=sl)
    start = cut * sl
    valid = LMDataLoader(nums[start:start + m_valid * bs * sl + 1], bs=bs, seq_len=sl)
    _assert_same_batches(_batches(train), _batches(dls.train))
    _assert_same_batches(_batches(valid), _batches(dls.valid))
    assert len(train) == len(dls.train) and len(valid) == len(dls.valid)


# ---- cutting the stream ----

def test_rows_continue_across_batches_and_targets_shift_by_one():
    n, bs, sl = 1000, 4, 7
    dl = LMDataLoader(torch.arange(n), bs=bs, seq_len=sl)
    L = (n - 1) // bs
    batches = list(dl)
    assert batches[0][0][:, 0].tolist() == [j * L for j in range(bs)]  # row j starts at j * L
    for (x, y), (x2, _) in zip(batches, batches[1:]):
        assert torch.equal(y, x + 1)
        assert torch.equal(x2[:, 0], x[:, -1] + 1)  # row j of batch i+1 continues row j of batch i
    assert sum(x.shape[1] for x, _ in batches) == L  # every row token is used once


def test_diagram_example_yields_the_remainder_window():
    dl = LMDataLoader(torch.arange(26), bs=3, seq_len=3)
    batches = list(dl)
    assert [x.shape[1] for x, _ in batches] == [3, 3, 2]
    assert batches[2][0].tolist() == [[6, 7], [14, 15], [22, 23]]
    assert batches[2][1].tolist() == [[7, 8], [15, 16], [23, 24]]
    assert len(LMDataLoader(torch.arange(26), bs=3, seq_len=3, drop_last=True)) == 2


def test_batches_are_plain_contiguous_long_tensors():
    x, y = LMDataLoader(np.arange(100, dtype=np.int32), bs=2, seq_len=5).one_batch()
    assert type(x) is torch.Tensor and x.dtype == torch.long and y.dtype == torch.long
    assert x.is_contiguous() and y.is_contiguous() and x.shape == y.shape == (2, 5)
    y.view(-1)  # the chapter's loss calls `.view(-1)` on targets


@pytest.mark.parametrize("n,bs,sl", [(26, 3, 3), (100, 3, 11), (1001, 4, 10), (64, 1, 63)])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("random_bptt", [False, True])
def test_len_is_exact(n, bs, sl, drop_last, random_bptt):
    dl = LMDataLoader(torch.arange(n), bs=bs, seq_len=sl, drop_last=drop_last, random_bptt=random_bptt,
                      min_seq_len=1, seed=3)
    for _ in range(3):
        expected = len(dl)
        count = 0
        for _ in dl:
            count += 1
            assert len(dl) == expected  # also right while iterating
        assert count == expected
    if not random_bptt:
        L = (n - 1) // bs
        assert len(dl) == (L // sl if drop_last else -(-L // sl))


def test_random_windows_cover_the_rows_exactly():
    dl = LMDataLoader(torch.arange(5000), bs=3, seq_len=20, random_bptt=True, seed=0)
    widths = [x.shape[1] for x, _ in dl]
    assert sum(widths) == (5000 - 1) // 3
    assert len(set(widths)) > 5


def test_too_large_bs_times_seq_len_is_a_clear_error():
    with pytest.raises(UserError, match=r"100 tokens.*bs=8.*seq_len=20.*12 tokens.*Lower bs or seq_len"):
        LMDataLoader(torch.arange(100), bs=8, seq_len=20)
    LMDataLoader(torch.arange(161), bs=8, seq_len=20)  # exactly enough: 8 * 20 + 1


def test_the_chapters_loaders_refuse_a_batch_size_larger_than_the_data(tmp_path):
    (tmp_path / "train.txt").write_text("one \ntwo \n")
    (tmp_path / "valid.txt").write_text("three \n")
    with pytest.raises(UserError, match=r"bs=4 with sl=2 is larger than the data allows.*use a smaller bs"):
        human_numbers_lm_dls(bs=4, sl=2, path=tmp_path)


def test_bad_options_are_rejected():
    with pytest.raises(UserError, match="bs must be an int >= 1, got 0"):
        LMDataLoader(torch.arange(100), bs=0)
    with pytest.raises(UserError, match="p_half"):
        LMDataLoader(torch.arange(100), bs=2, seq_len=5, p_half=1.5)
    with pytest.raises(UserError, match="max_seq_len must be an int >= 5"):
        LMDataLoader(torch.arange(100), bs=2, seq_len=5, max_seq_len=3)


# ---- random BPTT (AWD-LSTM) ----

def test_random_bptt_length_distribution():
    sl, min_sl = 70, 5
    dl = LMDataLoader(np.arange(700_001, dtype=np.int32), bs=1, seq_len=sl, random_bptt=True,
                      min_seq_len=min_sl, seed=0)
    lengths = []
    for x, _ in dl:
        assert dl.seq_len_of_batch == x.shape[1] and dl.bptt == sl
        lengths.append(x.shape[1])
    lengths = np.array(lengths[:-1])  # the last window is clipped at the end of the rows
    assert len(lengths) > 9000
    assert abs(lengths.mean() - (0.95 * sl + 0.05 * sl / 2)) < 0.5
    assert abs((lengths < 0.75 * sl).mean() - 0.05) < 0.01
    assert abs(lengths[lengths >= 0.75 * sl].std() - 5) < 0.3
    assert lengths.min() >= min_sl


def test_random_bptt_respects_floor_and_cap():
    dl = LMDataLoader(torch.arange(20_000), bs=1, seq_len=10, random_bptt=True, sigma=20,
                      min_seq_len=5, max_seq_len=25, seed=1)
    widths = np.array([x.shape[1] for x, _ in dl][:-1])
    assert widths.min() == 5 and widths.max() == 25


def test_random_bptt_is_reproducible_under_a_seed_and_varies_by_epoch():
    def widths(dl, epochs=2):
        return [[x.shape[1] for x, _ in dl] for _ in range(epochs)]

    a = widths(LMDataLoader(torch.arange(3000), bs=2, seq_len=30, random_bptt=True, seed=7))
    b = widths(LMDataLoader(torch.arange(3000), bs=2, seq_len=30, random_bptt=True, seed=7))
    c = widths(LMDataLoader(torch.arange(3000), bs=2, seq_len=30, random_bptt=True, seed=8))
    assert a == b and a != c and a[0] != a[1]
    torch.manual_seed(0)
    d = widths(LMDataLoader(torch.arange(3000), bs=2, seq_len=30, random_bptt=True))
    torch.manual_seed(0)
    e = widths(LMDataLoader(torch.arange(3000), bs=2, seq_len=30, random_bptt=True))
    assert d == e


# ---- shuffling documents ----

def test_shuffle_moves_whole_documents_in_a_new_order_each_epoch():
    docs = _docs()
    dl = LMDataLoader(docs, bs=1, seq_len=9, shuffle=True, seed=0)
    orders = []
    for _ in range(3):
        stream = _epoch_stream(dl)
        runs = [(v, 1) for v in stream[:1]]
        for v in stream[1:]:
            runs[-1:] = [(v, runs[-1][1] + 1)] if v == runs[-1][0] else [runs[-1], (v, 1)]
        # each document appears once, as one contiguous run of its full length
        assert sorted(v for v, _ in runs) == list(range(len(docs)))
        assert all(n == len(docs[v]) for v, n in runs)
        orders.append([v for v, _ in runs])
    assert orders[0] != orders[1] != orders[2]


def test_shuffle_is_reproducible_under_a_seed():
    a = LMDataLoader(_docs(), bs=2, seq_len=5, shuffle=True, seed=3)
    b = LMDataLoader(_docs(), bs=2, seq_len=5, shuffle=True, seed=3)
    for _ in range(2):
        _assert_same_batches(_batches(a), _batches(b))


def test_validation_copy_is_fixed_and_in_document_order():
    train = LMDataLoader(_docs(), bs=1, seq_len=9, shuffle=True, random_bptt=True, min_seq_len=2, seed=0)
    valid = train.new(shuffle=False, random_bptt=False)
    assert valid.stream is train.stream and valid.dataset is train.dataset
    in_order = torch.cat(_docs()).tolist()
    first = _batches(valid)
    assert _epoch_stream(valid) == in_order
    _assert_same_batches(_batches(valid), first)
    assert all(x.shape[1] == 9 for x, _ in first[:-1])


def test_a_single_stream_is_not_shuffled():
    dl = LMDataLoader(torch.arange(50), bs=1, seq_len=7, shuffle=True)
    assert _epoch_stream(dl) == list(range(50))


# ---- epochs, state and resuming ----

def test_epochs_are_counted_per_iteration_and_one_batch_does_not_count():
    dl = LMDataLoader(_docs(), bs=2, seq_len=5, shuffle=True, seed=0)
    first = dl.one_batch()
    assert dl.epoch == 0
    b0 = _batches(dl)
    assert torch.equal(b0[0][0], first[0]) and dl.epoch == 1
    dl.set_epoch(0)
    _assert_same_batches(_batches(dl), b0)
    assert dl.state_dict()["epoch"] == 1 and dl.state_dict()["batch"] == 0


@pytest.mark.parametrize("stop", [0, 1, 4, 7])
def test_resume_mid_epoch_gives_the_remaining_batches(stop):
    def make(seed=None):
        return LMDataLoader(_docs(20), bs=2, seq_len=6, shuffle=True, random_bptt=True, min_seq_len=2,
                            sigma=2, seed=seed)

    ref = make(seed=11)
    ref_epochs = [_batches(ref) for _ in range(3)]
    assert len(ref_epochs[1]) > 7

    dl = make(seed=11)
    _batches(dl)  # epoch 0
    it = iter(dl)
    for _ in range(stop):
        next(it)
    state = dl.state_dict()
    assert state == {"epoch": 1, "batch": stop, "seed": 11}
    del it

    resumed = make(seed=None)  # the seed comes back with the state
    resumed.load_state_dict(state)
    assert len(resumed) == len(ref_epochs[1]) - stop
    _assert_same_batches(_batches(resumed), ref_epochs[1][stop:])
    _assert_same_batches(_batches(resumed), ref_epochs[2])


def test_state_saved_after_the_last_batch_resumes_at_the_next_epoch():
    dl = LMDataLoader(torch.arange(100), bs=2, seq_len=10, seed=0)
    it = iter(dl)
    for _ in range(len(dl)):
        next(it)
    state = dl.state_dict()
    assert state["batch"] == len(dl)
    dl2 = LMDataLoader(torch.arange(100), bs=2, seq_len=10)
    dl2.load_state_dict(state)
    assert dl2.state_dict()["epoch"] == 1 and dl2.state_dict()["batch"] == 0
    with pytest.raises(UserError, match="past the end of epoch 0"):
        dl2.load_state_dict({"epoch": 0, "batch": 99})


# ---- memory-mapped streams ----

def test_memory_mapped_stream_round_trip_without_an_int64_copy(tmp_path):
    n = 1_000_000
    ids = np.random.default_rng(0).integers(0, 33_278, size=n, dtype=np.int32)
    stream = TokenStream.write(tmp_path / "stream", (ids[i:i + 100_000] for i in range(0, n, 100_000)))
    opened = TokenStream.open(tmp_path / "stream")
    dl = LMDataLoader(opened, bs=16, seq_len=70, random_bptt=True, seed=0)
    assert dl.stream is opened and isinstance(dl.stream.ids, np.memmap) and dl.stream.ids.dtype == np.int32
    ref = LMDataLoader(ids, bs=16, seq_len=70, random_bptt=True, seed=0)
    assert stream.ids.filename == opened.ids.filename
    expected = len(dl)

    tracemalloc.start()
    try:
        count = 0
        for (x, y), (rx, ry) in zip(dl, ref):
            assert x.dtype == torch.long and torch.equal(x, rx) and torch.equal(y, ry)
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == expected
    assert peak < n * 8 // 10  # an int64 copy of the stream would be 8 MB
    assert isinstance(dl.stream.ids, np.memmap) and dl.stream.ids.dtype == np.int32


def test_memory_mapped_documents_can_be_shuffled(tmp_path):
    docs = _docs()
    stream = TokenStream.write(tmp_path / "docs", docs, docs=True)
    dl = LMDataLoader(stream, bs=1, seq_len=9, shuffle=True, seed=0)
    ref = LMDataLoader(docs, bs=1, seq_len=9, shuffle=True, seed=0)
    _assert_same_batches(_batches(dl), _batches(ref))


# ---- with the Learner ----

class _TinyLM(nn.Module):
    def __init__(self, vocab_sz: int, n_hid: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_sz, n_hid)
        self.rnn = nn.LSTM(n_hid, n_hid, batch_first=True)
        self.out = nn.Linear(n_hid, vocab_sz)

    def forward(self, x):
        return self.out(self.rnn(self.emb(x))[0])  # (bs, seq_len, vocab_sz)


def test_learner_trains_a_tiny_lstm_on_lm_dataloaders(tmp_path):
    vocab_sz = 10
    ids = torch.arange(1300) % vocab_sz
    train = LMDataLoader(ids[:1000], bs=8, seq_len=10, random_bptt=True, seed=0)
    valid = train.new(ids[1000:], random_bptt=False)
    dls = DataLoaders(train, valid)
    learn = Learner(dls, _TinyLM(vocab_sz), loss_func=CrossEntropyLossFlat(), lr=1e-2, path=tmp_path)
    learn.logger = lambda *a, **k: None
    learn.fit(2)
    (train0, valid0, *_), (train1, valid1, *_) = learn.recorder.values
    assert train1 < train0 and valid1 < valid0
    assert train.epoch == 2 and valid.epoch == 2
    assert isinstance(dls.train, LMDataLoader) and not isinstance(dls.train, DataLoader)


def test_accepts_fastcore_l_of_ids_or_documents():
    from rnnkit.utils import L

    dl = LMDataLoader(L(range(30)), bs=2, seq_len=3)
    assert dl.one_batch()[0].tolist() == [[0, 1, 2], [14, 15, 16]]
    assert LMDataLoader(L(torch.arange(10), torch.arange(5)), bs=2, seq_len=3).stream.n_docs == 2


def test_to_and_dataloaders_set_the_device():
    train = LMDataLoader(torch.arange(100), bs=2, seq_len=5)
    valid = train.new(shuffle=False)
    assert train.to("cpu") is train and train.device == torch.device("cpu")
    dls = DataLoaders(train, valid, device="cpu")
    assert valid.device == torch.device("cpu") and dls.train_ds is train.dataset
    x, y = dls.one_batch()
    assert x.device.type == "cpu"


def test_an_iterator_never_advanced_does_not_count_an_epoch():
    dl = LMDataLoader(torch.arange(100), bs=2, seq_len=5)
    it = iter(dl)
    del it
    assert dl.epoch == 0 and dl.state_dict()["epoch"] == 0
