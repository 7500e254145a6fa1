"""Presets: named starting points for a run's configuration, from a model size to a paper's whole recipe.

A preset supplies defaults for `TrainConfig` fields. `rnnkit.config.resolve_config` layers the values of
a run as::

    TrainConfig defaults  <  the preset  <  the config file  <  the command line

and the preset itself may be named in the file or on the command line (the command line wins). The run's
config.json keeps the resolved values, so a resume, `evaluate` or `finetune` reads them without applying
the preset again: a later change to a preset never changes a run that was trained with it.

Each entry of `PRESET_TABLE` is a `Preset`: the `AWD_LSTM_CONFIGS` entry its model starts from, and the
field values it sets, either a dict or a function of the values set without the preset (the defaults
updated with the file and the command line: `corpus`, `time_budget`, ...) that returns a dict. To add a
preset, add an entry; its values are checked like a config file's (unknown keys and wrong types are errors).

`paper-ptb` and `paper-wt2` are the training recipe of Merity, Keskar & Socher (2017), "Regularizing and
Optimizing LSTM Language Models", section 5, with the defaults of salesforce/awd-lstm-lm's main.py where
the text gives no number; docs/paper-recipe.md lists every value with its source and where the
repository's README commands differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

__all__ = ["Preset", "PresetValues", "PRESET_TABLE", "PRESETS", "preset_values", "model_of_preset"]

# A preset's field values: a dict, or a function of the values set without the preset returning one.
PresetValues = Union[Mapping[str, Any], Callable[[Mapping[str, Any]], Mapping[str, Any]]]


@dataclass(frozen=True)
class Preset:
    """A named starting point: the model size it builds and the `TrainConfig` defaults it sets."""

    model: str  # the AWD_LSTM_CONFIGS entry the model starts from (emb_sz, ..., dropouts, init_range)
    values: PresetValues = field(default_factory=dict)  # field defaults; the config file and command line win
    doc: str = ""  # one line for the docs


def _paper(corpus: str, bs: int, input_p: float) -> dict[str, Any]:
    """The AWD-LSTM paper's recipe (section 5) for one corpus; what differs between PTB and WT2 is passed."""
    return dict(
        corpus=corpus,
        emb_sz=400, n_hid=1150, n_layers=3,  # embedding 400, three LSTM layers of 1150 (tied decoder)
        input_p=input_p,  # dropout on the word vectors (dropouti): 0.4, raised to 0.65 for WT2's vocabulary
        hidden_p=0.3,  # between LSTM layers (dropouth)
        output_p=0.4,  # on the last layer's output (dropout)
        embed_p=0.1,  # embedding dropout, whole words (dropoute)
        weight_p=0.5,  # DropConnect on the hidden-to-hidden weights (wdrop)
        drop_mult=1.0,
        bs=bs,  # 40 for PTB, 80 for WT2
        bptt=70, random_bptt=True,  # N(70, 5) w.p. 0.95 else N(35, 5), lr scaled by seq_len/70 (RNNTrainer)
        optimizer="sgd", lr=30.0, schedule="constant",  # plain SGD (no momentum) at 30 until NT-ASGD averages
        wd=1.2e-6,  # main.py's --wdecay; with plain SGD, L2 and decoupled decay are the same update
        clip=0.25,  # gradient norm clipping
        alpha=2.0, beta=1.0,  # AR and TAR
        ntasgd=True,  # NT-ASGD: non-monotone interval n=5, checked once per epoch (NTASGD's defaults)
        epochs=750,
    )


# Corpora read as characters or generated: the `small` model's size, with its dropouts, suits them.
_SMALL_CORPORA = ("human_numbers", "tinyshakespeare")


