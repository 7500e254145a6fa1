"""Shards of the loaders, in one process: rank r of N yields its block of every batch of the global layout,
and the distributed helpers behave as one process outside a process group."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rnnkit.callbacks.distributed import DistributedTrainer
from rnnkit.data.load import DataLoader
from rnnkit.data.lm_loader import LMDataLoader
from rnnkit.data.stream import TokenStream
from rnnkit.distributed import (
    agree_on_seeds, all_gather_cat, all_reduce_sum, barrier, broadcast_int, is_distributed, is_rank0, num_distrib,
    rank0_first, rank_distrib, setup_distrib, shard_loader, teardown_distrib,
)
from rnnkit.errors import UserError
from rnnkit.metrics import AccumMetric, AvgLoss, accuracy
from rnnkit.test_utils import synth_learner


def _docs_stream(n_docs: int = 40, seed: int = 0) -> TokenStream:
    rng = np.random.default_rng(seed)
    return TokenStream.from_docs([rng.integers(0, 50, rng.integers(20, 60)) for _ in range(n_docs)])


def _epochs(dl, n: int = 2) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    return [list(dl) for _ in range(n)]


@pytest.mark.parametrize("world_size", [2, 4])
def test_lm_shards_yield_their_block_of_rows_of_every_global_batch(world_size):
    dl = LMDataLoader(_docs_stream(), bs=8, seq_len=7, shuffle=True, random_bptt=True, min_seq_len=2, seed=3)
    full = _epochs(dl.new())
    for rank in range(world_size):
        shard = dl.shard(rank, world_size)
        assert (shard.rank, shard.world_size, shard.local_bs, len(shard)) == (rank, world_size, 8 // world_size,
                                                                             len(dl))
        rows = slice(rank * 8 // world_size, (rank + 1) * 8 // world_size)
        for full_epoch, shard_epoch in zip(full, _epochs(shard)):
            assert len(full_epoch) == len(shard_epoch)
            for (x, y), (xs, ys) in zip(full_epoch, shard_epoch):
                assert torch.equal(xs, x[rows]) and torch.equal(ys, y[rows])


def test_lm_shards_together_see_exactly_the_tokens_of_one_process():
    dl = LMDataLoader(torch.arange(1000), bs=6, seq_len=10)
    shards = [dl.shard(r, 3) for r in range(3)]
    for b, *parts in zip(dl.new(), *shards):
        assert torch.equal(torch.cat([p[0] for p in parts]), b[0])


def test_lm_shard_keeps_its_block_through_new_and_the_position_is_global():
    dl = LMDataLoader(torch.arange(2000), bs=8, seq_len=5, seed=1)
    it = iter(dl)
    next(it), next(it)
    shard = dl.shard(1, 2)
    assert shard.state_dict() == dl.state_dict() == {"epoch": 0, "batch": 2, "seed": 1}
    assert torch.equal(next(iter(shard))[0], next(it)[0][4:])  # continues where the loader was
    again = shard.new(seq_len=4)
    assert (again.rank, again.world_size, again.seq_len) == (1, 2, 4)
    assert "shard=1/2" in repr(again)


def test_lm_bs_not_divisible_by_the_processes_is_a_user_error():
    dl = LMDataLoader(torch.arange(500), bs=6, seq_len=5)
    with pytest.raises(UserError, match=r"bs=6 is not divisible by the 4 processes.*e\.g\. bs=8"):
        dl.shard(0, 4)
    with pytest.raises(UserError, match="rank must be below world_size=2"):
        dl.shard(2, 2)


def test_map_style_shards_split_every_batch_into_equal_disjoint_blocks():
    items = [(torch.tensor([i]), torch.tensor(i)) for i in range(50)]
    dl = DataLoader(items, bs=8)  # 6 batches of 8 and one of 2
    full = [b[1] for b in dl]
    shards = [dl.shard(r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(dl) == 7
    for b, p0, p1 in zip(full, *shards):
        assert torch.equal(torch.cat([p0[1], p1[1]]), b)
        assert len(p0[1]) == len(p1[1])


def test_map_style_shards_shuffle_alike_per_epoch_and_cover_the_dataset():
    items = list(range(64))
    dl = DataLoader(items, bs=16, shuffle=True, seed=5)
    a, b = dl.shard(0, 4), dl.shard(1, 4)
    assert a.seed == b.seed == 5
    first = [torch.cat([x, y]) for x, y in zip(a, b)]  # rank 0's and 1's blocks of each batch
    seen = torch.cat([torch.cat(list(dl.shard(r, 4, seed=5))) for r in range(4)])
    assert sorted(seen.tolist()) == items  # disjoint, and together the whole epoch
    second = [torch.cat([x, y]) for x, y in zip(a, b)]
    assert not all(torch.equal(u, v) for u, v in zip(first, second))  # a new order each epoch
    a.one_batch()  # a look at a batch is no epoch
    c = dl.shard(0, 4)
    c.set_epoch(2)
    assert [t.tolist() for t in a] == [t.tolist() for t in c]


def test_map_style_last_batch_smaller_than_the_processes_is_skipped_with_a_warning():
    with pytest.warns(UserWarning, match="the last batch has 1 item"):
        shard = DataLoader(list(range(17)), bs=4).shard(0, 2)
    assert len(shard) == 4 and sum(len(b) for b in shard) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DataLoader(list(range(17)), bs=4, drop_last=True).shard(0, 2)  # nothing of that batch to skip
    with pytest.raises(UserError, match="bs=5 is not divisible by the 2 processes"):
        DataLoader(list(range(17)), bs=5).shard(0, 2)


def test_outside_a_process_group_everything_is_one_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert (rank_distrib(), num_distrib(), is_rank0(), is_distributed()) == (0, 1, True, False)
    assert setup_distrib() is False
    teardown_distrib()
    barrier()
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert broadcast_int(7) == 7 and all_gather_cat(t) is t
    assert rank0_first(lambda x: x + 1, 1) == 2
    dl = LMDataLoader(torch.arange(300), bs=4, seq_len=5, seed=9)
    assert shard_loader(dl).world_size == 1
    agree_on_seeds([dl])
    assert dl.seed == 9
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (rank_distrib(), num_distrib(), is_rank0()) == (3, 4, False)


def test_setup_distrib_names_what_is_missing_and_the_unavailable_backend(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(UserError, match="MASTER_ADDR, MASTER_PORT, RANK are not set; start the processes with torchrun"):
        setup_distrib()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("RANK", "0")
    if not torch.distributed.is_backend_available("nccl"):
        with pytest.raises(UserError, match="backend 'nccl' is not available"):
            setup_distrib(backend="nccl")
    with pytest.raises(UserError, match="backend 'mpi-nonexistent' is not available"):
        setup_distrib(backend="mpi-nonexistent")


def test_shard_loader_refuses_a_loader_it_cannot_shard():
    with pytest.raises(UserError, match="shards rnnkit's DataLoader and LMDataLoader, got a DataLoader"):
        shard_loader(torch.utils.data.DataLoader(list(range(4))), 0, 2)


def test_metric_sync_is_a_no_op_in_one_process():
    learn = synth_learner()
    m, acc = AvgLoss(), AccumMetric(accuracy, flatten=False)
    learn.loss, learn.yb, learn.pred = torch.tensor(2.0), (torch.zeros(4, dtype=torch.long),), torch.zeros(4, 3)
    m.accumulate(learn)
    acc.accumulate(learn)
    m.sync()
    acc.sync()
    assert (float(m.value), m.count, float(acc.value)) == (2.0, 4, 1.0)


def test_distrib_ctx_in_one_process_trains_as_usual_and_leaves_nothing_behind():
    learn = synth_learner()
    n_cbs = len(learn.cbs)
    with learn.distrib_ctx(sync_bn=True) as same:
        assert same is learn and isinstance(learn.cbs[-1], DistributedTrainer)
        learn.fit(1)
        assert not learn.get_cb(DistributedTrainer).wrapped
    assert len(learn.cbs) == n_cbs and isinstance(learn.model, torch.nn.Module)
