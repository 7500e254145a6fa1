"""Tests for rnnkit.data.core: DataLoader and DataLoaders, including the chapter-12 pipelines."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from rnnkit.data.core import DataLoader, DataLoaders
from rnnkit.data.external import URLs, untar_data
from rnnkit.utils import L, tensor


@pytest.fixture(scope="module")
def nums(tmp_path_factory) -> L:
    """The chapter's numericalized human-numbers corpus (63,095 token ids)."""
    path = untar_data(URLs.HUMAN_NUMBERS, base=tmp_path_factory.mktemp("rnnkit_home"))
    lines = L()
    for name in ("train.txt", "valid.txt"):
        with open(path / name) as f:
            lines += L(*f.readlines())
    tokens = " . ".join(line.strip() for line in lines).split(" ")
    vocab = L(*tokens).unique()
    word2idx = {w: i for i, w in enumerate(vocab)}
    return L(word2idx[t] for t in tokens)


def group_chunks(ds, bs):
    """The chapter's reordering: batch i holds item i of each of bs contiguous streams."""
    m = len(ds) // bs
    new_ds = L()
    for i in range(m):
        new_ds += L(ds[i + m * j] for j in range(bs))
    return new_ds


def _pairs(n: int = 10) -> list[tuple[torch.Tensor, int]]:
    return [(torch.tensor([i, i + 1]), i % 3) for i in range(n)]