def _budget(given: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe for a short time budget (`rnnkit train --time-budget MINUTES` without --preset).

    How it was chosen: README "Training for a time budget", with the sweep's table
    (`benchmarks/sweep_recipe.py`). In short: a budget of minutes on a CPU trains a few epochs of a word
    corpus, far from where the paper's dropouts pay off, so the model is one that a 2-core CPU runs fast
    (the tied softmax dominates a step) with light dropout, Adam at the peak lr of the sweep, one cycle
    fitted to the budget, and the epochs only an upper bound."""
    if given.get("corpus") in _SMALL_CORPORA:
        return dict(epochs=10_000)  # the small model; the budget decides how long
    # WikiText-2 sees 1.3-1.5 epochs in 10 minutes (its 33k-word softmax doubles PTB's step), yet lighter
    # dropout with the lower lr of its 150-step sweep (drop_mult 0.2, lr 1e-2) did worse there than these
    # values: valid 199.9 against 182.7 (README's table), so every word corpus gets them.
    # A corpus of the user's own has no sweep behind the lr: the LR finder's `fall` picks one (its ~100
    # steps are not counted in the budget).
    own = {"lr_find": True} if given.get("corpus") == "folder" else {}
    return dict(**own,
        emb_sz=200, n_hid=400, n_layers=2, bs=64, bptt=70,
        drop_mult=0.5,
        lr=2e-2, wd=0.1, schedule="one_cycle", optimizer="adam",
        epochs=10_000,  # an upper bound: the budget ends training
        precision=_fast_precision(str(given.get("device", "auto"))),
    )


def _fast_precision(device: str) -> str:
    """bf16 where it makes a step cheaper at equal quality: a CPU with bfloat16 instructions (PTB in 10
    minutes: 1.40x the tokens, valid perplexity 86.8 against 94.5 in fp32) or a CUDA GPU that supports it;
    fp32 elsewhere."""
    from rnnkit.devices import cpu_has_bf16_instructions, resolve_device

    try:
        dev = resolve_device(device)
    except ValueError:  # a device that is not there: the run refuses it later, with its own message
        return "fp32"
    if dev.type == "cpu":
        return "bf16" if cpu_has_bf16_instructions() else "fp32"
    if dev.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


PRESET_TABLE: dict[str, Preset] = {
    "small": Preset("small", doc="CPU-sized model for small corpora such as Human Numbers (the default)"),
    "fastai": Preset("fastai", doc="fastai's AWD-LSTM language model size and dropouts"),
    "paper": Preset("paper", doc="the paper's model size and WT2 dropouts; training options stay rnnkit's"),
    "paper-ptb": Preset("paper", _paper("ptb", bs=40, input_p=0.4),
                        doc="the AWD-LSTM paper's whole recipe on Penn Treebank (docs/paper-recipe.md)"),
    "paper-wt2": Preset("paper", _paper("wikitext-2", bs=80, input_p=0.65),
                        doc="the AWD-LSTM paper's whole recipe on WikiText-2 (docs/paper-recipe.md)"),
    "budget": Preset("fastai", _budget,
                     doc="the best model for a short --time-budget on a CPU (the default with --time-budget)"),
}

PRESETS: tuple[str, ...] = tuple(PRESET_TABLE)  # the names `TrainConfig.preset` accepts (the table is checked)


def _entry(name: str) -> Preset:
    if name not in PRESET_TABLE:
        raise ValueError(f"preset={name!r} is not a preset; use one of {', '.join(PRESET_TABLE)}")
    return PRESET_TABLE[name]


def preset_values(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The field values preset `name` sets, for a run whose values without the preset are `given` (all
    fields: the defaults updated with the config file and the command line)."""
    values = _entry(name).values
    out = dict(values(dict(given)) if callable(values) else values)
    if "preset" in out:
        raise ValueError(f"preset {name!r} sets 'preset' itself; a preset's values must not name a preset")
    return out


def model_of_preset(name: str, corpus: str | None = None) -> str:
    """The `AWD_LSTM_CONFIGS` entry that preset `name` builds its model from (for `corpus`: the `budget`
    preset builds the `small` model for the corpora that model is made for)."""
    if name == "budget" and corpus in _SMALL_CORPORA:
        return "small"
    return _entry(name).model
