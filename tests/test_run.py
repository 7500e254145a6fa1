"""run.train in process: the run's config.json is the one home of its lr, and a resume continues exactly."""
from __future__ import annotations

import csv
import json

import pytest
import torch

import rnnkit.run as run_mod
from rnnkit.callbacks.checkpoint import Checkpointer
from rnnkit.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rnnkit.config import TrainConfig, config_from_mapping
from rnnkit.run import prepare_run_folder, train
from rnnkit.training.callback import Callback


class _InterruptAt(Callback):
    """Act as a SIGINT after training batch `n` of the fit that has a Checkpointer (not lr_find's)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def after_batch(self) -> None:
        ckpt = self.learn.get_cb(Checkpointer)
        if ckpt is not None and self.learn.training and self.learn.train_iter == self.n:
            ckpt.interrupted = True


@pytest.fixture
def interrupt_at(monkeypatch):
    """Make the next run.train stop after training batch `n`, as a SIGINT would."""
    def arm(n):
        build = run_mod.build_learner

        def build_and_interrupt(cfg, dls):
            learn = build(cfg, dls)
            learn.add_cb(_InterruptAt(n))
            return learn

        monkeypatch.setattr(run_mod, "build_learner", build_and_interrupt)
        return lambda: monkeypatch.setattr(run_mod, "build_learner", build)
    return arm


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_HOME", str(tmp_path / "home"))


def _cfg(tmp_path, name, **kw):
    cfg = TrainConfig(epochs=2, bs=32, out=str(tmp_path / name), **kw).validate()
    prepare_run_folder(tmp_path / name, overwrite=False)
    return cfg


def _saved_cfg(run):
    return config_from_mapping(json.loads((run / "config.json").read_text()), source=str(run / "config.json"))


def _rows(run):
    return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(open(run / "metrics.csv"))]


def test_lr_find_writes_its_lr_into_config_json_and_a_resume_trains_with_it(tmp_path, interrupt_at):
    quiet = dict(log_fn=lambda *a: None)
    full = train(_cfg(tmp_path, "full", lr_find=True, schedule="flat_cos"), **quiet)
    lr = _saved_cfg(tmp_path / "full").lr
    assert lr != TrainConfig.lr and lr == full["lr"]
    lrs = full["learn"].recorder.lrs
    assert lrs[0] == lr and max(lrs) == pytest.approx(lr, rel=1e-12)  # flat at the config's lr, then annealed

    disarm = interrupt_at(5)
    part = train(_cfg(tmp_path, "part", lr_find=True, schedule="flat_cos"), **quiet)
    disarm()
    assert part["state"] == "interrupted" and _saved_cfg(tmp_path / "part").lr == lr
    _, _, trainer = load_checkpoint(latest_checkpoint(tmp_path / "part" / "checkpoints"))
    assert trainer["extra"] is None  # the lr lives in config.json only

    cfg = _saved_cfg(tmp_path / "part")
    cfg.out = str(tmp_path / "part")
    resumed = train(cfg, resume=True, **quiet)
    assert resumed["state"] == "done" and resumed["lr"] == lr
    lrs = resumed["learn"].recorder.lrs
    assert len(lrs) == len(full["learn"].recorder.lrs) - 5
    assert lrs == full["learn"].recorder.lrs[5:]  # the same schedule, from the batch the run stopped after
    assert _rows(tmp_path / "part") == _rows(tmp_path / "full")
    for k, v in full["learn"].model.state_dict().items():
        assert torch.equal(resumed["learn"].model.state_dict()[k], v), k


def test_a_checkpoint_that_carries_the_lr_in_extra_resumes_with_that_lr(tmp_path, interrupt_at):
    # Before config.json held the lr, an LR-finder run kept the lr it found only in the checkpoint's extra.
    disarm = interrupt_at(3)
    train(_cfg(tmp_path, "old", schedule="constant"), log_fn=lambda *a: None)
    disarm()
    ckdir = tmp_path / "old" / "checkpoints"
    weights, opt, trainer = load_checkpoint(latest_checkpoint(ckdir))
    trainer["extra"] = {"lr": 3e-3}
    path = save_checkpoint(ckdir, _Weights(weights), opt, trainer)
    assert latest_checkpoint(ckdir) == path

    cfg = _saved_cfg(tmp_path / "old")
    assert cfg.lr == TrainConfig.lr
    cfg.out = str(tmp_path / "old")
    res = train(cfg, resume=True, log_fn=lambda *a: None)
    assert res["lr"] == 3e-3 and _saved_cfg(tmp_path / "old").lr == 3e-3
    assert set(res["learn"].recorder.lrs) == {3e-3}


class _Weights(torch.nn.Module):
    """A module whose state dict is `weights` as they are (to write a checkpoint with edited trainer state)."""

    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def state_dict(self, *args, **kwargs):
        return dict(self.weights)


def test_a_run_folder_that_cannot_be_created_is_a_run_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(run_mod.RunError, match="cannot create the run folder"):
        prepare_run_folder(blocker / "run", overwrite=False)


def test_load_run_validates_the_saved_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / run_mod.RUN_MARKER).write_text(json.dumps({"format": "rnnkit-run", "version": 1, "state": "done"}))
    cfg = TrainConfig(out=str(run))
    (run / "config.json").write_text(json.dumps({**json.loads(cfg.to_json()), "bs": 0}))
    with pytest.raises(run_mod.UserError, match="bs=0"):
        run_mod.load_run(run)


def test_lr_find_trains_at_the_fall_suggestion(tmp_path, monkeypatch):
    import rnnkit.run as run_mod
    from rnnkit.schedules import fall

    seen = []

    def spy(lrs, losses, num_it=None):
        res = fall(lrs, losses, num_it)
        seen.append(res[0])
        return res

    spy.__name__ = "fall"
    monkeypatch.setattr(run_mod, "fall", spy)
    res = train(_cfg(tmp_path, "run", lr_find=True), log_fn=lambda *a: None)
    assert len(seen) == 1 and res["lr"] == pytest.approx(seen[0]) and _saved_cfg(tmp_path / "run").lr == res["lr"]
