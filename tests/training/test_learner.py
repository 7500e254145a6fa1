"""Learner: validate, get_preds, save/load, schedules, lr_find, loss functions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from rnnkit.data.core import DataLoaders
from rnnkit.losses import CrossEntropyLossFlat
from rnnkit.metrics import accuracy
from rnnkit.schedules import minimum
from rnnkit.optim.recipes import SGD, Adam
from rnnkit.training.callback import Callback
from conftest import make_classification


def test_fit_reduces_loss(make_learner):
    learn = make_learner(metrics=accuracy, lr=0.1)
    before = learn.validate()[0]
    learn.fit(5)
    after = learn.validate()
    assert after[0] < before * 0.8
    assert 0.0 <= after[1] <= 1.0


def test_validate_metrics_are_exact_over_uneven_batches(make_learner):
    # 20 validation items in batches of 16 and 4: averages must weight by batch size.
    learn = make_learner(metrics=accuracy)
    loss, acc = learn.validate()
    xs = torch.stack([x for x, _ in learn.dls.valid_ds])
    ys = torch.stack([y for _, y in learn.dls.valid_ds])
    with torch.no_grad():
        out = learn.model(xs)
    assert loss == pytest.approx(F.cross_entropy(out, ys).item(), rel=1e-5)
    assert acc == pytest.approx((out.argmax(1) == ys).float().mean().item(), rel=1e-6)


def test_get_preds_in_dataset_order_even_when_shuffled(make_learner):
    learn = make_learner(loss_func=CrossEntropyLossFlat())
    preds, targs = learn.get_preds(ds_idx=0)  # the train loader shuffles
    xs = torch.stack([x for x, _ in learn.dls.train_ds])
    with torch.no_grad():
        expected = F.softmax(learn.model(xs), dim=-1)
    assert torch.allclose(preds, expected, atol=1e-6)
    assert torch.equal(targs, torch.stack([y for _, y in learn.dls.train_ds]))
    inp, p, t, dec, losses = learn.get_preds(with_input=True, with_decoded=True, with_loss=True)
    assert inp.shape == (20, 4) and losses.shape == (20,) and torch.equal(dec, p.argmax(-1))


def test_save_load_round_trip_with_optimizer(make_learner, tmp_path):
    learn = make_learner()
    learn.fit(1)
    path = learn.save("m")
    assert path == tmp_path / "models" / "m.pth"
    raw = torch.load(path, weights_only=True)  # only tensors and plain values inside
    assert set(raw) == {"model", "opt"}
    other = make_learner()
    other.load("m")
    assert torch.equal(other.model.weight, learn.model.weight)
    p = learn.model.weight
    assert torch.equal(other.opt.state[other.model.weight]["grad_avg"], learn.opt.state[p]["grad_avg"])


def test_load_errors_are_clear(make_learner, tmp_path):
    learn = make_learner()
    with pytest.raises(FileNotFoundError, match="No saved model"):
        learn.load("nothing")
    learn.save("m")
    wrong = make_learner(model=nn.Linear(4, 5))
    with pytest.raises(ValueError, match="does not match this model"):
        wrong.load("m")
    (tmp_path / "models" / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        learn.load("bad")


def test_failed_save_keeps_previous_file(make_learner, monkeypatch):
    learn = make_learner()
    path = learn.save("m")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        learn.save("m")
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["m.pth"]  # no temp file left


def test_fit_one_cycle_lr_and_mom_at_start_peak_end(make_learner):
    learn = make_learner()
    learn.fit_one_cycle(4, lr_max=1e-2, pct_start=0.25)
    lrs, moms = learn.recorder.lrs, learn.recorder.moms
    n = len(lrs)
    assert n == 16
    assert lrs[0] == pytest.approx(1e-2 / 25)
    assert max(lrs) == pytest.approx(1e-2, rel=0.05) and int(np.argmax(lrs)) in (3, 4)
    assert lrs[-1] < 1e-2 / 25 and lrs[-1] == pytest.approx(1e-2 / 1e5, abs=2e-4)
    assert moms[0] == pytest.approx(0.95) and min(moms) == pytest.approx(0.85, abs=0.01)
    assert learn.recorder.hps["lr"][0] == pytest.approx(1e-2 / 25)


def test_fit_one_cycle_spreads_slice_over_groups(make_learner):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    learn = make_learner(model=model, splitter=lambda m: [list(m[0].parameters()), list(m[1].parameters())])
    learn.fit_one_cycle(1, slice(1e-4, 1e-2))
    first = learn.recorder.hps["lr"][0]
    assert first[0] == pytest.approx(1e-4 / 25) and first[1] == pytest.approx(1e-2 / 25)


def test_fit_flat_cos_and_sgdr_schedules(make_learner):
    learn = make_learner()
    learn.fit_flat_cos(4, lr=1e-2)
    lrs = learn.recorder.lrs
    assert lrs[0] == pytest.approx(1e-2) and lrs[11] == pytest.approx(1e-2) and lrs[-1] < 2e-3
    learn.fit_sgdr(2, 1, lr_max=1e-2)  # epochs: 1 + 2
    lrs = learn.recorder.lrs
    assert len(lrs) == 12 and lrs[0] == pytest.approx(1e-2) and lrs[4] == pytest.approx(1e-2)


def test_lr_find_restores_model_and_optimizer(make_learner):
    learn = make_learner(opt_func=SGD)
    learn.fit(1, lr=0.01)
    w = learn.model.weight.detach().clone()
    opt_state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in learn.opt.hypers[0].items()}
    res = learn.lr_find(num_it=20, show_plot=False)
    assert torch.equal(learn.model.weight, w)
    assert learn.opt.hypers[0] == opt_state
    assert 1e-7 <= res.valley <= 10
    def half(lrs, losses, num_it):
        return 0.5

    res2 = learn.lr_find(num_it=20, show_plot=False, suggest_funcs=(half, minimum))
    assert res2.half == 0.5 and 1e-8 <= res2.minimum <= 1


def test_plain_loss_function_and_lm_shaped_output(tmp_path):
    from rnnkit.training.learner import Learner

    seqs = [(torch.randint(0, 5, (6,)), torch.randint(0, 5, (6,))) for _ in range(32)]
    dls = DataLoaders.from_dsets(seqs[:24], seqs[24:], bs=8)
    model = nn.Sequential(nn.Embedding(5, 8), nn.Linear(8, 5))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, path=tmp_path)
    learn.fit(1)
    loss, acc = learn.validate()
    assert math.isfinite(loss) and 0 <= acc <= 1


def test_bad_arguments_raise_clear_errors(make_learner, tiny_dls):
    from rnnkit.training.learner import Learner

    with pytest.raises(ValueError, match="needs a loss function"):
        Learner(tiny_dls, nn.Linear(4, 3))
    with pytest.raises(ValueError, match="lr must be >= 0"):
        make_learner().fit(1, lr=-1)
    with pytest.raises(TypeError, match="Callback instances or classes"):
        make_learner(cbs=[object()])


def test_wd_not_applied_to_biases_by_default(make_learner):
    learn = make_learner(opt_func=SGD, wd=0.5)
    learn.create_opt()
    assert learn.opt.state[learn.model.bias]["do_wd"] is False
    assert learn.opt.state[learn.model.weight].get("do_wd", True) is True


def test_torch_optimizer_through_wrapper(make_learner):
    from functools import partial

    from rnnkit.optim import OptimWrapper

    learn = make_learner(opt_func=partial(OptimWrapper, opt=torch.optim.AdamW), lr=0.05)
    before = learn.validate()[0]
    learn.fit_one_cycle(3)
    assert learn.validate()[0] < before
    assert learn.opt.hypers[0]["mom"] == pytest.approx(0.95, abs=0.01)


class _GradsAfterStep(Callback):
    """Records, after each training batch, each parameter's gradient: None, or whether it is all zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[bool | None]] = []

    def after_batch(self) -> None:
        if self.training:
            self.seen.append([None if p.grad is None else bool((p.grad == 0).all())
                              for p in self.learn.model.parameters()])


