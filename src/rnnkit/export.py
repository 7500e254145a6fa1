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
the weights against theirs before it builds anything, then rebuilds the model from the registry
below: only architectures rnnkit defines can be exported, since a file never carries code.
The file is written to a temporary name and renamed, so a failed export leaves an older file whole.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.callbacks.rnn import RNNRegularizer
from rnnkit.checkpoint import load_weights, model_state_for_save
from rnnkit.data.text import TextDataLoaders
from rnnkit.data.tokenize import (
    CharTokenizer, PreTokenizedTokenizer, SubwordTokenizer, Tokenizer, WhitespaceTokenizer, WordTokenizer,
)
from rnnkit.data.vocab import Vocab
from rnnkit.errors import UserError
from rnnkit.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat, MSELossFlat
from rnnkit.metrics import Perplexity, accuracy, error_rate
from rnnkit.models.awd_lstm import AWD_LSTM, LinearDecoder, SequentialRNN, get_language_model
from rnnkit.models.book import LMModel1, LMModel2, LMModel3, LMModel4, LMModel5, LMModel6, LMModel7
from rnnkit.optim.lookahead import ranger
from rnnkit.optim.more import QHAdam, RAdam, Lamb, Larc
from rnnkit.optim.recipes import SGD, Adam, RMSProp
from rnnkit.text.learner import LMLearner, TextLearner, awd_lstm_lm_split
from rnnkit.training.learner import Learner, trainable_params
from rnnkit.utils import atomic_write, default_device
from safetensors.torch import save as safetensors_bytes

__all__ = ["ExportError", "export_learner", "load_learner"]

_FORMAT, _VERSION = "rnnkit-export", 1
_MAX_HEADER = 100_000_000  # safetensors' own limit on the header size
_HOW_TO_FIX = "export it again from the trained learner (learn.export(...)); never edit an export by hand"
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


# ---- registries: what a config can name ------------------------------------------------------

_BOOK_MODELS: dict[str, type[nn.Module]] = {c.__name__: c for c in (
    LMModel1, LMModel2, LMModel3, LMModel4, LMModel5, LMModel6, LMModel7)}
_LOSS_CLASSES: dict[str, type] = {c.__name__: c for c in (CrossEntropyLossFlat, BCEWithLogitsLossFlat,
                                                          MSELossFlat)}
_LOSS_FUNCS: dict[str, Callable] = {f"F.{f.__name__}": f for f in (
    F.cross_entropy, F.nll_loss, F.mse_loss, F.l1_loss, F.binary_cross_entropy_with_logits)}
_METRICS: dict[str, Callable[[], Any]] = {"accuracy": lambda: accuracy, "error_rate": lambda: error_rate,
                                          "perplexity": Perplexity}
_OPT_FUNCS: dict[str, Callable] = {f.__name__: f for f in (SGD, RMSProp, Adam, RAdam, QHAdam, Lamb, Larc,
                                                           ranger)}
_SPLITTERS: dict[str, Callable] = {f.__name__: f for f in (awd_lstm_lm_split, trainable_params)}
_LEARNERS: tuple[type[Learner], ...] = (LMLearner, TextLearner, Learner)  # most specific first
_TOKENIZERS: dict[str, tuple[type, tuple[str, ...]]] = {  # name -> (class, settings kept)
    "whitespace": (WhitespaceTokenizer, ("sep",)),
    "word": (WordTokenizer, ("lower", "add_bos", "min_rep", "min_wrep")),
    "char": (CharTokenizer, ()),
    "pretokenized": (PreTokenizedTokenizer, ("eos",)),
    "subword": (SubwordTokenizer, ("vocab_sz", "model_type", "special_toks", "char_coverage", "max_vocab_sz")),
}
_SCALARS = (bool, int, float, str, type(None))


