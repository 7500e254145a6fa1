"""Built-in callbacks: NaN guard, clipping, CSV, trackers, mixed precision, progress, recorder."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from rnnkit.callbacks.clip import GradientClip
from rnnkit.callbacks.csv_logger import CSVLogger
from rnnkit.callbacks.fp16 import MixedPrecision
from rnnkit.callbacks.progress import ProgressCallback
from rnnkit.callbacks.rnn import ModelReseter, ModelResetter
from rnnkit.callbacks.tracker import EarlyStoppingCallback, SaveModelCallback, TerminateOnNaNCallback
from rnnkit.metrics import accuracy
from rnnkit.training.callback import Callback


class NaNAt(Callback):
    order = -20

    def __init__(self, at):
        super().__init__()
        self.at = at

    def after_loss(self):
        if self.learn.train_iter == self.at:
            self.learn.loss = torch.tensor(float("nan"))


def test_terminate_on_nan_stops_fit(make_learner):
    learn = make_learner(cbs=[TerminateOnNaNCallback(), NaNAt(2)])
    with pytest.warns(RuntimeWarning, match="training stopped"):
        learn.fit(3)
    assert learn.train_iter == 3 and learn.epoch == 0
    assert len(learn.recorder.values) == 0


def test_gradient_clip_bounds_the_gradient_norm(make_learner):
    norms = []

    class Measure(Callback):
        order = GradientClip.order + 1

        def before_step(self):
            norms.append(torch.cat([p.grad.flatten() for p in self.model.parameters()]).norm().item())

    learn = make_learner(cbs=[GradientClip(0.01), Measure()], lr=1.0)
    learn.fit(1)
    assert max(norms) <= 0.01 + 1e-6
    with pytest.raises(ValueError, match="max_norm must be positive"):
        GradientClip(0)


def test_csv_logger_writes_one_row_per_epoch(make_learner, tmp_path):
    learn = make_learner(metrics=accuracy, cbs=CSVLogger())
    learn.fit(2)
    rows = learn.csv_logger.read_log()
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert set(rows[0]) == {"epoch", "train_loss", "valid_loss", "accuracy", "time"}
    assert float(rows[1]["valid_loss"]) == pytest.approx(learn.recorder.values[1][1], rel=1e-5)


def test_csv_logger_writes_no_row_for_a_skipped_epoch(make_learner):
    learn = make_learner(metrics=accuracy, cbs=CSVLogger())
    learn.fit(3, start_epoch=2)  # as a resume skips the epochs already done
    assert [r["epoch"] for r in learn.csv_logger.read_log()] == ["2"]


def test_early_stopping_stops_and_says_when(make_learner, capsys):
    # lr so small the loss cannot improve by min_delta: stops after `patience` epochs.
    learn = make_learner(lr=1e-9, cbs=EarlyStoppingCallback(min_delta=1.0, patience=2))
    learn.fit(10)
    assert len(learn.recorder.values) == 3
    assert "No improvement since epoch 0: early stopping" in capsys.readouterr().out


def test_tracker_rejects_unknown_monitor(make_learner):
    learn = make_learner(cbs=EarlyStoppingCallback(monitor="acuracy"))
    with pytest.raises(ValueError, match="'acuracy', which is not recorded"):
        learn.fit(1)


def test_save_model_keeps_best_and_loads_it_at_end(make_learner, tmp_path):
    learn = make_learner(lr=0.1, metrics=accuracy, cbs=SaveModelCallback(fname="best"))
    learn.fit(3)
    assert (tmp_path / "models" / "best.pth").exists()
    best = min(v[1] for v in learn.recorder.values)
    assert learn.validate()[0] == pytest.approx(best, rel=1e-5)
    learn2 = make_learner(cbs=SaveModelCallback(every_epoch=True, fname="e"))
    learn2.fit(2)
    assert (tmp_path / "models" / "e_0.pth").exists() and (tmp_path / "models" / "e_1.pth").exists()


class _OutputDtypes(Callback):
    """The dtype the model's output has inside each batch, after MixedPrecision entered autocast."""

    order = MixedPrecision.order + 1

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def before_batch(self):
        self.dtypes.append(self.model(self.x).dtype)


@pytest.fixture
def native_lowp(monkeypatch):
    """Make MixedPrecision treat this CPU as computing bf16/fp16 natively (or not): a Linear model runs
    under CPU autocast on any CPU, so both branches are tested whatever this machine has."""
    def _set(native):
        monkeypatch.setattr("rnnkit.utils.cpu_computes_natively", lambda dtype: native)
    return _set


_CPU_SCALER = pytest.mark.skipif(not hasattr(torch.amp, "GradScaler"),
                                 reason="a CPU GradScaler (torch.amp.GradScaler) came in PyTorch 2.3")


@pytest.mark.parametrize("meth", [pytest.param("to_fp16", marks=_CPU_SCALER), "to_bf16"])
def test_mixed_precision_trains_on_cpu(make_learner, meth, native_lowp):
    native_lowp(True)
    probe = _OutputDtypes()
    learn = getattr(make_learner(lr=0.1, cbs=probe), meth)()
    before = learn.validate()[0]
    learn.fit(3)
    assert learn.validate()[0] < before
    assert learn.model.weight.dtype == torch.float32  # master weights stay fp32
    expected = torch.float16 if meth == "to_fp16" else torch.bfloat16
    assert set(probe.dtypes) == {expected}
    learn.to_fp32()
    assert learn.get_cb(MixedPrecision) is None


