"""`export_learner` / `load_learner`: fastai's `learn.export()` workflow without pickle.

fastai pickles the whole Learner, and unpickling runs whatever code the file names. An rnnkit
export holds data only: one safetensors file (whatever its name; 'export.pkl' keeps working)::

    8 bytes     length of the header (little-endian), as in every safetensors file
    header      JSON: the tensors' names, dtypes, shapes, offsets, and "__metadata__":
                  format        "rnnkit-export"
                  version       "1"
                  config        JSON text: learner class and hyper-parameters, model architecture
                                and config, vocabulary, tokenizer settings, loss function, metric
                                names, n_inp, and the sha256 of the weights
                  config_sha256 sha256 of the config text
    data        the model's weights (tied tensors stored once)

`load_learner` checks the file's size against the header, the config against its checksum and
the weights against theirs before it builds anything (`rnnkit.export_format`), then rebuilds the
model from the registries of `rnnkit.export_registry`: only architectures rnnkit defines can be
exported, since a file never carries code. The file is written to a temporary name and renamed, so a
failed export leaves an older file whole.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rnnkit.checkpoint import model_state_for_save
from rnnkit.devices import default_device
from rnnkit.errors import MissingFileError
from rnnkit.export_format import ExportError, read_export, write_export
from rnnkit.export_registry import learner_config, rebuild_learner
from rnnkit.training.learner import Learner

__all__ = ["export_learner", "load_learner"]
__all__ += ["ExportError"]  # defined in rnnkit.export_format


def export_learner(learn: Learner, fname: str | os.PathLike = "export.pkl", pickle_module: Any = None,
                   pickle_protocol: int | None = None) -> Path:
    """Write `learn` for inference to `learn.path / fname` as one safetensors file (no pickle, whatever the name).

    Kept: the model (architecture, config, weights), `dls.vocab`, `dls.tokenizer`'s settings, the loss
    function, the metrics' names, `dls.n_inp` and the learner's hyper-parameters. Not kept, as in fastai:
    the data and the optimizer state; also dropped: callbacks other than the ones the learner class adds.

    Args:
        pickle_module, pickle_protocol: accepted so fastai calls keep working, and ignored: nothing is pickled.
    Returns: the path written. Raises ExportError (a ValueError), before touching any file, for a model,
    loss or tokenizer rnnkit cannot rebuild.
    """
    target = Path(learn.path) / fname
    if target.is_dir():
        raise ExportError(f"learn.export: {target} is a folder; pass a file name such as 'export.pkl'.")
    config = learner_config(learn)
    tensors = model_state_for_save(learn.model)  # on CPU, tied weights once
    return write_export(target, config, tensors)


def load_learner(fname: str | os.PathLike, cpu: bool = True, pickle_module: Any = None) -> Learner:
    """The learner `export_learner` wrote to `fname`, ready for `predict`/`get_preds`, the model in eval mode.

    Its `dls` holds no data, only `vocab`, `tokenizer` and `n_inp`; `learn.path` is the file's folder.
    With `cpu=False` the model goes to the default device (CUDA if available). Never unpickles:
    a pickle (fastai's export.pkl), a changed, corrupt or truncated file raises ExportError (a ValueError);
    a missing file raises MissingFileError (a FileNotFoundError).

    Args:
        pickle_module: accepted so fastai calls keep working, and ignored.
    """
    path = Path(fname)
    if not path.exists():
        raise MissingFileError(f"No exported learner at {path} (from {Path.cwd()}); check the path, or write "
                               "one with learn.export(fname), which saves to learn.path / fname.")
    if path.is_dir():
        raise ExportError(f"{path} is a folder; load_learner needs the file learn.export wrote.")
    config, tensors = read_export(path)
    try:
        return rebuild_learner(path, config, tensors, torch.device("cpu") if cpu else default_device())
    except (KeyError, TypeError, AttributeError) as e:
        raise ExportError(f"{path} has a config this rnnkit cannot rebuild ({type(e).__name__}: {e}); it may "
                          "come from a newer rnnkit: load it with the rnnkit that wrote it.") from e