def _cannot_export(what: str, why: str, fix: str) -> ExportError:
    return ExportError(f"learn.export cannot save {what}: {why}. An export holds settings and weights, never "
                       f"code, so rnnkit must be able to rebuild everything from its own definitions. {fix}")


def _model_spec(model: nn.Module) -> dict[str, Any]:
    """The architecture name and constructor settings that rebuild `model` (checked by `_check_rebuilds`)."""
    if (type(model) is SequentialRNN and len(model) == 2 and type(model[0]) is AWD_LSTM
            and type(model[1]) is LinearDecoder):
        enc, dec = model[0], model[1]
        config = dict(emb_sz=enc.emb_sz, n_hid=enc.n_hid, n_layers=enc.n_layers, pad_token=enc.pad_token,
                      bidir=enc.bidir, output_p=dec.output_dp.p, hidden_p=enc.hidden_dps[0].p,
                      input_p=enc.input_dp.p, embed_p=enc.encoder_dp.embed_p, weight_p=enc.rnns[0].weight_p,
                      tie_weights=dec.decoder.weight is enc.encoder.weight,
                      out_bias=dec.decoder.bias is not None, init_range=enc.initrange)
        return {"arch": "AWD_LSTM", "vocab_sz": enc.vocab_sz, "config": config}
    name = type(model).__name__
    if _BOOK_MODELS.get(name) is type(model):
        emb: Any = getattr(model, "i_h")
        kwargs: dict[str, Any] = {"vocab_sz": emb.num_embeddings, "n_hidden": emb.embedding_dim}
        if isinstance(model, LMModel4):
            kwargs["sl"] = model.sl
        if isinstance(model, (LMModel5, LMModel6, LMModel7)):
            kwargs["n_layers"] = getattr(model, "n_layers")
        if isinstance(model, LMModel7):
            kwargs["p"] = model.drop.p
        return {"arch": name, "config": kwargs}
    raise _cannot_export(
        f"a model of class {type(model).__module__}.{type(model).__qualname__}",
        "it is not one of the architectures rnnkit can rebuild (AWD-LSTM language models from "
        f"language_model_learner/get_language_model, and the book's {', '.join(_BOOK_MODELS)})",
        "Save the weights with learn.save('name') instead, and in the program that loads them build the "
        "model in code and call learn.load('name').")


def _build_model(spec: dict[str, Any]) -> nn.Module:
    arch, config = spec["arch"], dict(spec["config"])
    if arch == "AWD_LSTM":
        return get_language_model(AWD_LSTM, int(spec["vocab_sz"]), config)
    if arch in _BOOK_MODELS:
        return _BOOK_MODELS[arch](**config)
    raise KeyError(f"unknown architecture {arch!r}")


def _tied_groups(model: nn.Module) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return sorted(g for g in groups.values() if len(g) > 1)


def _check_rebuilds(model: nn.Module, spec: dict[str, Any]) -> None:
    """Build `spec` on the meta device (no memory, no RNG) and refuse if it differs from `model`."""
    with torch.device("meta"):
        rebuilt = _build_model(spec)
    own, new = model.state_dict(), rebuilt.state_dict()
    problems = [f"{k}: {tuple(own[k].shape)} vs rebuilt {tuple(new[k].shape)}"
                for k in own if k in new and own[k].shape != new[k].shape]
    if set(own) != set(new):
        problems.append(f"parameters only in the model {sorted(set(own) - set(new))[:4]}, "
                        f"only in the rebuilt one {sorted(set(new) - set(own))[:4]}")
    if _tied_groups(model) != _tied_groups(rebuilt):
        problems.append(f"tied weights {_tied_groups(model)} vs rebuilt {_tied_groups(rebuilt)}")
    a, b = repr(model).splitlines(), repr(rebuilt).splitlines()
    if a != b:  # module types, sizes and every dropout probability
        line = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        problems.append(f"line {line + 1} of its repr is {a[line].strip() if line < len(a) else '(none)'!r}, "
                        f"rebuilt {b[line].strip() if line < len(b) else '(none)'!r}")
    if problems:
        raise _cannot_export(
            f"this {spec['arch']} model", "it was changed after it was built, so its config no longer "
            "describes it (" + "; ".join(problems) + ")",
            "Build the model you want with language_model_learner/get_language_model (or the book model's "
            "constructor), or save the weights with learn.save('name') and rebuild the model in code.")


