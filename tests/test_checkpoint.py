"""Checkpoint folders: atomic, verified, tie-aware, RNG-complete, and exact resume."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from rnnkit.callbacks.checkpoint import Checkpointer
from rnnkit.checkpoint import (
    CheckpointError, capture_rng, latest_checkpoint, load_checkpoint, load_weights, restore_checkpoint,
    restore_rng, save_checkpoint,
)
from rnnkit.data.human_numbers import human_numbers_lm_dls
from rnnkit.losses import CrossEntropyLossFlat
from rnnkit.metrics import accuracy
from rnnkit.models.book import LMModel7
from rnnkit.text.learner import TextLearner


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10)
        self.out.weight = self.emb.weight


def test_rng_capture_restores_every_stream():
    state = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_checkpoint_round_trip_keeps_weight_tying(tmp_path):
    m = Tied()
    path = save_checkpoint(tmp_path, m, {"x": torch.ones(2)}, {"epoch": 3, "rng": capture_rng()})
    assert latest_checkpoint(tmp_path) == path
    w, opt, trainer = load_checkpoint(path)
    m2 = Tied()
    load_weights(m2, w)
    assert torch.equal(m2.emb.weight, m.emb.weight) and m2.out.weight is m2.emb.weight
    assert trainer["epoch"] == 3 and torch.equal(opt["x"], torch.ones(2))


def test_only_newest_checkpoints_are_kept_and_latest_moves(tmp_path):
    m = Tied()
    first = save_checkpoint(tmp_path, m, None, {"epoch": 1})
    second = save_checkpoint(tmp_path, m, None, {"epoch": 2})
    assert latest_checkpoint(tmp_path) == second and not first.exists()


def test_corrupt_or_truncated_checkpoint_is_detected(tmp_path):
    m = Tied()
    path = save_checkpoint(tmp_path, m, None, {"epoch": 1})
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "empty")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_a_forged_pickle_with_a_matching_manifest_is_refused_in_one_line(tmp_path):
    import hashlib
    import json

    path = save_checkpoint(tmp_path, Tied(), None, {"epoch": 1})
    forged = path / "trainer.pt"
    torch.save({"epoch": 1, "payload": _RunsCode()}, forged)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["trainer.pt"] = {"bytes": forged.stat().st_size,
                              "sha256": hashlib.sha256(forged.read_bytes()).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "trainer.pt was refused" in msg and "could run code" in msg
    assert "\n" not in msg and "weights_only" not in msg  # one line, never advice to turn the check off


def test_failed_save_leaves_previous_checkpoint_whole(tmp_path, monkeypatch):
    m = Tied()
    good = save_checkpoint(tmp_path, m, None, {"epoch": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, m, None, {"epoch": 2})
    assert latest_checkpoint(tmp_path) == good
    load_checkpoint(good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", good.name]


def test_weights_of_another_vocabulary_are_refused(tmp_path):
    path = save_checkpoint(tmp_path, Tied(), None, {})
    w, _, _ = load_checkpoint(path)

    class Bigger(Tied):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(12, 4)

    with pytest.raises(CheckpointError, match=r"emb.weight: checkpoint \(10, 4\) vs model \(12, 4\)"):
        load_weights(Bigger(), w)


def _learner(path, cbs=None):
    torch.manual_seed(0)
    dls, vocab = human_numbers_lm_dls(bs=64, sl=16)
    return TextLearner(dls, LMModel7(len(vocab), 32, 2, 0.3), loss_func=CrossEntropyLossFlat(),
                       metrics=accuracy, path=path, cbs=cbs)


def test_resume_at_epoch_boundary_matches_uninterrupted_run(tmp_path):
    full = _learner(tmp_path / "a")
    full.fit_one_cycle(3, 1e-2)

    class StopAfterEpoch1(Checkpointer):
        def after_epoch(self):
            super().after_epoch()
            if self.learn.epoch == 1:
                from rnnkit.training.events import CancelFitException
                raise CancelFitException()

    part = _learner(tmp_path / "b", cbs=StopAfterEpoch1(tmp_path / "b" / "ck", handle_signals=False))
    part.fit_one_cycle(3, 1e-2)
    w, opt, trainer = load_checkpoint(latest_checkpoint(tmp_path / "b" / "ck"))
    assert trainer["epoch"] == 2

    resumed = _learner(tmp_path / "c")
    trainer = restore_checkpoint(resumed, tmp_path / "b" / "ck")
    resumed.add_cb(Checkpointer(tmp_path / "c" / "ck", resume=trainer, handle_signals=False))
    resumed.fit_one_cycle(3, 1e-2, start_epoch=trainer["epoch"])
    assert len(resumed.recorder.values) == 1  # only the last epoch ran
    assert resumed.recorder.values[-1] == full.recorder.values[-1]
