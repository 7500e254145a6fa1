"""What an rnnkit export can name, and how a learner becomes an export config and back.

An export never carries code: its config names architectures, losses, metrics, optimizers, splitters,
tokenizers and learner classes from the registries below, with their settings. `learner_config` turns a
learner into such a config, refusing (ExportError) anything rnnkit could not rebuild, including a model
changed after it was built; `rebuild_learner` builds the learner back from a config and checked weights.
"""
from __future__ import annotations

import base64
import functools
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.callbacks.rnn import RNNRegularizer
from rnnkit.checkpoint import load_weights
from rnnkit.data.text import TextDataLoaders
from rnnkit.data.tokenize import (
    CharTokenizer, PreTokenizedTokenizer, SubwordTokenizer, Tokenizer, WhitespaceTokenizer, WordTokenizer,
)
from rnnkit.data.vocab import Vocab
from rnnkit.export_format import ExportError
from rnnkit.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat, MSELossFlat
from rnnkit.metrics import Perplexity, accuracy, error_rate
from rnnkit.models.awd_lstm import AWD_LSTM, LinearDecoder, SequentialRNN, get_language_model
from rnnkit.models.book import LMModel1, LMModel2, LMModel3, LMModel4, LMModel5, LMModel6, LMModel7
from rnnkit.optim.lookahead import ranger
from rnnkit.optim.more import QHAdam, RAdam, Lamb, Larc
from rnnkit.optim.recipes import SGD, Adam, RMSProp
from rnnkit.text.learner import LMLearner, TextLearner, awd_lstm_lm_split
from rnnkit.training.learner import Learner, trainable_params

__all__ = ["learner_config", "rebuild_learner"]

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
                if not tok.needs_setup:  # not trained yet: nothing to keep but the settings
                    spec["spm_model"] = base64.b64encode(tok.sp.serialized_model_proto()).decode("ascii")
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


def _learner_spec(learn: Learner) -> dict[str, Any]:
    cls = next(c for c in _LEARNERS if isinstance(learn, c))
    reg = next((cb for cb in learn.cbs if type(cb) is RNNRegularizer), None)
    opt = _opt_spec(learn.opt_func)
    if opt is None:
        warnings.warn(f"learn.export: the optimizer function {learn.opt_func!r} is not one rnnkit can name; the "
                      "exported learner will use Adam. Pass opt_func= to Learner(...) again after loading to "
                      "train with it.", UserWarning, stacklevel=4)  # export_learner's caller
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


# ---- a learner to a config and back --------------------------------------------------------------

def learner_config(learn: Learner) -> dict[str, Any]:
    """The settings that rebuild `learn` for inference: model architecture and config, `dls.vocab`,
    `dls.tokenizer`'s settings, the loss function, the metrics' names, `dls.n_inp` and the learner's
    hyper-parameters (JSON-able). Raises ExportError for anything rnnkit cannot rebuild."""
    spec = _model_spec(learn.model)
    _check_rebuilds(learn.model, spec)
    dls = learn.dls
    n_inp = getattr(dls, "n_inp", None)
    config = {
        "model": spec,
        "vocab": _vocab_spec(getattr(dls, "vocab", None)),
        "tokenizer": _tokenizer_spec(getattr(dls, "tokenizer", None)),
        "loss_func": _loss_spec(learn.loss_func),
        "metrics": [_metric_name(m) for m in learn.metrics],
        "n_inp": n_inp if isinstance(n_inp, int) else None,
    }
    config["learner"] = _learner_spec(learn)  # last: it may warn, which only makes sense once nothing refuses
    return config


def rebuild_learner(path: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                    device: torch.device) -> Learner:
    """The learner `config` describes, with the weights `tensors` (checked already) and its model on `device`
    in eval mode; `path` is the export file. A config naming something unknown raises KeyError."""
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
                      "set learn.metrics = [...] to add them back.", UserWarning, stacklevel=3)  # load_learner's caller
    spec = config["learner"]
    cls = {c.__name__: c for c in _LEARNERS}[spec["class"]]  # KeyError (load_learner reports it) for an unknown class
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