def _loss_spec(loss: Any) -> dict[str, Any]:
    t, f = type(loss), getattr(loss, "func", None)
    if t is CrossEntropyLossFlat and type(f) is nn.CrossEntropyLoss and f.weight is None:
        return {"name": t.__name__, "kwargs": dict(
            axis=loss.axis, ignore_index=f.ignore_index, reduction=f.reduction, flatten=loss.flatten,
            floatify=loss.floatify, is_2d=loss.is_2d, label_smoothing=f.label_smoothing)}
    if (t is BCEWithLogitsLossFlat and type(f) is nn.BCEWithLogitsLoss and f.weight is None
            and f.pos_weight is None):
        return {"name": t.__name__, "kwargs": dict(axis=loss.axis, floatify=loss.floatify, thresh=loss.thresh,
                                                   reduction=f.reduction, flatten=loss.flatten)}
    if t is MSELossFlat and type(f) is nn.MSELoss:
        return {"name": t.__name__, "kwargs": dict(axis=loss.axis, floatify=loss.floatify, reduction=f.reduction,
                                                   flatten=loss.flatten)}
    for name, func in _LOSS_FUNCS.items():
        if loss is func:
            return {"name": name, "kwargs": {}}
    raise _cannot_export(
        f"the loss function {loss!r}", "rnnkit rebuilds only CrossEntropyLossFlat, BCEWithLogitsLossFlat and "
        f"MSELossFlat without class weights, and {', '.join(_LOSS_FUNCS)}",
        "Set learn.loss_func to one of those before exporting, or use learn.save('name') and rebuild the "
        "learner in code.")


def _tokenizer_spec(tok: Any) -> dict[str, Any] | None:
    if tok is None:
        return None
    if type(tok) is Tokenizer:
        return {"name": "Tokenizer", "inner": _tokenizer_spec(tok.tok)}
    for name, (cls, keys) in _TOKENIZERS.items():
        if type(tok) is cls:
            spec: dict[str, Any] = {"name": name, "kwargs": {k: getattr(tok, k) for k in keys}}
            if isinstance(tok, SubwordTokenizer):
                spec["kwargs"]["special_toks"] = list(tok.special_toks)
                try:
                    spec["spm_model"] = base64.b64encode(tok.sp.serialized_model_proto()).decode("ascii")
                except RuntimeError:  # not trained yet: nothing to keep but the settings
                    pass
            return spec
    raise _cannot_export(f"the tokenizer {tok!r} (learn.dls.tokenizer)",
                         f"rnnkit rebuilds only its own tokenizers ({', '.join(_TOKENIZERS)})",
                         "Use one of rnnkit.data.tokenize's tokenizers, or set learn.dls.tokenizer = None "
                         "before exporting (predict then splits the prompt on whitespace).")


def _build_tokenizer(spec: dict[str, Any] | None) -> Any:
    if spec is None:
        return None
    if spec["name"] == "Tokenizer":
        return Tokenizer(_build_tokenizer(spec["inner"]))
    cls = _TOKENIZERS[spec["name"]][0]
    if "spm_model" not in spec:
        return cls(**spec["kwargs"])
    with tempfile.TemporaryDirectory() as d:  # SubwordTokenizer reads its model from a file
        model = Path(d) / "spm.model"
        model.write_bytes(base64.b64decode(spec["spm_model"]))
        return SubwordTokenizer.load(model, **spec["kwargs"])


