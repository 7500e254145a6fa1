"""The rnnkit export file: how `learn.export` lays it out, and the checks `load_learner` runs before trusting it.

One safetensors file holds the learner's config (JSON text in the header's metadata, with its sha256)
and the model's weights (with their sha256 in the config). `write_export` writes it atomically;
`read_export` refuses pickles and zip archives by name, then checks the header, the file's size, the
config's checksum and the weights' before returning anything. Every refusal is an `ExportError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from rnnkit.errors import UserError
from rnnkit.files import atomic_write

__all__ = ["ExportError", "read_export", "write_export"]

_FORMAT, _VERSION = "rnnkit-export", 1
_HOW_TO_FIX = "export it again from the trained learner (learn.export(...)); never edit an export by hand"
_MAX_HEADER = 100_000_000  # safetensors' own limit on the header size
_NEVER_UNPICKLE = (
    "rnnkit never unpickles: loading a pickle runs whatever code its author put in it. To convert a "
    "fastai export, in a trusted environment with fastai: `learn = load_learner(path)` (fastai's, only "
    "if you trust the file), then `torch.save(learn.model.state_dict(), 'weights.pth')`; a plain "
    "state-dict file needs only `torch.load(path, weights_only=True)`. Then build the same model "
    "with rnnkit (e.g. language_model_learner(dls, config=...)), load the weights with "
    "`learn.model.load_state_dict(torch.load('weights.pth', weights_only=True))`, and call learn.export()."
)


class ExportError(UserError):
    """A learner that cannot be exported, or an export file that is not whole; the message says what to do."""


def _weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (independent of the file layout)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(json.dumps([k, str(t.dtype), list(t.shape)]).encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def write_export(target: str | os.PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write `config` (the learner's settings, JSON-able) and `tensors` (the weights, on the CPU) to `target`.

    The format, version and the weights' checksum join the config; the config text and its checksum go
    into the safetensors metadata. Written through a temporary file, so a failure leaves an older file whole.
    """
    config = {**config, "format": _FORMAT, "version": _VERSION,
              "weights": {"sha256": _weights_sha256(tensors), "n_tensors": len(tensors)}}
    text = json.dumps(config, ensure_ascii=False, sort_keys=True)
    metadata = {"format": _FORMAT, "version": str(_VERSION), "config": text,
                "config_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    return atomic_write(target, safetensors_bytes(tensors, metadata=metadata))


def read_export(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and the weights (on the CPU) of the export at `path`, once every check has passed."""
    config = _read_config(path)
    return config, _read_weights(path, config)


def _refuse_other_formats(path: Path, head: bytes) -> None:
    """Name the pickle and zip formats plainly instead of failing on them as corrupt safetensors."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise ExportError(f"{path} is a pickle file (pickle protocol {head[1]}; a fastai export.pkl or a "
                          f"legacy torch.save file), not an rnnkit export. {_NEVER_UNPICKLE}")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                torch_zip = any(n.endswith("data.pkl") for n in z.namelist())
        except zipfile.BadZipFile:
            torch_zip = False
        what = "a torch.save file (a zip holding a pickle; fastai's export.pkl is one)" if torch_zip else \
            "a zip archive"
        raise ExportError(f"{path} is {what}, not an rnnkit export. {_NEVER_UNPICKLE}")


def _read_config(path: Path) -> dict[str, Any]:
    """The config of the export at `path`, after checking its format, size and checksum."""
    size = path.stat().st_size
    if size == 0:
        raise ExportError(f"{path} is empty (0 bytes): the export was cut short; {_HOW_TO_FIX}.")
    with open(path, "rb") as f:
        head = f.read(9)
        _refuse_other_formats(path, head)
        n = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
        if len(head) < 9 or head[8:9] != b"{" or n > _MAX_HEADER:
            raise ExportError(f"{path} is not an rnnkit export (it starts with {head[:8]!r}, not a safetensors "
                              f"header). If it is a fastai export or any pickle: {_NEVER_UNPICKLE}")
        if 8 + n > size:
            raise ExportError(f"{path} is truncated: its header needs {8 + n} bytes but the file has {size}; "
                              f"{_HOW_TO_FIX}.")
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        meta = header.get("__metadata__") or {}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise ExportError(f"{path} is corrupt: its header is not valid safetensors JSON ({e}); "
                          f"{_HOW_TO_FIX}.") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ExportError(f"{path} is a safetensors file but not an rnnkit export (no \"format\": \"{_FORMAT}\" in "
                          "its metadata). If it holds a model's weights, build the model in code and load them "
                          "with safetensors.torch.load_file(...) and model.load_state_dict(...).")
    if meta.get("version") != str(_VERSION):
        raise ExportError(f"{path} is an rnnkit export of format version {meta.get('version')!r}; this rnnkit "
                          f"reads version {_VERSION}. Load it with the rnnkit that wrote it, or upgrade rnnkit.")
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        what = "truncated" if size < expected else f"corrupt ({size - expected} unexpected bytes at its end)"
        raise ExportError(f"{path} is {what}: its header describes {expected} bytes but the file has {size}; "
                          f"{_HOW_TO_FIX}.")
    text = meta.get("config")
    if not isinstance(text, str) or hashlib.sha256(text.encode("utf-8")).hexdigest() != meta.get("config_sha256"):
        raise ExportError(f"{path} was changed or corrupted: its config (model settings, vocabulary, tokenizer, "
                          f"loss) does not match the sha256 recorded when it was exported; {_HOW_TO_FIX}.")
    config = json.loads(text)
    if not isinstance(config, dict) or config.get("format") != _FORMAT or config.get("version") != _VERSION:
        raise ExportError(f"{path} is corrupt: its config is not an rnnkit export config; {_HOW_TO_FIX}.")
    return config


def _read_weights(path: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors' own SafetensorError and friends
        raise ExportError(f"{path} is corrupt: its weights could not be read ({e}); {_HOW_TO_FIX}.") from e
    if _weights_sha256(tensors) != config["weights"]["sha256"]:
        raise ExportError(f"{path} was changed or corrupted: its weights do not match the sha256 recorded when it "
                          f"was exported; {_HOW_TO_FIX}.")
    return tensors
