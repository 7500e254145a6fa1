"""The `rnnkit` command, run as a user runs it (subprocesses), including interrupt and resume; and, in this
process, which failures are the user's (one line, exit 2) and which are bugs (a traceback, exit 1)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnkit import cli

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


# ---- user mistakes against bugs, in this process (fast: most fail before any training) ----

@pytest.fixture
def rnnkit_here(tmp_path, monkeypatch, capsys):
    """`rnnkit ARGS` run by `cli.main` in this process, in `tmp_path`; returns (exit status, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RNNKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(cli, "_set_up_memory", lambda: None)  # malloc settings are process-wide: not pytest's

    def run(*args):
        rc = cli.main(list(args))
        return rc, capsys.readouterr().err
    return run


def _folder(tmp_path, name, **files):
    (tmp_path / name).mkdir()
    for f, text in files.items():
        (tmp_path / name / f.replace("_", ".")).write_bytes(text if isinstance(text, bytes) else text.encode())


def _copy_run(tmp_path, trained, state="interrupted", **edits):
    """A copy of the trained run in tmp_path/r, its marker in `state` (a finished run is not resumed),
    with file `name` passed through `edits[name]` (dots written as underscores)."""
    shutil.copytree(trained(), tmp_path / "r")
    marker = tmp_path / "r" / "rnnkit-run.json"
    marker.write_text(marker.read_text().replace('"done"', json.dumps(state)))
    for name, edit in edits.items():
        f = tmp_path / "r" / name.replace("_json", ".json")
        f.write_text(edit(f.read_text()))


def _the_run(tmp_path, trained):
    shutil.copytree(trained(), tmp_path / "run")


# Each case: the command, what to set up in tmp_path (None, or a function of tmp_path and a function that
# returns the module's trained run folder), and words the one-line message must hold.
USER_MISTAKES = [
    pytest.param(["train", "--corpus", "ptb", "--data", "nowhere"], None, ["corpus folder nowhere does not exist"],
                 id="missing-data-folder"),
    pytest.param(["train", "--corpus", "ptb", "--data", "d/train.txt"], lambda t, r: _folder(t, "d", train_txt="a\n"),
                 ["d/train.txt is a file; give the folder"], id="data-is-a-file"),
    pytest.param(["train", "--corpus", "wikitext-2", "--data", "d"], lambda t, r: _folder(t, "d"),
                 ["has no training file", "wiki.train.tokens"], id="missing-corpus-file"),
    pytest.param(["train", "--corpus", "folder", "--data", "d"], lambda t, r: _folder(t, "d", train_txt="a b\n"),
                 ["has no valid file", "valid.txt"], id="missing-valid-file"),
    pytest.param(["train", "--corpus", "human_numbers", "--data", "nowhere"], None,
                 ["nowhere/train.txt is missing"], id="missing-human-numbers-file"),
    pytest.param(["train", "--corpus", "folder", "--data", "d"],
                 lambda t, r: _folder(t, "d", train_txt=" \n", valid_txt="a b\n"),
                 ["train.txt is empty or whitespace-only"], id="empty-corpus"),
    pytest.param(["train", "--corpus", "tinyshakespeare", "--data", "d"], lambda t, r: _folder(t, "d", input_txt=""),
                 ["input.txt is empty"], id="empty-tinyshakespeare"),
    pytest.param(["train", "--corpus", "folder", "--data", "d"],
                 lambda t, r: _folder(t, "d", train_txt=b"caf\xe9\n", valid_txt="a\n"),
                 ["train.txt is not UTF-8", "iconv"], id="corpus-not-utf8"),
    pytest.param(["train", "--bs", "5000", "--bptt", "70"], None, ["too few for bs=5000", "Lower bs or seq_len"],
                 id="batch-larger-than-data"),
    pytest.param(["lr-find", "--bs", "5000"], None, ["too few for bs=5000"], id="lr-find-batch-larger-than-data"),
    pytest.param(["train", "--config", "nope.toml"], None, ["config file nope.toml does not exist"],
                 id="missing-config"),
    pytest.param(["train", "--config", "c.toml"], lambda t, r: (t / "c.toml").write_text("epochs = = 3\n"),
                 ["config file c.toml could not be parsed"], id="config-does-not-parse"),
    pytest.param(["train", "--config", "c.yaml"], lambda t, r: (t / "c.yaml").write_text("epochs: [\n"),
                 ["config file c.yaml could not be parsed", "(line 2, column 1)"], id="yaml-error-of-four-lines"),
    pytest.param(["train", "--config", "."], None, ["is a folder"], id="config-is-a-folder"),
    pytest.param(["train", "--drop-mult", "5"], None, ["drop_mult=5.0 makes", "lower drop_mult"], id="drop-mult"),
    pytest.param(["train", "--seed", "-1"], None, ["seed=-1 must be >= 0"], id="negative-seed"),
    pytest.param(["train", "--device", "cuda:99"], None, ["device 'cuda:99'"], id="device-not-there"),
    pytest.param(["lr-find", "--out", "f"], lambda t, r: (t / "f").write_text("x"), ["--out f is a file"],
                 id="lr-find-out-is-a-file"),
    pytest.param(["evaluate", "d"], lambda t, r: _folder(t, "d", notes_txt="x"), ["d is not a run folder"],
                 id="not-a-run"),
    pytest.param(["train", "--resume", "run", "--overwrite"], _the_run, ["drop --overwrite"],
                 id="resume-and-overwrite"),
    pytest.param(["train", "--resume", "r"], lambda t, r: _copy_run(t, r, config_json=lambda s: "{garbage"),
                 ["r/config.json is missing or unreadable", "cannot be resumed"], id="resume-unreadable-config"),
    pytest.param(["train", "--resume", "r"], lambda t, r: _copy_run(t, r, config_json=lambda s: "[1]"),
                 ["r/config.json must hold a table of options, not list"], id="resume-config-not-a-table"),
    pytest.param(["train", "--resume", "r"],
                 lambda t, r: _copy_run(t, r, config_json=lambda s: s.replace('"bs": 32', '"bs": 0')),
                 ["bs=0 must be a positive integer"], id="resume-bad-saved-value"),
    pytest.param(["generate", "r", "one"],
                 lambda t, r: _copy_run(t, r, "done", vocab_json=lambda s: s.replace('"one",', '"one", "uno",')),
                 ["does not match this model"], id="vocab-does-not-match-weights"),
    pytest.param(["evaluate", "run", "--bs", "0"], _the_run, ["--bs 0", "at least 1"], id="evaluate-bs-0"),
    pytest.param(["generate", "run", "zzz"], _the_run, ["does not know", "'zzz'"], id="prompt-unknown-word"),
    pytest.param(["generate", "run", ""], _the_run, ["non-empty prompt"], id="empty-prompt"),
    pytest.param(["generate", "run", "one", "--n-words", "-1"], _the_run, ["--n-words -1"], id="negative-n-words"),
    pytest.param(["generate", "run", "one", "--temperature", "-1"], _the_run, ["--temperature -1.0"],
                 id="negative-temperature"),
]


@pytest.mark.parametrize("args, setup, needles", USER_MISTAKES)
def test_user_mistakes_are_one_line_and_exit_2(rnnkit_here, request, tmp_path, args, setup, needles):
    if setup is not None:
        setup(tmp_path, lambda: request.getfixturevalue("trained_run")[0] / "run")  # trains on first use only
    rc, err = rnnkit_here(*args)
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"rnnkit {args[0]}: error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_argparse_mistakes_stay_exit_2_in_one_line(rnnkit_here, capsys):
    with pytest.raises(SystemExit) as e:
        rnnkit_here("train", "--lr", "fast")
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "rnnkit train: error: argument --lr: invalid float value: 'fast' (see rnnkit train --help)"]