@pytest.mark.parametrize("meth", ["to_fp16", "to_bf16"])
def test_mixed_precision_warns_and_trains_in_fp32_on_a_cpu_without_that_dtype(make_learner, meth, native_lowp):
    native_lowp(False)
    probe = _OutputDtypes()
    learn = getattr(make_learner(lr=0.1, cbs=probe), meth)()
    with pytest.warns(RuntimeWarning, match="trains in float32"):
        before = learn.validate()[0]
        learn.fit(2)
    assert learn.validate()[0] < before
    assert set(probe.dtypes) == {torch.float32}
    assert not learn.mixed_precision.enabled and learn.mixed_precision.scaler is None


def test_bf16_lstm_learner_trains_on_this_cpu(make_learner):
    """On this machine, for real: a plain nn.LSTM under to_bf16() trains, in bf16 where the CPU has it
    (AVX-512) and in float32 after a warning where it has not (oneDNN's LSTM would fail there)."""
    from rnnkit.utils import cpu_computes_natively

    class LSTMNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.rnn(x.unsqueeze(1))[0][:, -1])

    learn = make_learner(model=LSTMNet(), lr=0.05).to_bf16()
    native = cpu_computes_natively(torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = learn.validate()[0]
        learn.fit(2)
    assert learn.validate()[0] < before
    assert learn.mixed_precision.enabled == native
    assert any("trains in float32" in str(w.message) for w in caught) == (not native)


def test_fp16_without_a_grad_scaler_for_the_device_warns_and_trains_in_fp32(make_learner, native_lowp,
                                                                             monkeypatch):
    native_lowp(True)
    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)  # as on PyTorch < 2.3
    learn = make_learner(lr=0.1).to_fp16()
    with pytest.warns(RuntimeWarning, match="has no GradScaler for cpu"):
        learn.fit(1)
    assert learn.mixed_precision.scaler is None and not learn.mixed_precision.enabled


@_CPU_SCALER
def test_fp16_skips_step_when_gradients_overflow(make_learner, native_lowp):
    native_lowp(True)
    learn = make_learner().to_fp16()

    class Overflow(Callback):
        order = MixedPrecision.order - 1

        def before_step(self):
            self.model.weight.grad.fill_(float("inf"))

    learn.add_cb(Overflow())
    w0 = learn.model.weight.detach().clone()
    learn.fit(1)
    assert torch.equal(learn.model.weight, w0)
    assert learn.mixed_precision.scaler.get_scale() < 2.0 ** 16


def test_progress_table_prints_book_columns(make_learner, capsys, monkeypatch):
    monkeypatch.delenv("RNNKIT_NO_PROGRESS")  # tests run silent by default
    learn = make_learner(metrics=accuracy)
    learn.remove_cb(ProgressCallback)
    learn.add_cb(ProgressCallback(show_bar=False))
    learn.fit(2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert len(lines) == 3 and lines[2].split()[0] == "1"
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    assert capsys.readouterr().out == ""
    learn.fit(1)  # without a ProgressCallback in the way, rows go to `learn.logger` as they are
    with learn.no_bar():
        learn.fit(1)
    assert capsys.readouterr().out.splitlines()[-1].startswith("[0, ")


def test_recorder_values_lrs_and_plots(make_learner):
    learn = make_learner(metrics=accuracy)
    learn.fit_one_cycle(2, 1e-2)
    rec = learn.recorder
    assert rec.metric_names == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert len(rec.values) == 2 and len(rec.values[0]) == 3
    assert len(rec.lrs) == len(rec.moms) == len(rec.losses) == 8
    assert rec.values[1][0] == pytest.approx(float(rec.losses[-1]))  # train_loss is the smoothed loss
    assert rec.plot_loss() is not None and rec.plot_sched() is not None


def test_model_resetter_resets_at_each_phase(make_learner):
    class Stateful(nn.Linear):
        resets = 0

        def reset(self):
            type(self).resets += 1

    learn = make_learner(model=Stateful(4, 3), cbs=ModelReseter)
    assert ModelReseter is ModelResetter
    learn.fit(2)
    # TrainEvalCallback.before_fit (fastai resets any model with reset()), then ModelResetter's
    # (before_train + before_validate) * 2 + after_fit
    assert Stateful.resets == 6


def test_throughput_counts_training_targets_and_times_each_epoch(make_learner):
    from rnnkit.callbacks.throughput import Throughput

    speed = Throughput()
    learn = make_learner(cbs=speed)
    learn.fit(2)
    n = sum(y.numel() for _, y in learn.dls.train)  # validation batches are not counted
    assert speed.epoch_tokens == [n, n]
    assert len(speed.epoch_seconds) == 2 and all(s > 0 for s in speed.epoch_seconds)
    assert speed.tokens_per_s[0] == pytest.approx(n / speed.epoch_seconds[0])
