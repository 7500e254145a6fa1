"""Best weights during training (`SaveBestWeights`) and `rnnkit finetune`: the AWD-LSTM paper's fine-tuning on a
finished run folder, which keeps training's weights and history. Tiny seeded runs on Human Numbers."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rnnkit.finetune as finetune_mod
import rnnkit.run as run_mod
from rnnkit import cli
from rnnkit.callbacks.best import SaveBestWeights, read_best
from rnnkit.callbacks.checkpoint import Checkpointer
from rnnkit.callbacks.ntasgd import NTASGD, NonMonotoneStop
from rnnkit.checkpoint import latest_checkpoint, load_checkpoint, model_state_for_save
from rnnkit.config import TrainConfig
from rnnkit.finetune import finetune
from rnnkit.run import prepare_run_folder, train
from rnnkit.training.callback import Callback
from rnnkit.training.learner import Learner
from rnnkit.training.recorder import Recorder

# Small enough for a fraction of a second an epoch; with seed 42 its best validation epoch (1) is not its last (2).
TINY = dict(epochs=3, bs=32, emb_sz=16, n_hid=16, n_layers=1, threads=1)


class _Snapshots(Callback):
    """The weights after each epoch's validation, as SaveBestWeights sees them (the run's fit only)."""

    order = SaveBestWeights.order + 1

    def __init__(self) -> None:
        super().__init__()
        self.by_epoch: dict[int, dict[str, torch.Tensor]] = {}

    def after_epoch(self) -> None:
        if self.learn.get_cb(Checkpointer) is not None:
            self.by_epoch[self.learn.epoch] = {k: v.clone() for k, v in model_state_for_save(self.learn.model).items()}


class _Interrupt(Callback):
    """Act as a SIGINT at training batch `batch` of epoch `epoch` of the run's fit."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.at = (epoch, batch)

    def after_batch(self) -> None:
        ckpt = self.learn.get_cb(Checkpointer)
        if ckpt is not None and self.learn.training and (self.learn.epoch, self.learn.iter) == self.at:
            ckpt.interrupted = True


def _train(out: Path, *cbs: Callback, resume: bool = False) -> None:
    with pytest.MonkeyPatch.context() as mp:
        build = run_mod.build_learner
        mp.setattr(run_mod, "build_learner", lambda cfg, dls: build(cfg, dls).add_cbs(list(cbs)))
        if not resume:
            prepare_run_folder(out, overwrite=False)
        train(TrainConfig(out=str(out), **TINY).validate(), resume=resume, log_fn=lambda *a: None)


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()  # the runs train on one thread (config threads=1): quickest on a busy machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNNKIT_HOME", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(scope="module")
def trained(home, tmp_path_factory):
    """A finished tiny run and the weights of each of its epochs."""
    run = tmp_path_factory.mktemp("trained") / "run"
    snaps = _Snapshots()
    _train(run, snaps)
    return run, snaps.by_epoch


def test_training_writes_the_best_epochs_weights_to_best_safetensors(trained):
    run, by_epoch = trained
    losses = [float(r["valid_loss"]) for r in _rows(run)]
    best = losses.index(min(losses))
    assert best != len(losses) - 1  # the case where the best weights and the final ones differ
    record = read_best(run / "best.safetensors")
    assert record == {"monitor": "valid_loss", "value": losses[best], "epoch": best}
    assert _same(load_file(str(run / "best.safetensors")), by_epoch[best])
    assert not _same(load_file(str(run / "model.safetensors")), by_epoch[best])


def test_best_weights_survive_a_resume(trained, tmp_path):
    run, _ = trained
    part = tmp_path / "part"
    _train(part, _Interrupt(epoch=2, batch=3))  # after epoch 1, the best, and within the worse epoch 2
    state = load_checkpoint(latest_checkpoint(part / "checkpoints"))[2]
    assert state["cb:best_weights"] == {"best": read_best(run / "best.safetensors")["value"], "best_epoch": 1}
    _train(part, resume=True)
    assert read_best(part / "best.safetensors") == read_best(run / "best.safetensors")
    assert _same(load_file(str(part / "best.safetensors")), load_file(str(run / "best.safetensors")))


class _Watch(Callback):
    """The weights finetune starts from, and NTASGD's averaging when the fit ends."""

    order = -100

    def before_fit(self) -> None:
        self.start = {k: v.clone() for k, v in model_state_for_save(self.learn.model).items()}

    def after_fit(self) -> None:
        avg = self.learn.get_cb(NTASGD)
        self.averaging = (avg.triggered_at, avg.n_avg, self.learn.train_iter)


def _finetune_watched(run: Path, *extra: Callback, **kwargs):
    watch = _Watch()
    with pytest.MonkeyPatch.context() as mp:
        load = run_mod.load_run

        def load_and_watch(*a, **kw):
            cfg, learn = load(*a, **kw)
            return cfg, learn.add_cbs([watch, *extra])
        mp.setattr(finetune_mod, "load_run", load_and_watch)
        return finetune(run, log_fn=lambda *a: None, **kwargs), watch


