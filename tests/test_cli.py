"""The `rnnkit` command, run as a user runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RNNKIT = [sys.executable, "-m", "rnnkit.cli"]


def _run(*args, cwd, env_extra=None):
    env = {**os.environ, "RNNKIT_HOME": str(cwd / "home"), **(env_extra or {})}
    return subprocess.run(RNNKIT + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_train_one_epoch_saves_model_and_prints_table(tmp_path):
    r = _run("train", "--epochs", "1", "--out", "run", cwd=tmp_path, env_extra={"RNNKIT_NO_PROGRESS": "0"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert lines[-1] == f"Saved the model to {Path('run') / 'model.pth'}"
    assert (tmp_path / "run" / "model.pth").exists()


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    r = _run("train", "--lr", "-1", cwd=tmp_path)
    assert r.returncode == 2 and "must be positive" in r.stderr and "Traceback" not in r.stderr
    r = _run("train", "--bs", "100000", "--epochs", "1", cwd=tmp_path)
    assert r.returncode == 2 and "larger than the data" in r.stderr and "Traceback" not in r.stderr