def _vocab_spec(vocab: Any) -> dict[str, Any] | None:
    if vocab is None:
        return None
    if isinstance(vocab, Vocab):
        return {"itos": list(vocab.itos), "unk": vocab.unk, "pad": vocab.pad}
    itos = list(vocab) if not isinstance(vocab, (str, bytes)) and hasattr(vocab, "__iter__") else None
    if itos is None or not all(isinstance(t, str) for t in itos):
        raise _cannot_export(f"learn.dls.vocab of type {type(vocab).__name__}", "it is neither a Vocab nor a "
                             "list of str tokens", "Set learn.dls.vocab to a Vocab (or a list of str).")
    return {"itos": itos, "unk": None, "pad": None}


def _opt_spec(opt_func: Any) -> dict[str, Any] | None:
    func, kwargs = opt_func, {}
    if isinstance(opt_func, functools.partial) and not opt_func.args:
        func, kwargs = opt_func.func, dict(opt_func.keywords)
    name = getattr(func, "__name__", None)
    if name in _OPT_FUNCS and _OPT_FUNCS[name] is func and all(isinstance(v, _SCALARS) for v in kwargs.values()):
        return {"name": name, "kwargs": kwargs}
    return None


def _metric_name(m: Any) -> str:
    name = getattr(m, "name", None)
    return str(name) if name is not None else str(getattr(m, "__name__", type(m).__name__))