def _raise(exc):
    def boom(*args, **kwargs):
        raise exc
    return boom


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), ValueError("a bug"), FileNotFoundError("a bug"),
                                 KeyError("a bug"), TypeError("a bug")], ids=lambda e: type(e).__name__)
def test_an_unexpected_exception_is_a_bug_and_propagates(rnnkit_here, capsys, monkeypatch, exc):
    # Plain ValueError and FileNotFoundError too: only a UserError, raised where the input is checked, is the user's.
    import rnnkit.run

    monkeypatch.setattr(rnnkit.run, "train", _raise(exc))
    with pytest.raises(type(exc), match="a bug"):
        rnnkit_here("train", "--out", "o", "--no-sample")
    assert "error:" not in capsys.readouterr().err
    monkeypatch.setattr(rnnkit.run, "build_dls", _raise(exc))  # deep inside a command, in the data builder
    with pytest.raises(type(exc), match="a bug"):
        rnnkit_here("lr-find", "--out", "lrf")


def test_ctrl_c_outside_the_training_loop_exits_130(rnnkit_here, monkeypatch):
    import rnnkit.run

    monkeypatch.setattr(rnnkit.run, "train", _raise(KeyboardInterrupt()))
    assert rnnkit_here("train", "--out", "o") == (130, "Interrupted.\n")


def test_the_console_script_shows_a_bugs_traceback_and_exits_1(tmp_path):
    # A bug planted in `rnnkit.run.train` through sitecustomize, which Python imports before the script runs.
    (tmp_path / "sitecustomize.py").write_text(
        "import rnnkit.run\n"
        "def train(*args, **kwargs):\n"
        "    raise RuntimeError('planted bug')\n"
        "rnnkit.run.train = train\n")
    script = Path(sys.executable).parent / "rnnkit"
    cmd = [str(script)] if script.exists() else RNNKIT
    r = subprocess.run(cmd + ["train", "--out", "o", "--no-sample"], cwd=tmp_path, capture_output=True, text=True,
                       env=_env(tmp_path, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path),
                                                                                  os.environ.get("PYTHONPATH")]))),
                       timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback (most recent call last)" in r.stderr and r.stderr.rstrip().endswith("RuntimeError: planted bug")
    assert "rnnkit train: error:" not in r.stderr