def test_seed_three_word_dataset_collates_targets_to_long(nums):
    seqs = L((tensor(nums[i : i + 3]), nums[i + 3]) for i in range(0, len(nums) - 4, 3))
    assert len(seqs) == 21031
    cut = int(len(seqs) * 0.8)
    dls = DataLoaders.from_dsets(seqs[:cut], seqs[cut:], bs=64, shuffle=False)
    x, y = dls.one_batch()
    assert x.shape == (64, 3) and y.shape == (64,)
    assert y.dtype == torch.int64
    assert torch.equal(x[0], torch.tensor([0, 1, 2])) and y[0].item() == 1
    assert len(dls.train) == cut // 64  # drop_last stays True for the training set
    assert len(dls.valid) == -(-(len(seqs) - cut) // 64)
    assert sum(yb.shape[0] for _, yb in dls.valid) == len(seqs) - cut


def test_seed_group_chunks_dataset_gives_full_16_token_batches(nums):
    bs, sl = 64, 16
    seqs = L((tensor(nums[i : i + sl]), tensor(nums[i + 1 : i + sl + 1])) for i in range(0, len(nums) - sl - 1, sl))
    cut = int(len(seqs) * 0.8)
    dls = DataLoaders.from_dsets(
        group_chunks(seqs[:cut], bs), group_chunks(seqs[cut:], bs), bs=bs, drop_last=True, shuffle=False
    )
    x, y = dls.one_batch()
    assert x.shape == (64, 16) and y.shape == (64, 16)
    assert len(dls.train) == (cut // bs * bs) // bs == 49
    assert len(dls.valid) == ((len(seqs) - cut) // bs * bs) // bs == 12
    assert all(xb.shape == (64, 16) for xb, _ in dls.valid)
    # group_chunks makes consecutive batches continue each other row by row.
    b0, b1 = list(dls.valid)[:2]
    assert torch.equal(b0[1][:, -1], b1[0][:, 0])


def test_fast_path_equals_default_collate_path():
    ds = [(torch.randn(3), i, float(i) / 2, torch.tensor(i % 2 == 0)) for i in range(23)]
    fast = list(DataLoader(ds, bs=5))
    slow = list(DataLoader(ds, bs=5, collate_fn=default_collate))
    assert len(fast) == len(slow) == 5
    for fb, sb in zip(fast, slow):
        assert isinstance(fb, tuple) and len(fb) == 4
        for f, s in zip(fb, sb):
            assert type(f) is torch.Tensor
            assert f.dtype == s.dtype and torch.equal(f, s)


def test_shuffled_fast_path_equals_default_collate_on_the_same_order():
    ds = _pairs(17)
    fast = DataLoader(ds, bs=4, shuffle=True, seed=3)
    slow = DataLoader(ds, bs=4, shuffle=True, seed=3, collate_fn=default_collate)
    for fb, sb in zip(fast, slow):
        assert all(torch.equal(f, s) for f, s in zip(fb, sb))


def test_ragged_items_fall_back_to_default_collate():
    ds = [(torch.zeros(i % 2 + 1), i) for i in range(6)]
    with pytest.raises(RuntimeError):  # default_collate cannot stack ragged tensors
        list(DataLoader(ds, bs=2))
    words = [("a", 1), ("b", 2), ("c", 3)]
    xb, yb = DataLoader(words, bs=3).one_batch()
    assert list(xb) == ["a", "b", "c"] and torch.equal(yb, torch.tensor([1, 2, 3]))


def test_dataset_of_tensors_yields_tensor_batches():
    dl = DataLoader(torch.arange(10), bs=4)
    batches = list(dl)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(DataLoader(list(range(5)), bs=5).one_batch(), torch.arange(5))


def test_shuffle_is_reproducible_with_a_seed_and_changes_between_epochs():
    ds = _pairs(40)
    first = [x[:, 0].tolist() for x, _ in DataLoader(ds, bs=8, shuffle=True, seed=42)]
    again = [x[:, 0].tolist() for x, _ in DataLoader(ds, bs=8, shuffle=True, seed=42)]
    assert first == again
    dl = DataLoader(ds, bs=8, shuffle=True, seed=42)
    e1 = torch.cat([x[:, 0] for x, _ in dl]).tolist()
    e2 = torch.cat([x[:, 0] for x, _ in dl]).tolist()
    assert e1 != e2
    assert sorted(e1) == sorted(e2) == list(range(40))


def test_shuffle_follows_torch_manual_seed_without_a_seed():
    ds = _pairs(30)
    torch.manual_seed(1)
    a = [x[:, 0].tolist() for x, _ in DataLoader(ds, bs=10, shuffle=True)]
    torch.manual_seed(1)
    b = [x[:, 0].tolist() for x, _ in DataLoader(ds, bs=10, shuffle=True)]
    assert a == b


def test_len_is_honest_about_drop_last():
    ds = _pairs(10)
    assert len(DataLoader(ds, bs=4)) == 3 == len(list(DataLoader(ds, bs=4)))
    assert len(DataLoader(ds, bs=4, drop_last=True)) == 2 == len(list(DataLoader(ds, bs=4, drop_last=True)))
    assert len(DataLoader(ds, bs=5, drop_last=True)) == 2


def test_loader_exposes_fastai_attributes():
    ds = _pairs(10)
    dl = DataLoader(ds, bs=4, shuffle=True, drop_last=True)
    assert (dl.dataset, dl.bs, dl.shuffle, dl.drop_last, dl.device, dl.n) == (ds, 4, True, True, None, 10)
    assert dl.new(shuffle=False).shuffle is False and dl.new().bs == 4


def test_loader_moves_batches_to_its_device():
    dl = DataLoader(_pairs(4), bs=2, device="cpu")
    assert dl.device == torch.device("cpu")
    assert all(t.device.type == "cpu" for b in dl for t in b)


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="empty dataset"):
        DataLoader([], bs=4)
    with pytest.raises(ValueError, match="bs must be a positive int, got 0"):
        DataLoader(_pairs(3), bs=0)
    with pytest.raises(ValueError, match="bs must be a positive int, got -2"):
        DataLoader(_pairs(3), bs=-2)
    with pytest.raises(TypeError, match="indexable dataset"):
        DataLoader(iter(_pairs(3)))


def test_one_batch_explains_an_empty_loader():
    with pytest.raises(ValueError, match="no full batch"):
        DataLoader(_pairs(3), bs=4, drop_last=True).one_batch()


def test_worker_processes_give_the_same_batches():
    ds = _pairs(12)
    main = list(DataLoader(ds, bs=5))
    workers = list(DataLoader(ds, bs=5, num_workers=1))
    assert len(main) == len(workers) == 3
    for mb, wb in zip(main, workers):
        assert isinstance(wb, tuple) and all(torch.equal(m, w) for m, w in zip(mb, wb))


def test_from_dsets_shuffles_and_drops_only_the_training_set():
    dls = DataLoaders.from_dsets(_pairs(10), _pairs(7), _pairs(5), bs=4)
    assert [(dl.shuffle, dl.drop_last) for dl in dls] == [(True, True), (False, False), (False, False)]
    dls = DataLoaders.from_dsets(_pairs(10), _pairs(7), bs=4, shuffle=False)
    assert [(dl.shuffle, dl.drop_last) for dl in dls] == [(False, True), (False, False)]
    dls = DataLoaders.from_dsets(_pairs(10), _pairs(7), bs=4, drop_last=(False, True))
    assert [dl.drop_last for dl in dls] == [False, True]
    with pytest.raises(ValueError, match="2 values for 3 datasets"):
        DataLoaders.from_dsets(_pairs(3), _pairs(3), _pairs(3), shuffle=(True, False))
    with pytest.raises(ValueError, match="at least one dataset"):
        DataLoaders.from_dsets()


def test_dataloaders_give_fastai_access_to_loaders_and_datasets():
    train, valid = _pairs(10), _pairs(6)
    dls = DataLoaders.from_dsets(train, valid, bs=4, path="somewhere")
    assert dls.train is dls[0] and dls.valid is dls[1] and dls.loaders == [dls[0], dls[1]]
    assert dls.train_ds is train and dls.valid_ds is valid
    assert len(dls) == 2 and list(dls) == dls.loaders
    assert str(dls.path) == "somewhere"
    assert dls.one_batch()[0].shape == (4, 2)
    assert dls.n_inp == 1
    dls.n_inp = 2
    assert dls.n_inp == 2


def test_dataloaders_device_setter_moves_every_loader():
    dls = DataLoaders(DataLoader(_pairs(4), bs=2), DataLoader(_pairs(4), bs=2))
    assert dls.device is None
    dls.device = "cpu"
    assert dls.device == torch.device("cpu")
    assert all(dl.device == torch.device("cpu") for dl in dls)


def test_dataloaders_without_validation_explains_the_missing_loader():
    dls = DataLoaders(DataLoader(_pairs(4), bs=2))
    with pytest.raises(IndexError, match="no loader 1"):
        dls.valid