def test_gradients_are_zeroed_in_place_after_each_step_as_in_fastai(make_learner):
    # A callback reading p.grad in after_batch finds a zero tensor, as on fastai.
    rec = _GradsAfterStep()
    learn = make_learner(cbs=rec, lr=0.1)
    before = learn.validate()[0]
    learn.fit(2)
    assert rec.seen and all(all(z is True for z in s) for s in rec.seen)
    assert learn.validate()[0] < before


def test_gradients_are_dropped_after_each_step_when_asked(make_learner):
    # torch.optim's default, for speed: the next backward writes fresh gradient buffers instead of
    # adding into zeroed ones; training is unchanged.
    rec, plain = _GradsAfterStep(), make_learner(lr=0.1)
    learn = make_learner(cbs=rec, lr=0.1)
    learn.model.load_state_dict(plain.model.state_dict())
    learn.drop_grads = True
    torch.manual_seed(0)
    learn.fit(2)
    torch.manual_seed(0)
    plain.fit(2)
    assert rec.seen and all(all(z is None for z in s) for s in rec.seen)
    for a, b in zip(learn.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(a, b)


def test_optimizer_whose_zero_grad_takes_no_arguments(make_learner):
    # A user's own optimizer (like the Training Process chapter's) has `zero_grad(self)`: it is called as is.
    class BasicOptim:
        def __init__(self, params, lr):
            self.params, self.hypers, self.zeroed = [p for g in params for p in g], [{"lr": lr}], 0

        def set_hypers(self, **kwargs):
            self.hypers[0].update(kwargs)

        def step(self):
            for p in self.params:
                p.data -= p.grad * self.hypers[0]["lr"]

        def zero_grad(self):
            self.zeroed += 1
            for p in self.params:
                p.grad = None

    rec = _GradsAfterStep()
    learn = make_learner(opt_func=BasicOptim, cbs=rec, lr=0.1, splitter=lambda m: [list(m.parameters())])
    learn.drop_grads = True  # asked for, but this zero_grad takes no set_to_none
    before = learn.validate()[0]
    learn.fit(1)
    assert learn.opt.zeroed == len(rec.seen) == len(learn.dls.train)
    assert learn.validate()[0] < before
