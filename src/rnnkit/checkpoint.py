"""Checkpoints that survive a kill at any moment and never unpickle code.

A run folder keeps numbered checkpoint folders and a pointer to the newest whole one::

    RUN/checkpoints/ckpt-000012/model.safetensors   weights (safetensors)
                                optimizer.pt        optimizer state (torch.load weights_only)
                                trainer.pt          position, RNG states, loader and callback state
                                manifest.json       sha256 and size of each file
    RUN/checkpoints/LATEST                          "ckpt-000012" (written last, atomically)

A new checkpoint is written to a temporary folder, renamed into place, then LATEST is
replaced: a crash at any point leaves LATEST naming a complete checkpoint. Older
checkpoints are removed only after LATEST moved on.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from rnnkit.errors import UserError
from rnnkit.utils import atomic_write

if TYPE_CHECKING:
    from rnnkit.training.learner import Learner

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "load_plain",
           "capture_rng", "restore_rng", "rng_of_rank", "model_state_for_save", "load_weights", "load_model_state",
           "restore_checkpoint", "save_model", "load_model"]

_FILES = ("model.safetensors", "optimizer.pt", "trainer.pt")


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, truncated or does not fit the model."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def capture_rng() -> dict[str, Any]:
    """The state of every random stream training uses (torch CPU/CUDA, numpy, Python), as tensors and lists."""
    np_state: Any = np.random.get_state()  # ('MT19937', keys, pos, has_gauss, cached_gaussian)
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what `capture_rng` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_of_rank(saved: dict[str, Any] | list[dict[str, Any]], rank: int) -> dict[str, Any]:
    """The RNG state process `rank` restores from a checkpoint's `rng`: the one state of a one-process
    checkpoint; in a checkpoint of several processes (a list by rank) its own, or rank 0's for a rank the
    checkpoint had no process for (a resume on more processes)."""
    if isinstance(saved, dict):
        return saved
    return saved[rank] if rank < len(saved) else saved[0]


def model_state_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with tied (shared) tensors stored once, contiguous and on CPU."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:  # weight tying: keep one copy; load_model_state restores the tie
            continue
        seen[key] = k
        out[k] = v.detach().contiguous().cpu()
    return out


def save_checkpoint(ckpt_dir: Path, model: nn.Module, opt_state: dict[str, Any] | None,
                    trainer_state: dict[str, Any], keep: int = 1) -> Path:
    """Write a new numbered checkpoint under `ckpt_dir` atomically; keep the newest `keep`."""
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in ckpt_dir.glob("ckpt-*") if p.is_dir())
    n = int(existing[-1].split("-")[1]) + 1 if existing else 1
    name = f"ckpt-{n:06d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=f".{name}."))
    try:
        save_file(model_state_for_save(model), str(tmp / "model.safetensors"))
        torch.save(opt_state if opt_state is not None else {}, tmp / "optimizer.pt")
        torch.save(trainer_state, tmp / "trainer.pt")
        manifest = {f: {"sha256": _sha256(tmp / f), "bytes": (tmp / f).stat().st_size} for f in _FILES}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, ckpt_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write(ckpt_dir / "LATEST", name + "\n")
    for old in sorted(p for p in ckpt_dir.glob("ckpt-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return ckpt_dir / name


def latest_checkpoint(ckpt_dir: Path) -> Path:
    """The checkpoint LATEST points to; CheckpointError when there is none."""
    pointer = ckpt_dir / "LATEST"
    if not pointer.is_file():
        raise CheckpointError(f"no checkpoint in {ckpt_dir} (LATEST is missing): the run saved none yet")
    path = ckpt_dir / pointer.read_text(encoding="utf-8").strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


def _load_device(map_location: Any) -> torch.device:
    """`map_location` as a device: None is the CPU, an int a CUDA index, else what `torch.device` takes."""
    if map_location is None:
        return torch.device("cpu")
    if isinstance(map_location, int) and not isinstance(map_location, bool):
        return torch.device("cuda", map_location)
    try:
        return torch.device(map_location)
    except (TypeError, RuntimeError) as e:
        kind = TypeError if isinstance(e, TypeError) else ValueError
        raise kind(f"load_checkpoint map_location must be a device such as 'cpu', 'cuda:0', "
                   f"torch.device('cuda') or a CUDA index, got {map_location!r}; pass the model's "
                   "device, e.g. next(model.parameters()).device.") from e


# Devices safetensors loads onto directly; others (e.g. `meta`) are loaded on the CPU and moved.
_SAFETENSORS_DEVICES = ("cpu", "cuda")


def load_checkpoint(path: Path, map_location: Any = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Verify a checkpoint folder against its manifest and read it: (weights, optimizer state, trainer state).

    Weights and optimizer state are loaded onto `map_location` (pass the model's device so they are not
    copied twice); the trainer state (RNG states, which must be CPU tensors, and callback state that its
    callbacks put on the model's device) always onto the CPU.
    """
    from safetensors.torch import load_file

    device = _load_device(map_location)
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has no readable manifest.json ({e}); it is incomplete") from e
    for f in _FILES:
        fp = path / f
        if not fp.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {f}")
        expected = manifest.get(f, {})
        if fp.stat().st_size != expected.get("bytes") or _sha256(fp) != expected.get("sha256"):
            raise CheckpointError(f"checkpoint file {fp} is corrupt or truncated (its checksum does not "
                                  "match manifest.json); resume from an earlier checkpoint or start over")
    try:
        direct = device.type in _SAFETENSORS_DEVICES
        weights = load_file(str(path / "model.safetensors"), device=str(device) if direct else "cpu")
        if not direct:
            weights = {k: v.to(device) for k, v in weights.items()}
        opt_state = load_plain(path / "optimizer.pt", map_location=device)
        trainer = load_plain(path / "trainer.pt", map_location="cpu")
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be read: {e}") from e
    return weights, opt_state, trainer