@pytest.fixture(scope="module")
def finetuned(trained, tmp_path_factory):
    """A copy of the trained run, finetuned; what its folder held before."""
    run = tmp_path_factory.mktemp("finetuned") / "run"
    shutil.copytree(trained[0], run)
    before = {f: (run / f).read_bytes() for f in ("model.safetensors", "best.safetensors", "config.json",
                                                    "vocab.json")}
    rows = _rows(run)
    res, watch = _finetune_watched(run, epochs=10, nonmono=2)
    return run, res, watch, before, rows


def test_finetune_starts_from_the_best_weights_not_the_final_ones(finetuned):
    run, res, watch, before, rows = finetuned
    assert res["start"] == run / "best.safetensors"
    assert _same(watch.start, load_file(str(run / "best-train.safetensors")))
    assert not _same(watch.start, load_file(str(run / "model-train.safetensors")))
    losses = [float(r["valid_loss"]) for r in rows]
    assert res["start_valid_loss"] == pytest.approx(min(losses), abs=1e-6) and min(losses) != losses[-1]


def test_finetune_averages_from_the_first_step(finetuned):
    _, _, watch, _, _ = finetuned
    triggered_at, n_avg, steps = watch.averaging
    assert triggered_at == 0 and steps > 0 and n_avg == steps  # every step of the fit is in the average


def test_finetune_stops_by_the_non_monotone_rule(finetuned):
    run, res, _, _, rows = finetuned
    vals = [float(r["valid_loss"]) for r in _rows(run)[len(rows):]]
    n = 2  # the paper's test with nonmono=2: more than n checks and worse than the best before the last n
    stop = next(i for i in range(len(vals)) if i > n and vals[i] > min(vals[:i - n]))
    assert res["stopped"] == "non-monotone" and len(vals) == stop + 1 < 10


def test_non_monotone_stop_follows_the_papers_test(tiny_dls):
    scripted = [5.0, 4.0, 3.0, 3.5, 3.2, 3.6, 1.0]  # epoch 5: 3.6 > min(5, 4, 3) = 3, the best before the last 2

    class Script(Callback):
        order = Recorder.order + 1

        def after_epoch(self) -> None:
            rec = self.learn.get_cb(Recorder)
            rec.values[-1][rec.metric_names[1:].index("valid_loss")] = scripted[self.learn.epoch]

    stop = NonMonotoneStop(n=2)
    learn = Learner(tiny_dls, torch.nn.Linear(4, 3), loss_func=torch.nn.CrossEntropyLoss(), cbs=[Script(), stop])
    learn.fit(len(scripted), lr=0.01)
    assert stop.stopped_epoch == 5 and stop.history == scripted[:6] and len(learn.recorder.values) == 6
    with pytest.raises(ValueError, match="NonMonotoneStop needs n >= 1"):
        NonMonotoneStop(n=0)


def test_finetune_appends_to_the_history_and_keeps_trainings_rows(finetuned):
    run, res, _, before, rows = finetuned
    now = _rows(run)
    assert [{k: v for k, v in r.items() if k != "stage"} for r in now[:len(rows)]] == rows
    assert {r["stage"] for r in now[:len(rows)]} == {"train"}
    added = now[len(rows):]
    assert [r["epoch"] for r in added] == [str(len(rows) + i) for i in range(len(added))] == \
        [str(e) for e in range(res["first_epoch"], res["first_epoch"] + res["epochs_run"])]
    assert {r["stage"] for r in added} == {"finetune"}
    session = json.loads((run / "finetune.json").read_text())["sessions"][-1]
    assert (session["state"], session["stopped"], session["first_epoch"], session["nonmono"]) == \
        ("done", "non-monotone", len(rows), 2)
    assert session["epochs"] == 10 and session["lr"] == TrainConfig().lr  # the run's lr by default
    for f in ("config.json", "vocab.json"):
        assert (run / f).read_bytes() == before[f]
    assert json.loads((run / "rnnkit-run.json").read_text())["state"] == "done"
    assert json.loads((run / "rnnkit-run.json").read_text())["stage"] == "finetuned"


def test_finetune_keeps_trainings_weights_and_ends_with_its_best(finetuned):
    run, res, _, before, _ = finetuned
    assert (run / "model-train.safetensors").read_bytes() == before["model.safetensors"]
    assert (run / "best-train.safetensors").read_bytes() == before["best.safetensors"]
    assert (run / "model.safetensors").read_bytes() == (run / "best.safetensors").read_bytes()
    added = [float(r["valid_loss"]) for r in _rows(run) if r["stage"] == "finetune"]
    assert res["improved"] and min(added) < res["start_valid_loss"]
    record = read_best(run / "model.safetensors")
    assert record == {"monitor": "valid_loss", "value": min(added), "epoch": res["first_epoch"] + added.index(min(added)),
                      "stage": "finetune"}


