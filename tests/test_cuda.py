"""The GPU paths, marked `cuda`: skipped on a machine without CUDA, and must pass on one.

Everything else in the suite runs on the CPU (tests/conftest.py sets RNNKIT_DEVICE=cpu); these tests put
the loaders on CUDA explicitly, so the Learner must move the model, the optimizer state, masks and
hidden states must follow, and the command line must train there.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rnnkit.callbacks.rnn import rnn_cbs
from rnnkit.data.human_numbers import human_numbers_lm_dls
from rnnkit.data.text import TextDataLoaders
from rnnkit.losses import CrossEntropyLossFlat
from rnnkit.metrics import accuracy
from rnnkit.models.awd_lstm import AWDLSTMConfig
from rnnkit.models.book import LMModel7
from rnnkit.optim.recipes import Adam
from rnnkit.text.learner import TextLearner, language_model_learner

pytestmark = pytest.mark.cuda

TINY = AWDLSTMConfig(emb_sz=16, n_hid=24, n_layers=2, output_p=0.1, hidden_p=0.1, input_p=0.1,
                     embed_p=0.02, weight_p=0.1)


def _on_cuda(module):
    return all(p.device.type == "cuda" for p in module.parameters())


def test_fit_moves_the_book_model_to_the_gpu_and_trains():
    dls, vocab = human_numbers_lm_dls(bs=64, sl=16, device="cuda")
    learn = TextLearner(dls, LMModel7(len(vocab), 64, 2, 0.4), loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    assert not _on_cuda(learn.model)
    before = learn.validate()[0]
    learn.fit_one_cycle(2, 1e-2)
    assert _on_cuda(learn.model)
    assert all(t.device.type == "cuda" for st in learn.opt.state.values() for t in st.values()
               if isinstance(t, torch.Tensor))
    assert learn.validate()[0] < before
    preds, targs = learn.get_preds()
    assert preds.device.type == "cpu" and targs.device.type == "cpu"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_awd_lstm_language_model_trains_on_the_gpu_in_each_precision(precision):
    dls = TextDataLoaders.from_corpus("human_numbers", bs=32, seq_len=16, seed=0, device="cuda")
    learn = language_model_learner(dls, config=TINY)
    if precision == "bf16":
        learn.to_bf16()
    elif precision == "fp16":
        learn.to_fp16()
    before = learn.validate()[0]
    learn.fit_one_cycle(1, 1e-2)
    assert _on_cuda(learn.model) and learn.validate()[0] < before
    if precision == "fp16":
        assert learn.mixed_precision.scaler is not None  # fp16 on CUDA scales the loss
    assert isinstance(learn.predict("one two", n_words=3, seed=0), str)


def test_the_fused_optimizer_step_on_the_gpu_matches_the_cpu():
    torch.manual_seed(0)
    ps = [torch.randn(5, 3), torch.randn(3)]
    grads = [torch.randn_like(p) for p in ps]
    results = []
    for dev in ("cpu", "cuda"):
        params = [p.clone().to(dev).requires_grad_() for p in ps]
        opt = Adam(params, lr=1e-2, wd=0.1)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.to(dev)
            opt.step()
        results.append([p.detach().cpu() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_save_and_load_put_the_weights_on_the_current_device(tmp_path):
    dls, vocab = human_numbers_lm_dls(bs=64, sl=16, device="cuda")
    learn = TextLearner(dls, LMModel7(len(vocab), 32, 2, 0.2), loss_func=CrossEntropyLossFlat(),
                        cbs=rnn_cbs(), path=tmp_path)
    learn.fit(1, 1e-2)
    learn.save("m")
    other = TextLearner(dls, LMModel7(len(vocab), 32, 2, 0.2), loss_func=CrossEntropyLossFlat(), path=tmp_path)
    other.model.cuda()
    other.load("m")
    assert _on_cuda(other.model)
    for a, b in zip(learn.model.parameters(), other.model.parameters()):
        assert torch.equal(a, b)


def test_the_command_line_trains_on_the_gpu(tmp_path):
    env = {**os.environ, "RNNKIT_DEVICE": "auto", "RNNKIT_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "rnnkit.cli", "train", "--epochs", "1", "--device", "cuda",
                        "--out", str(tmp_path / "run"), "--no-sample"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("device: cuda:")
    r = subprocess.run([sys.executable, "-m", "rnnkit.cli", "evaluate", str(tmp_path / "run"), "--device", "cuda"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