def _weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (independent of the file layout)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(json.dumps([k, str(t.dtype), list(t.shape)]).encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _learner_spec(learn: Learner) -> dict[str, Any]:
    cls = next(c for c in _LEARNERS if isinstance(learn, c))
    reg = next((cb for cb in learn.cbs if type(cb) is RNNRegularizer), None)
    opt = _opt_spec(learn.opt_func)
    if opt is None:
        warnings.warn(f"learn.export: the optimizer function {learn.opt_func!r} is not one rnnkit can name; the "
                      "exported learner will use Adam. Pass opt_func= to Learner(...) again after loading to "
                      "train with it.", UserWarning, stacklevel=3)
    splitter = next((k for k, f in _SPLITTERS.items() if learn.splitter is f), None)
    lr, wd = learn.lr, learn.wd
    return {
        "class": cls.__name__,
        "alpha": float(reg.alpha) if reg is not None else 0.0, "beta": float(reg.beta) if reg is not None else 0.0,
        "opt_func": opt, "splitter": splitter,
        "lr": float(lr) if isinstance(lr, (int, float)) else None,
        "wd": float(wd) if isinstance(wd, (int, float)) else None,
        "moms": [float(m) for m in learn.moms] if learn.moms is not None else None,
        "wd_bn_bias": bool(learn.wd_bn_bias),
        "train_bn": bool(learn.train_bn), "model_dir": str(learn.model_dir),
    }


# ---- export -----------------------------------------------------------------------------------

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
    spec = _model_spec(learn.model)
    _check_rebuilds(learn.model, spec)
    dls = learn.dls
    n_inp = getattr(dls, "n_inp", None)
    config = {
        "format": _FORMAT, "version": _VERSION, "model": spec,
        "vocab": _vocab_spec(getattr(dls, "vocab", None)),
        "tokenizer": _tokenizer_spec(getattr(dls, "tokenizer", None)),
        "loss_func": _loss_spec(learn.loss_func),
        "metrics": [_metric_name(m) for m in learn.metrics],
        "n_inp": n_inp if isinstance(n_inp, int) else None,
    }
    config["learner"] = _learner_spec(learn)  # last: it may warn, which only makes sense once nothing refuses
    tensors = model_state_for_save(learn.model)  # on CPU, tied weights once
    config["weights"] = {"sha256": _weights_sha256(tensors), "n_tensors": len(tensors)}
    text = json.dumps(config, ensure_ascii=False, sort_keys=True)
    metadata = {"format": _FORMAT, "version": str(_VERSION), "config": text,
                "config_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    atomic_write(target, safetensors_bytes(tensors, metadata=metadata))
    return target


# ---- load -------------------------------------------------------------------------------------

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


def load_learner(fname: str | os.PathLike, cpu: bool = True, pickle_module: Any = None) -> Learner:
    """The learner `export_learner` wrote to `fname`, ready for `predict`/`get_preds`, the model in eval mode.

    Its `dls` holds no data, only `vocab`, `tokenizer` and `n_inp`; `learn.path` is the file's folder.
    With `cpu=False` the model goes to the default device (CUDA if available). Never unpickles:
    a pickle (fastai's export.pkl), a changed, corrupt or truncated file raises ExportError (a ValueError).

    Args:
        pickle_module: accepted so fastai calls keep working, and ignored.
    """
    path = Path(fname)
    if not path.exists():
        raise FileNotFoundError(f"No exported learner at {path} (from {Path.cwd()}); check the path, or write "
                                "one with learn.export(fname), which saves to learn.path / fname.")
    if path.is_dir():
        raise ExportError(f"{path} is a folder; load_learner needs the file learn.export wrote.")
    config = _read_config(path)
    tensors = _read_weights(path, config)
    try:
        return _build_learner(path, config, tensors, torch.device("cpu") if cpu else default_device())
    except (KeyError, TypeError, AttributeError) as e:
        raise ExportError(f"{path} has a config this rnnkit cannot rebuild ({type(e).__name__}: {e}); it may "
                          "come from a newer rnnkit: load it with the rnnkit that wrote it.") from e


def _build_learner(path: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                   device: torch.device) -> Learner:
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: keep the user's RNG as it was
        model = _build_model(config["model"])
    load_weights(model, tensors, what=f"export {path}")
    model.to(device).eval()
    v = config["vocab"]
    vocab = None if v is None else Vocab(v["itos"], unk=v["unk"], pad=v["pad"])
    dls = TextDataLoaders(vocab=vocab, tokenizer=_build_tokenizer(config["tokenizer"]),  # type: ignore[arg-type]
                          path=path.parent, device=device)
    if config["n_inp"] is not None:
        dls.n_inp = config["n_inp"]
    loss = config["loss_func"]
    loss_func = _LOSS_FUNCS[loss["name"]] if loss["name"] in _LOSS_FUNCS else _LOSS_CLASSES[loss["name"]](
        **loss["kwargs"])
    unknown = [m for m in config["metrics"] if m not in _METRICS]
    if unknown:
        warnings.warn(f"{path}: the metrics {unknown} are not rebuilt (rnnkit rebuilds {', '.join(_METRICS)}); "
                      "set learn.metrics = [...] to add them back.", UserWarning, stacklevel=3)
    spec = config["learner"]
    cls = {c.__name__: c for c in _LEARNERS}[spec["class"]]  # KeyError (reported above) for an unknown class
    kwargs: dict[str, Any] = dict(
        loss_func=loss_func, metrics=[_METRICS[m]() for m in config["metrics"] if m in _METRICS],
        path=path.parent, model_dir=spec["model_dir"], wd=spec["wd"], wd_bn_bias=spec["wd_bn_bias"],
        train_bn=spec["train_bn"])
    if spec["moms"] is not None:
        kwargs["moms"] = tuple(spec["moms"])
    if spec["opt_func"] is not None:
        opt = spec["opt_func"]
        kwargs["opt_func"] = functools.partial(_OPT_FUNCS[opt["name"]], **opt["kwargs"]) if opt["kwargs"] else \
            _OPT_FUNCS[opt["name"]]
    if spec["lr"] is not None:
        kwargs["lr"] = spec["lr"]
    if spec["splitter"] is not None:
        kwargs["splitter"] = _SPLITTERS[spec["splitter"]]
    if issubclass(cls, TextLearner):
        kwargs.update(alpha=spec["alpha"], beta=spec["beta"])
    return cls(dls, model, **kwargs)