def load_plain(file: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load(file, weights_only=True)`: tensors and plain values only. A file holding anything else
    (a pickle that could run code when loaded) is refused in one line, and is never loaded another way."""
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message (eight lines, ending in advice to pass weights_only=False) names a global or class
        # when the pickle refers to code, and an unsupported operand when the bytes are not a pickle at all
        if re.search(r"global|Unsupported class", str(e)):
            raise CheckpointError(f"{file} was refused: it holds objects beyond tensors and plain values, which "
                                  "could run code when loaded. Use a checkpoint rnnkit wrote, or start over.") from None
        raise CheckpointError(f"{file} is corrupt or truncated, or not a file rnnkit wrote: it does not read as "
                              "tensors and plain values. Use another checkpoint, or start over.") from None


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True,
                     what: str = "checkpoint") -> None:
    """Load `state` into `model`, with an error that lists mismatched names and shapes; rnnkit's one loader
    of weights (Learner.load, run folders, checkpoints and exports all come here).

    A key left out because it was tied to another (see `model_state_for_save`) is fine. With `strict=False`
    missing and unexpected keys are ignored, as in `nn.Module.load_state_dict`. `what` names the source
    in the message, e.g. "checkpoint in runs/ptb".
    """
    own = model.state_dict()
    if strict:
        ptrs = {(v.untyped_storage().data_ptr(), v.storage_offset()) for k, v in own.items() if k in state}
        missing = [k for k in own if k not in state
                   and (own[k].untyped_storage().data_ptr(), own[k].storage_offset()) not in ptrs]
        unexpected = [k for k in state if k not in own]
        wrong = [f"{k}: {what} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in state if k in own and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            parts = ([f"missing {missing[:4]}"] if missing else []) + \
                    ([f"unexpected {unexpected[:4]}"] if unexpected else []) + wrong[:4]
            raise CheckpointError(f"the {what} does not match this model (" + "; ".join(parts) + "): it was "
                                  "saved from a model of another configuration or vocabulary. Build the model "
                                  "the way the saved one was built, or load with strict=False.")
    model.load_state_dict(state, strict=False)  # checked above; tied keys may be left out


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Load the weights of a checkpoint or run folder into `model` (`load_model_state`, strict)."""
    load_model_state(model, weights, strict=True, what=what)


def restore_checkpoint(learn: Learner, path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint's weights and optimizer state into `learn`; return its trainer state.

    `path` is a checkpoint folder (`ckpt-N`) or the folder holding them (then LATEST's). Continue the fit
    with the trainer state: the Checkpointer restores the position inside the epoch, `start_epoch` skips
    the epochs already done::

        state = restore_checkpoint(learn, "runs/x/checkpoints")
        learn.fit_one_cycle(n_epoch, lr, start_epoch=state["epoch"],
                            cbs=Checkpointer("runs/x/checkpoints", resume=state))

    Put the model on its device first: weights and optimizer state are loaded straight onto it.
    """
    path = Path(path)
    if not (path / "manifest.json").exists() and (path / "LATEST").exists():
        path = latest_checkpoint(path)
    param = next(learn.model.parameters(), None)
    weights, opt_state, trainer_state = load_checkpoint(path, map_location=param.device if param is not None
                                                        else "cpu")
    load_weights(learn.model, weights, what=f"checkpoint {path}")
    learn.create_opt()
    try:
        learn.opt.load_state_dict(opt_state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"the optimizer state in {path} does not fit this model's optimizer ({e}); "
                              "build the learner with the opt_func and splitter of the saved run") from e
    return trainer_state


# ---- Learner.save / Learner.load (fastai's save_model / load_model) --------------------------------

def save_model(file: str | Path, model: nn.Module, opt: Any, with_opt: bool = True,
               pickle_protocol: int | None = None) -> None:
    """Save `model`'s state (and `opt`'s, if `with_opt`) to `file`, atomically: tensors and plain values
    only, which `load_model` reads without unpickling code. (`pickle_protocol` is accepted for fastai's
    signature and unused.)"""
    obj: dict[str, Any] = {"model": model.state_dict()}
    if with_opt and opt is not None:
        obj["opt"] = opt.state_dict()
    atomic_write(file, lambda f: torch.save(obj, f))


def load_model(file: str | Path, model: nn.Module, opt: Any, with_opt: bool = True, device: Any = None,
               strict: bool = True) -> None:
    """Load what `save_model` wrote into `model` (and `opt`), onto `device` (an int is a CUDA index; the
    CPU by default). Only tensors and plain values are read (`torch.load(weights_only=True)`)."""
    target = Path(file)
    if isinstance(device, int):
        device = torch.device("cuda", device)
    try:
        obj = load_plain(target, map_location=device or "cpu")
    except CheckpointError:
        raise  # refused (it could run code), or unreadable: the message says which
    except Exception as e:
        raise ValueError(f"Could not read {target}: it is not a checkpoint saved by "
                         f"Learner.save, or it is corrupt or truncated ({e})") from e
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{target} does not hold a model state dict")
    load_model_state(model, state, strict=strict, what=f"saved model {target}")
    if not with_opt:
        return
    if "opt" not in obj:
        warnings.warn(f"{target} holds no optimizer state (saved with with_opt=False); the optimizer starts "
                      "afresh. Pass with_opt=False to load only the weights.", UserWarning, stacklevel=3)
    elif opt is not None:
        opt.load_state_dict(obj["opt"])
