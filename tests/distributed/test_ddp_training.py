"""Two gloo processes of bs/2 rows train exactly as one process of bs rows (the per-step losses, the first
gradients with AR/TAR and clipping, the validation rows and evaluate_lm), and only rank 0 writes.

Both processes are started once for the module (`ddp_scenarios.py` runs both fits); each test compares one
thing with the same fit in this process.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import ddp_scenarios as sc
from rnnkit.data.human_numbers import human_numbers_tokens

HERE = Path(__file__).resolve().parent
RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Run ddp_scenarios.py in 2 processes; their JSON records, rank 0's tensors, stdout and the folder."""
    out = tmp_path_factory.mktemp("ddp")
    human_numbers_tokens()  # generate the data once, before two processes look for it
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1", "RNNKIT_DEVICE": "cpu", "RNNKIT_NO_PROGRESS": "0"}
    procs = [subprocess.Popen([sys.executable, str(HERE / "ddp_scenarios.py"), str(out)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=240))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for r, (p, (so, se)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {r} failed:\n{se[-4000:]}"
    recs = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {"recs": recs, "out": out, "stdout": [o[0] for o in outputs],
            "book": torch.load(out / "book.pt", weights_only=True),
            "awd": torch.load(out / "awd.pt", weights_only=True)}


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _close(a, b, rtol=RTOL):
    assert len(a) == len(b)
    torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                               rtol=rtol, atol=1e-7)


def test_both_processes_record_the_same_global_numbers(ddp):
    r0, r1 = ddp["recs"]
    assert (r0["saw_mark"], r1["saw_mark"]) == (False, True)  # rank0_first: rank 0 made it, then rank 1 ran
    for name in ("book", "awd"):
        assert r0[name]["losses"] == r1[name]["losses"]
        assert r0[name]["values"] == r1[name]["values"]
    assert r0["awd_eval"] == r1["awd_eval"]


def test_lmmodel7_two_processes_train_as_one_with_the_whole_batch(ddp, one_thread):
    learn = sc.book_learner()
    sc.fit_book(learn)
    ref, got = sc.record(learn), ddp["recs"][0]["book"]
    assert len(got["losses"]) == len(learn.dls.train) >= 20
    _close(got["losses"], ref["losses"])
    _close(got["smooth"], ref["smooth"])
    _close(got["values"][0][:3], ref["values"][0][:3])  # train_loss, valid_loss, accuracy


def test_lmmodel7_validation_row_is_the_single_process_evaluation_of_the_same_weights(ddp, one_thread):
    learn = sc.book_learner()
    learn.model.load_state_dict(ddp["book"])
    valid_loss, acc = learn.validate()
    _close(ddp["recs"][0]["book"]["values"][0][1:3], [valid_loss, acc])


def test_awd_lstm_with_ar_tar_random_bptt_and_clipping_trains_as_one_process(ddp, one_thread):
    r0 = ddp["recs"][0]
    assert r0["awd_seed_drawn"] != ddp["recs"][1]["awd_seed_drawn"]  # each process drew its own seed ...
    assert r0["awd_seed"] == ddp["recs"][1]["awd_seed"] == r0["awd_seed_drawn"]  # ... and used rank 0's
    learn = sc.awd_learner(seed=r0["awd_seed"])
    sc.fit_awd(learn)
    ref, got = sc.record(learn), r0["awd"]
    assert len(got["losses"]) >= 20
    assert sum(n > sc.CLIP for n in got["norms"]) >= 20  # clipping was at work
    _close(got["norms"], ref["norms"], rtol=1e-4)  # the norm clipped is the global gradient's
    _close(got["losses"], ref["losses"])
    _close(got["values"][0], ref["values"][0])  # train, valid loss, accuracy, perplexity, accum_accuracy
    assert len(ddp["awd"]["grads"]) == len(learn.get_cb(sc.StepLog).grads)
    for g, r in zip(ddp["awd"]["grads"], learn.get_cb(sc.StepLog).grads):  # step 0, AR and TAR included
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)


def test_awd_lstm_metrics_and_evaluate_lm_equal_one_process_on_the_same_weights(ddp, one_thread):
    r0 = ddp["recs"][0]
    learn = sc.awd_learner(seed=r0["awd_seed"])
    learn.model.load_state_dict(ddp["awd"]["weights"])
    valid_loss, acc, ppl, accum_acc = learn.validate()
    _close(r0["awd"]["values"][0][1:], [valid_loss, acc, ppl, accum_acc])
    ev, got = learn.evaluate_lm(), r0["awd_eval"]
    assert got["tokens"] == ev["tokens"]
    _close([got["loss"], got["perplexity"], got["accuracy"]], [ev["loss"], ev["perplexity"], ev["accuracy"]])


def test_during_fit_the_wrapper_forwards_attributes_indexing_and_state_to_the_model(ddp):
    for rec in ddp["recs"]:
        assert rec["book_wrapper"] == {"plain_keys": True, "hidden": True}
        assert rec["awd_wrapper"] == {"plain_keys": True, "index": True}


def test_after_fit_or_an_exception_the_model_and_loaders_are_plain_again(ddp):
    for rec in ddp["recs"]:
        assert rec["book_plain_after_fit"] and rec["awd_plain_after_fit"]
        assert rec["book_error"] and rec["book_plain_after_error"]  # distrib_ctx restores after an exception
    assert not isinstance(sc.book_learner().model, DistributedDataParallel)


def test_only_rank_0_prints_and_writes_the_csv(ddp):
    out0, out1 = ddp["stdout"]
    assert "valid_loss" in out0 and "accuracy" in out0
    assert out1 == ""
    assert (ddp["out"] / "history_rank0.csv").exists()
    assert not (ddp["out"] / "history_rank1.csv").exists()
