"""The `rnnkit` command, run as a user runs it (subprocesses), including interrupt and resume."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

RNNKIT = [sys.executable, "-m", "rnnkit.cli"]
FAST = ["--epochs", "2", "--bs", "32", "--threads", "2"]


def _env(tmp_path, **extra):
    return {**os.environ, "RNNKIT_HOME": str(tmp_path / "home"), "RNNKIT_NO_PROGRESS": "1", **extra}


def _run(tmp_path, *args, **extra):
    return subprocess.run(RNNKIT + list(args), cwd=tmp_path, env=_env(tmp_path, **extra), capture_output=True,
                          text=True, timeout=600)


def _assert_user_error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    r = _run(tmp, "train", *FAST, "--out", "run", RNNKIT_NO_PROGRESS="0")
    assert r.returncode == 0, r.stderr
    return tmp, r


def test_train_writes_a_complete_run_folder_and_says_where(trained_run):
    tmp, r = trained_run
    lines = r.stdout.splitlines()
    assert lines[0].startswith("device: cpu (") and lines[0].endswith("precision fp32")  # RNNKIT_DEVICE=cpu
    assert lines[1].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "perplexity", "time"]
    assert lines[-1] == f"Saved the run to {Path('run')}"
    assert lines[-3].startswith("speed: ") and "tokens/s" in lines[-3]
    assert lines[-2].startswith("sample: one thousand two hundred")
    run = tmp / "run"
    for f in ("rnnkit-run.json", "config.json", "vocab.json", "model.safetensors", "metrics.csv", "loss.png",
              "lr_schedule.png", "checkpoints/LATEST"):
        assert (run / f).exists(), f
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [row["epoch"] for row in rows] == ["0", "1"]


def test_evaluate_reports_loss_perplexity_accuracy(trained_run):
    tmp, _ = trained_run
    r = _run(tmp, "evaluate", "run")
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert words[0] == "valid:" and words[1] == "loss" and words[3] == "perplexity" and words[5] == "accuracy"
    assert float(words[4]) >= 1.0


def test_generate_is_reproducible_with_a_seed(trained_run):
    tmp, _ = trained_run
    a = _run(tmp, "generate", "run", "one hundred", "--n-words", "6", "--seed", "3")
    b = _run(tmp, "generate", "run", "one hundred", "--n-words", "6", "--seed", "3")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("one hundred ") and len(a.stdout.split()) == 8


def test_lr_find_writes_plot_and_suggestions(tmp_path):
    r = _run(tmp_path, "lr-find", "--bs", "32", "--out", "lrf")
    assert r.returncode == 0, r.stderr
    assert "valley:" in r.stdout and (tmp_path / "lrf" / "lr_find.png").exists()


def test_every_command_has_help():
    for cmd in ("train", "evaluate", "generate", "lr-find"):
        r = subprocess.run(RNNKIT + [cmd, "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "usage: rnnkit" in r.stdout


def test_resuming_a_finished_run_says_so_and_changes_nothing(trained_run):
    tmp, _ = trained_run
    run = tmp / "run"
    before = {f: (run / f).read_bytes() for f in ("metrics.csv", "model.safetensors", "rnnkit-run.json")}
    r = _run(tmp, "train", "--resume", "run")
    assert r.returncode == 0, r.stderr
    assert "already finished all its epochs: nothing to resume, and nothing was changed" in r.stdout
    assert {f: (run / f).read_bytes() for f in before} == before


def test_refuses_to_overwrite_a_run_unless_asked(trained_run):
    tmp, _ = trained_run
    r = _run(tmp, "train", *FAST, "--out", "run")
    _assert_user_error(r, "holds another run", "--overwrite")
    assert (tmp / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("args, needles", [
    (["train", "--lr", "0"], ["lr=0.0 must be positive"]),
    (["train", "--lr=-1e-3"], ["must be positive"]),
    (["train", "--preset", "huge"], ["preset='huge' is not a preset"]),
    (["train", "--corpus", "ptb", "--data", "nowhere"], ["nowhere does not exist"]),
    (["train", "--bs", "5000", "--bptt", "70", "--out", "big"], ["bs"]),
    (["train", "--lr", "fast"], ["invalid float value: 'fast'"]),
    (["evaluate", "not_a_run"], ["not_a_run is not a run folder"]),
    (["generate", "not_a_run", "hi"], ["is not a run folder"]),
    (["train", "--resume", "not_a_run"], ["not a run folder"]),
    (["train", "--device", "gpu"], ["device='gpu' must be auto, cpu, cuda, cuda:N or mps"]),
    pytest.param(["train", "--device", "cuda", "--out", "nogpu"], ["no CUDA device is available", "--device cpu"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, args, needles):
    _assert_user_error(_run(tmp_path, *args), *needles)


def test_empty_corpus_and_bad_config_file(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.txt").write_text("")
    (tmp_path / "corpus" / "valid.txt").write_text("a b c\n")
    _assert_user_error(_run(tmp_path, "train", "--corpus", "folder", "--data", "corpus"), "empty")
    (tmp_path / "c.toml").write_text("epocs = 3\n")
    _assert_user_error(_run(tmp_path, "train", "--config", "c.toml"), "unknown key 'epocs'", "did you mean 'epochs'")
    (tmp_path / "c2.yaml").write_text("epochs: many\n")
    _assert_user_error(_run(tmp_path, "train", "--config", "c2.yaml"), "epochs must be int")


def test_config_file_values_with_command_line_overrides(tmp_path):
    (tmp_path / "c.toml").write_text('epochs = 1\nbs = 32\nout = "fromfile"\nseed = 7\n')
    r = _run(tmp_path, "train", "--config", "c.toml", "--seed", "8", "--no-sample")
    assert r.returncode == 0, r.stderr
    import json
    cfg = json.loads((tmp_path / "fromfile" / "config.json").read_text())
    assert (cfg["epochs"], cfg["bs"], cfg["seed"]) == (1, 32, 8)


def test_mismatched_vocabulary_and_corrupt_checkpoint_are_refused(tmp_path):
    r = _run(tmp_path, "train", "--epochs", "1", "--bs", "32", "--out", "r", "--no-sample")
    assert r.returncode == 0, r.stderr
    vocab = tmp_path / "r" / "vocab.json"
    good = vocab.read_text()
    vocab.write_text(good.replace('"one"', '"uno"'))
    _assert_user_error(_run(tmp_path, "evaluate", "r"), "vocabulary does not match")
    vocab.write_text(good)
    ck = next((tmp_path / "r" / "checkpoints").glob("ckpt-*"))
    f = ck / "model.safetensors"
    before = f.read_bytes()
    f.write_bytes(before[: len(before) // 2])
    marker = tmp_path / "r" / "rnnkit-run.json"
    marker.write_text(marker.read_text().replace('"done"', '"interrupted"'))  # a finished run is not resumed
    _assert_user_error(_run(tmp_path, "train", "--resume", "r"), "corrupt or truncated")
    (tmp_path / "r" / "model.safetensors").write_bytes(b"junk")
    _assert_user_error(_run(tmp_path, "generate", "r", "one"), "corrupt or truncated")


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    r = _run(tmp_path, "train", "--epochs", "2", "--bs", "32", "--optimizer", "sgd", "--lr", "1e6",
             "--checkpoint-every", "1", "--out", "nan", "--no-sample")
    _assert_user_error(r, "NaN or infinite", "last good checkpoint")
    from rnnkit.checkpoint import latest_checkpoint, load_checkpoint
    import torch

    weights, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "nan" / "checkpoints"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())


def _metrics(path):
    return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(open(path))]


def test_interrupted_run_resumes_with_identical_losses(tmp_path):
    args = ["train", "--epochs", "3", "--bs", "32", "--threads", "1", "--no-sample"]
    full = _run(tmp_path, *args, "--out", "full")
    assert full.returncode == 0, full.stderr
    p = subprocess.Popen(RNNKIT + args + ["--out", "part", "--checkpoint-every", "7"], cwd=tmp_path,
                         env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = tmp_path / "part" / "checkpoints" / "LATEST"
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, (out, err)
    assert "Interrupted: saved a checkpoint" in out and "rnnkit train --resume" in out
    done_before = len(_metrics(tmp_path / "part" / "metrics.csv"))
    assert done_before < 3
    # A kill between an epoch's metrics row and its checkpoint leaves a row the resumed epoch writes again.
    with open(tmp_path / "part" / "metrics.csv", "a") as f:
        f.write(f"{done_before},9,9,9,9,00:00\n")
    r = _run(tmp_path, "train", "--resume", "part")
    assert r.returncode == 0, r.stderr
    assert _metrics(tmp_path / "part" / "metrics.csv") == _metrics(tmp_path / "full" / "metrics.csv")
