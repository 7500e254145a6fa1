"""TimeBudget / fit_one_cycle(budget=) / `rnnkit train --time-budget`: the schedule is fitted to the time
budget, training stops on time, validation is not counted, and a resume continues the budget."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from rnnkit.callbacks.budget import TimeBudget
from rnnkit.callbacks.throughput import Throughput
from rnnkit.config import ConfigError, TrainConfig
from rnnkit.data.core import DataLoaders
from rnnkit.training.learner import Learner

from tests.conftest import make_classification


def _slow_learner(tmp_path, n=512, bs=8, delay=0.004):
    """A learner whose every training step takes at least `delay` seconds (a fake, steady step time)."""

    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            if self.training:
                time.sleep(delay)
            return self.lin(x)

    dls = DataLoaders.from_dsets(make_classification(n), make_classification(64, seed=1), bs=bs)
    return Learner(dls, Slow(), loss_func=nn.functional.cross_entropy, path=tmp_path, cbs=Throughput())


def test_stops_within_5pct_of_the_budget_and_the_schedule_reaches_its_end(tmp_path):
    learn = _slow_learner(tmp_path)
    budget = 1.5
    tb = TimeBudget(budget)
    start = time.perf_counter()
    learn.fit_one_cycle(1000, 1e-2, cbs=tb)
    wall = time.perf_counter() - start
    r = tb.report()
    assert r["stopped_by"] in ("schedule end", "budget")  # the plan's end, or the clock's on a slowed machine
    assert abs(r["train_s"] - budget) <= 0.05 * budget
    # the clock of the training phases alone (Throughput), independent of the callback's own
    trained = sum(learn.get_cb(Throughput).epoch_seconds)
    assert abs(trained - budget) <= 0.05 * budget
    assert wall >= trained + r["valid_s"] * 0.5  # validation ran, and was kept out of the budget
    lrs = learn.recorder.lrs
    assert len(lrs) == r["steps"] == r["planned_steps"]
    # one cycle, fitted to the budget: warm-up to the peak, then annealed to (almost) lr_max/div_final
    peak = max(range(len(lrs)), key=lambda i: lrs[i])
    assert 0.15 < peak / len(lrs) < 0.35 and lrs[peak] == pytest.approx(1e-2, rel=1e-3)
    assert lrs[-1] < 1e-2 / 1000
    assert r["tokens"] == 8 * r["steps"]
    assert r["epochs"] == pytest.approx(r["steps"] / len(learn.dls.train))


def test_the_last_epoch_is_validated_and_logged_with_its_training_loss(tmp_path):
    learn = _slow_learner(tmp_path, n=4096)  # one epoch is longer than the budget
    learn.fit_one_cycle(5, 1e-2, cbs=(tb := TimeBudget(0.6)))
    assert tb.report()["epochs"] < 1
    assert len(learn.recorder.values) == 1
    train_loss, valid_loss = learn.recorder.values[0][:2]
    assert train_loss is not None and valid_loss is not None


def test_n_epoch_stays_an_upper_bound(tmp_path):
    learn = _slow_learner(tmp_path, delay=0.0)
    tb = TimeBudget(60)
    learn.fit_one_cycle(2, 1e-2, cbs=tb)
    r = tb.report()
    assert r["stopped_by"] == "epochs" and r["steps"] == 2 * len(learn.dls.train)
    assert r["train_s"] < 60
    plain = _slow_learner(tmp_path, delay=0.0)
    plain.fit_one_cycle(2, 1e-2)  # the schedule is the one of the two epochs, as without a budget
    assert learn.recorder.lrs == pytest.approx(plain.recorder.lrs, rel=1e-4)


def test_fit_one_cycle_and_flat_cos_take_a_budget(tmp_path):
    for fit in ("fit_one_cycle", "fit_flat_cos"):
        learn = _slow_learner(tmp_path)
        start = time.perf_counter()
        getattr(learn, fit)(1000, 1e-2, budget=1.0)
        assert time.perf_counter() - start < 1.0 * 1.05 + 2.0  # stopped: 1000 epochs would take minutes
        assert learn.recorder.lrs[-1] < 1e-2 / 20  # annealed: the last step sits in the last few % of the plan


def test_state_dict_continues_the_budget(tmp_path):
    learn = _slow_learner(tmp_path)
    tb = TimeBudget(0.6)
    learn.fit_one_cycle(1000, 1e-2, cbs=tb)
    sd = tb.state_dict()
    again = TimeBudget(0.6)
    again.load_state_dict(sd)
    assert again.report()["steps"] == tb.report()["steps"] and again.planned == tb.planned
    assert again.train_s == pytest.approx(tb.train_s)


def test_bad_budgets_are_refused():
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            TimeBudget(bad)
    with pytest.raises(ConfigError, match="time_budget"):
        TrainConfig(time_budget=0).validate()


def test_cli_time_budget_reports_what_it_used(tmp_path):
    env = dict(os.environ, RNNKIT_NO_PROGRESS="1")
    r = subprocess.run([sys.executable, "-m", "rnnkit.cli", "train", "--time-budget", "0.05", "--out",
                        str(tmp_path / "run"), "--no-sample", "--threads", "2"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("budget:"))
    assert "of 3s trained" in line and "stopped by" in line
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert rows and all(len(row.split(",")) == len(rows[0].split(",")) for row in rows)  # the last row is whole
    torch.set_num_threads(2)