def test_evaluate_reads_the_finetuned_weights(finetuned, trained, capsys, monkeypatch):
    run, res, _, _, _ = finetuned
    monkeypatch.setattr(cli, "_set_up_memory", lambda: None)
    assert cli.main(["evaluate", str(trained[0])]) == 0
    before = capsys.readouterr().out
    assert cli.main(["evaluate", str(run)]) == 0
    after = capsys.readouterr().out
    assert after.split()[2] == f"{res['metrics']['loss']:.4f}" and after != before


def test_an_interrupted_finetune_keeps_what_training_saved_and_can_run_again(trained, tmp_path, capsys,
                                                                            monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    before = {f: (run / f).read_bytes() for f in ("model.safetensors", "best.safetensors", "config.json")}
    rows = _rows(run)

    class CtrlC(Callback):
        def after_batch(self) -> None:
            if self.learn.training and self.learn.epoch == len(rows) + 1 and self.learn.iter == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _finetune_watched(run, CtrlC(), epochs=10)
    assert (run / "model-train.safetensors").read_bytes() == before["model.safetensors"]
    assert (run / "best-train.safetensors").read_bytes() == before["best.safetensors"]
    assert (run / "config.json").read_bytes() == before["config.json"]
    assert [{k: v for k, v in r.items() if k != "stage"} for r in _rows(run)[:len(rows)]] == rows
    assert (run / "model.safetensors").read_bytes() == (run / "best.safetensors").read_bytes()
    marker = json.loads((run / "rnnkit-run.json").read_text())
    assert (marker["state"], marker["stage"]) == ("done", "finetune-interrupted")
    assert json.loads((run / "finetune.json").read_text())["sessions"][-1]["state"] == "interrupted"
    monkeypatch.setattr(cli, "_set_up_memory", lambda: None)
    assert cli.main(["train", "--resume", str(run)]) == 0  # still a finished run: a resume changes nothing
    assert "already finished all its epochs" in capsys.readouterr().out
    assert cli.main(["finetune", str(run), "--epochs", "1", "--threads", "2"]) == 0  # again, from its best
    out = capsys.readouterr().out.splitlines()
    assert out[-3].startswith("finetune stopped after 1 epochs (the epoch limit)")
    assert out[-2].startswith("valid: loss ") and out[-1].startswith(f"Saved the finetuned weights to {run}")
    assert (run / "model-train.safetensors").read_bytes() == before["model.safetensors"]  # the first kept them
    sessions = json.loads((run / "finetune.json").read_text())["sessions"]
    assert [s["state"] for s in sessions] == ["interrupted", "done"] and sessions[1]["first_epoch"] == len(rows) + 1


def _mark(state):
    def edit(run: Path) -> None:
        marker = run / "rnnkit-run.json"
        marker.write_text(marker.read_text().replace('"done"', json.dumps(state)))
    return edit


@pytest.mark.parametrize("args, edit, needles", [
    (["finetune", "nowhere"], None, ["nowhere is not a run folder"]),
    (["finetune", "r"], _mark("running"), ["r is still training", "rnnkit train --resume r"]),
    (["finetune", "r"], _mark("interrupted"), ["has not finished training", "rnnkit train --resume r"]),
    (["finetune", "r"], _mark("nan"), ["NaN or infinite loss"]),
    (["finetune", "r"], lambda run: (run / "rnnkit-run.json").write_text("{oops"), ["unreadable"]),
    (["finetune", "r"], lambda run: [(run / f).unlink() for f in ("model.safetensors", "best.safetensors")],
     ["has no saved weights"]),
    (["finetune", "r", "--epochs", "0"], None, ["--epochs 0"]),
    (["finetune", "r", "--nonmono", "0"], None, ["--nonmono 0", "positive integer"]),
    (["finetune", "r", "--lr", "-1"], None, ["--lr -1.0", "positive"]),
    (["finetune", "r", "--device", "gpu"], None, ["device='gpu' must be auto, cpu, cuda, cuda:N or mps"]),
    (["finetune", "r"], lambda run: (run / "finetune.json").write_text("[1"), ["finetune.json is unreadable"]),
], ids=["not-a-run", "running", "interrupted", "nan", "bad-marker", "no-weights", "epochs-0", "nonmono-0", "lr",
        "device", "bad-finetune-json"])
def test_bad_folders_and_options_are_one_line_and_exit_2(trained, tmp_path, monkeypatch, capsys, args, edit, needles):
    shutil.copytree(trained[0], tmp_path / "r")
    if edit is not None:
        edit(tmp_path / "r")
    kept = {f.name: f.read_bytes() for f in (tmp_path / "r").glob("*.safetensors")}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_set_up_memory", lambda: None)
    assert cli.main(args) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnkit finetune: error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert {f.name: f.read_bytes() for f in (tmp_path / "r").glob("*.safetensors")} == kept
