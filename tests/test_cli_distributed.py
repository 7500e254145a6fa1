"""`rnnkit train --nproc N` and torchrun (issue 17), run as a user runs them: one writer, a killed process
that stops the job with one line, an exact resume; and the process options' mistakes, refused in one line
before any process starts. Two CPU processes on gloo, Human Numbers, two short epochs."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rnnkit import cli, launch
from rnnkit.checkpoint import latest_checkpoint, load_checkpoint, rng_of_rank

RNNKIT = [sys.executable, "-m", "rnnkit.cli"]
# 191 batches of 8 + 8 rows an epoch; checkpoints every 25 batches, so a kill lands inside an epoch.
TRAIN = ["train", "--epochs", "2", "--bs", "16", "--checkpoint-every", "25", "--no-sample"]


def _env(tmp_path):
    return {**os.environ, "RNNKIT_HOME": str(tmp_path / "home"), "RNNKIT_NO_PROGRESS": "1", "RNNKIT_DEVICE": "cpu"}


def _run(tmp_path, *args, cmd=RNNKIT):
    return subprocess.run(cmd + list(args), cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300, check=False)


def _metrics(path):
    return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(open(path))]


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """An uninterrupted `--nproc 2` run: the reference of the resume test."""
    tmp = tmp_path_factory.mktemp("nproc2")
    r = _run(tmp, *TRAIN, "--nproc", "2", "--out", "full")
    assert r.returncode == 0, (r.stdout, r.stderr)
    return tmp, r


def test_two_processes_write_one_run_folder_and_rank_0_alone_prints(two_process_run):
    tmp, r = two_process_run
    lines = r.stdout.splitlines()
    for start in ("device: cpu (1 threads)", "processes: 2 (backend gloo), each training on 8 of the 16 rows",
                  "valid: loss", "speed: ", "Saved the run to full"):
        assert sum(line.startswith(start) for line in lines) == 1, (start, r.stdout)
    assert r.stderr.strip() == ""
    assert sorted(p.name for p in tmp.iterdir()) == ["full", "home"]  # home: the corpus (RNNKIT_HOME)
    run = tmp / "full"
    assert sorted(p.name for p in run.iterdir()) == ["best.safetensors", "checkpoints", "config.json", "loss.png",
                                                     "lr_schedule.png",
                                                     "metrics.csv", "model.safetensors", "rnnkit-run.json",
                                                     "vocab.json"]
    assert [row["epoch"] for row in _metrics(run / "metrics.csv")] == ["0", "1"]
    assert len(list((run / "checkpoints").glob("ckpt-*"))) == 1
    _, _, state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # each process's streams, by rank
    assert "nproc" not in (run / "config.json").read_text()  # how a run was launched is not its config


def test_bad_process_options_are_one_line_and_exit_2_before_any_process_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_set_up_memory", lambda: None)
    monkeypatch.setattr(launch, "launch_local", lambda *a, **k: pytest.fail("a process was started"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    cases = [(["--nproc", "0"], "--nproc 0: the number of processes must be at least 1"),
             (["--nproc", "-2"], "--nproc -2: the number of processes must be at least 1"),
             (["--nproc", "2", "--bs", "15"], "--bs 15 is not divisible by 2 processes"),
             (["--nproc", "2", "--dist-timeout", "0"], "--dist-timeout 0.0: must be a positive number"),
             (["--nproc", "2", "--out", "taken"], "taken holds other files"),
             (["--nproc", "2", "--backend", "nccl", "--device", "cpu"], "--backend nccl: the device is not a CUDA GPU")]
    if not torch.cuda.is_available():
        cases.append((["--nproc", "2", "--device", "cuda"], "no CUDA device is available"))
    for args, needle in cases:
        assert cli.main(["train", *args]) == 2, args
        lines = _error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and lines[0].startswith("rnnkit train: error: ") and needle in lines[0], (args, lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_misspelt_backend_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--nproc", "2", "--backend", "mpi"])
    assert e.value.code == 2 and "invalid choice: 'mpi'" in capsys.readouterr().err


def _children(pid):
    """The processes whose parent is `pid` (the launcher's workers), read from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _rank_of(pid):
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.fixture(scope="module")
def killed_run(two_process_run):
    """`--nproc 2` with rank 1 killed (SIGKILL) right after the first checkpoint, inside epoch 0."""
    tmp, _ = two_process_run
    p = subprocess.Popen(RNNKIT + TRAIN + ["--nproc", "2", "--out", "part"], cwd=tmp, env=_env(tmp),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = tmp / "part" / "checkpoints" / "LATEST"
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    rank1 = [pid for pid in _children(p.pid) if _rank_of(pid) == 1]
    assert p.poll() is None and len(rank1) == 1, (p.poll(), rank1)
    os.kill(rank1[0], signal.SIGKILL)
    killed = time.time()
    out, err = p.communicate(timeout=120)
    return tmp, p.returncode, out, err, time.time() - killed, rank1[0]


def test_a_killed_process_stops_the_job_with_one_line_naming_it(killed_run):
    _, rc, out, err, seconds, pid = killed_run
    assert rc == 1, (out, err)
    assert seconds < 60  # the launcher notices at once; the survivor does not wait for its timeout
    lines = _error_lines(err)
    assert lines == [(f"rnnkit train: error: process rank 1 (pid {pid}) was killed by signal SIGKILL; the other "
                      "processes were stopped. Continue from the last checkpoint with: "
                      "rnnkit train --resume part --nproc 2")], err
    assert "Traceback" not in out + err


def test_resuming_the_killed_job_reproduces_the_uninterrupted_run(killed_run):
    tmp = killed_run[0]
    shutil.copytree(tmp / "part", tmp / "part-on-1")  # for the next test, which resumes on one process
    r = _run(tmp, "train", "--resume", "part", "--nproc", "2")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "note: resuming" not in r.stdout
    assert _metrics(tmp / "part" / "metrics.csv") == _metrics(tmp / "full" / "metrics.csv")
    full, part = _weights(tmp / "full"), _weights(tmp / "part")
    assert full.keys() == part.keys() and all(torch.equal(full[k], part[k]) for k in full)


def test_a_checkpoint_of_two_processes_resumes_on_one_with_one_note(killed_run, monkeypatch, capsys):
    tmp = killed_run[0]
    monkeypatch.chdir(tmp)
    monkeypatch.setattr(cli, "_set_up_memory", lambda: None)
    monkeypatch.setenv("RNNKIT_NO_PROGRESS", "1")
    assert cli.main(["train", "--resume", "part-on-1", "--threads", "1"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert notes == [("note: resuming a checkpoint of 2 process(es) on 1: the data order, weights and optimizer "
                      "state are the same, but each process now trains on 16 rows of every batch instead of 8, "
                      "so the random draws (dropout masks) differ from the 2-process run's and the rest of the "
                      "interrupted epoch starts from a reset hidden state; the losses will not match an "
                      "uninterrupted 2-process run exactly")]
    assert [row["epoch"] for row in _metrics(tmp / "part-on-1" / "metrics.csv")] == ["0", "1"]
    _, _, state = load_checkpoint(latest_checkpoint(tmp / "part-on-1" / "checkpoints"))
    assert "world_size" not in state and isinstance(state["rng"], dict)  # one process: the format it always had


def test_ctrl_c_saves_every_process_at_one_batch_and_the_resume_is_exact(two_process_run):
    tmp, _ = two_process_run
    p = subprocess.Popen(RNNKIT + TRAIN + ["--nproc", "2", "--out", "stopped"], cwd=tmp, env=_env(tmp),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = tmp / "stopped" / "checkpoints" / "LATEST"
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)  # what Ctrl-C sends the launcher; it passes it on to the processes
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err)
    assert "Continue with: rnnkit train --resume stopped --nproc 2" in out and err.strip() == ""
    r = _run(tmp, "train", "--resume", "stopped", "--nproc", "2")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert _metrics(tmp / "stopped" / "metrics.csv") == _metrics(tmp / "full" / "metrics.csv")


def test_a_mistake_a_process_finds_is_its_one_line_and_exit_2(tmp_path):
    r = _run(tmp_path, "train", "--corpus", "ptb", "--data", "nowhere", "--nproc", "2", "--out", "x")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert _error_lines(r.stderr) == ["rnnkit train: error: corpus folder nowhere does not exist"]


def test_torchrun_starts_the_same_training(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "rnnkit"]
    r = _run(tmp_path, "train", "--epochs", "1", "--bs", "16", "--no-sample", "--out", "tr", cmd=torchrun)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert sum(line.startswith("Saved the run to tr") for line in r.stdout.splitlines()) == 1
    assert [row["epoch"] for row in _metrics(tmp_path / "tr" / "metrics.csv")] == ["0"]


def _failure(exitcode, pid=10, message="", timestamp=100):
    import signal as sig

    return SimpleNamespace(exitcode=exitcode, pid=pid, message=message, timestamp=timestamp,
                           signal_name=lambda: sig.Signals(-exitcode).name if exitcode < 0 else "<N/A>")


def test_the_failure_line_names_the_process_that_failed_first(tmp_path):
    lost = {"message": "RuntimeError: [gloo] Connection reset by peer", "extraInfo": {}}
    line, code = launch.failure_line({0: _failure(launch.EXIT_LOST_CONTACT, message=lost), 1: _failure(-9, 11)},
                                     tmp_path, 2)
    assert code == 1 and "process rank 1 (pid 11) was killed by signal SIGKILL" in line
    assert "No checkpoint had been saved yet; start again with --overwrite" in line
    line, code = launch.failure_line({1: _failure(1, message={"message": "ValueError: boom"}, timestamp=5),
                                      0: _failure(launch.EXIT_LOST_CONTACT, message=lost, timestamp=4)}, tmp_path, 2)
    assert code == 1 and "process rank 1 (pid 10) failed with exit code 1 (ValueError: boom; its traceback" in line
    line, code = launch.failure_line({0: _failure(launch.EXIT_LOST_CONTACT, message=lost)}, tmp_path, 2)
    assert "lost contact with the other processes (RuntimeError: [gloo] Connection reset by peer)" in line
    assert launch.failure_line({0: _failure(2)}, tmp_path, 2) == ("", 2)  # it printed its own one line
    # the launcher stops the others with SIGTERM: those are never the cause
    assert launch.failure_line({0: _failure(-15), 1: _failure(2)}, tmp_path, 2) == ("", 2)
    assert launch.failure_line({0: _failure(130)}, tmp_path, 2) == ("", 130)


def test_a_process_of_a_larger_job_takes_rank_0s_streams_or_its_own():
    states = [{"torch": torch.tensor([0])}, {"torch": torch.tensor([1])}]
    assert [int(rng_of_rank(states, r)["torch"]) for r in range(3)] == [0, 1, 0]
    assert rng_of_rank(states[1], 5) is states[1]  # a one-process checkpoint's state serves every process


def test_python_dash_m_rnnkit_is_the_rnnkit_command():
    r = subprocess.run([sys.executable, "-m", "rnnkit", "train", "--help"], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0 and "--nproc N" in r.stdout and "--dist-timeout SECONDS" in r.stdout
