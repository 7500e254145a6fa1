"""AWD-LSTM (Merity, Keskar & Socher, 2017, "Regularizing and Optimizing LSTM Language Models"):
a stack of LSTMs with weight-dropped hidden-to-hidden matrices, variational dropout on inputs,
between layers and on the output, embedding dropout, and an output layer tied to the embedding.

    tokens (bs, seq_len)
      -> embedding, EmbeddingDropout(embed_p)            whole words dropped
      -> RNNDropout(input_p)                             (bs, seq_len, emb_sz)
      -> [WeightDropout(LSTM), RNNDropout(hidden_p)] x (n_layers - 1)
      -> WeightDropout(LSTM) with emb_sz outputs         raw output of the last layer
      -> LinearDecoder: RNNDropout(output_p), Linear tied to the embedding
      => (logits (bs, seq_len, vocab_sz), raw last-layer output, dropped last-layer output)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.errors import UserError
from rnnkit.models.dropout import EmbeddingDropout, RNNDropout, WeightDropout
from rnnkit.models.linear import PooledLinear

__all__ = [
    "AWDLSTMConfig",
    "AWD_LSTM",
    "AWD_LSTM_CONFIGS",
    "LinearDecoder",
    "SequentialRNN",
    "awd_lstm_clas_config",
    "awd_lstm_lm_config",
    "get_language_model",
]

_DROPOUTS = ("output_p", "hidden_p", "input_p", "embed_p", "weight_p")


@dataclass(frozen=True)
class AWDLSTMConfig:
    """Sizes and dropout probabilities of an AWD-LSTM language model (defaults: fastai's LM config)."""

    emb_sz: int = 400  # embedding size, also the last LSTM's output size so the decoder can be tied
    n_hid: int = 1152  # hidden size of every LSTM but the last
    n_layers: int = 3  # number of stacked single-layer LSTMs
    pad_token: int = 1  # index of the padding token (fastai's vocabulary puts xxpad at 1)
    bidir: bool = False  # bidirectional LSTMs (not for language modelling: they see the future)
    output_p: float = 0.1  # variational dropout on the last layer's output, before the decoder
    hidden_p: float = 0.15  # variational dropout between LSTM layers
    input_p: float = 0.25  # variational dropout on the embedded input
    embed_p: float = 0.02  # embedding dropout: probability of dropping a whole word
    weight_p: float = 0.2  # DropConnect on the LSTMs' hidden-to-hidden weights
    tie_weights: bool = True  # share the embedding matrix with the decoder (Inan et al.; Press & Wolf)
    out_bias: bool = True  # give the decoder a bias
    init_range: float = 0.1  # embedding init uniform(-r, r); small tied models learn much faster with ~0.5

    def scaled(self, drop_mult: float) -> AWDLSTMConfig:
        """A copy with all five dropout probabilities multiplied by `drop_mult`."""
        return dataclasses.replace(self, **{k: getattr(self, k) * drop_mult for k in _DROPOUTS})

    def to_dict(self) -> dict[str, Any]:
        """The config as a fastai-style dict."""
        return dataclasses.asdict(self)


AWD_LSTM_CONFIGS: dict[str, AWDLSTMConfig] = {
    # fastai's `awd_lstm_lm_config`.
    "fastai": AWDLSTMConfig(),
    # The paper's word-level Penn Treebank / WikiText-2 model (section 5).
    "paper": AWDLSTMConfig(emb_sz=400, n_hid=1150, n_layers=3, output_p=0.4, hidden_p=0.3, input_p=0.65,
                           embed_p=0.1, weight_p=0.5),
    # CPU-sized, for small corpora such as Human Numbers (tuned there: 0.87-0.89 valid accuracy in 15
    # epochs over 4 seeds). Output and weight dropout only lightly elsewhere: on a small deterministic
    # corpus input/embedding dropout hurt, and a small tied embedding needs a larger init than 0.1.
    "small": AWDLSTMConfig(emb_sz=128, n_hid=128, n_layers=2, output_p=0.3, hidden_p=0.1, input_p=0.0,
                           embed_p=0.0, weight_p=0.1, init_range=0.5),
}

# fastai-compatible dict configs; copy before changing (`dict(awd_lstm_lm_config)`).
# `init_range` is rnnkit's addition; left out so the dict has exactly fastai's keys (its default is fastai's).
awd_lstm_lm_config: dict[str, Any] = {k: v for k, v in AWD_LSTM_CONFIGS["fastai"].to_dict().items()
                                      if k != "init_range"}
awd_lstm_clas_config: dict[str, Any] = dict(emb_sz=400, n_hid=1152, n_layers=3, pad_token=1, bidir=False,
                                            output_p=0.4, hidden_p=0.3, input_p=0.4, embed_p=0.05, weight_p=0.5)


class AWD_LSTM(nn.Module):
    """The AWD-LSTM encoder: embedding and stacked weight-dropped LSTMs whose hidden state is carried
    across batches; returns the last layer's raw output `(bs, seq_len, emb_sz)`."""

    initrange = 0.1  # default embedding init: uniform(-initrange, initrange), as fastai
    # The state carried across batches (docs/hidden-state.md): reset() zeroes it, checkpoints save it.
    hidden_attrs: tuple[str, ...] = ("hidden",)

    def __init__(self, vocab_sz: int, emb_sz: int, n_hid: int, n_layers: int, pad_token: int | None = 1,
                 hidden_p: float = 0.2, input_p: float = 0.6, embed_p: float = 0.1, weight_p: float = 0.5,
                 bidir: bool = False, init_range: float = 0.1) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"AWD_LSTM needs at least one layer, got n_layers={n_layers}.")
        self.n_dir = 2 if bidir else 1
        for name, sz in (("emb_sz", emb_sz), ("n_hid", n_hid)):
            if sz % self.n_dir:
                raise ValueError(f"With bidir=True, {name} must be even (each direction gets half), got {sz}.")
        self.vocab_sz, self.emb_sz, self.n_hid, self.n_layers = vocab_sz, emb_sz, n_hid, n_layers
        self.pad_token, self.bidir = pad_token, bidir
        self.encoder = nn.Embedding(vocab_sz, emb_sz, padding_idx=pad_token)
        self.encoder_dp = EmbeddingDropout(self.encoder, embed_p)
        self.rnns = nn.ModuleList([self._one_rnn(self._in_sz(i), self._out_sz(i), weight_p)
                                   for i in range(n_layers)])
        self.initrange = init_range
        nn.init.uniform_(self.encoder.weight, -init_range, init_range)
        self.input_dp = RNNDropout(input_p)
        # One per layer so `rnns` and `hidden_dps` zip layer by layer (as fastai's splitters expect);
        # the last is unused: the decoder's output dropout acts on the last layer instead.
        self.hidden_dps = nn.ModuleList([RNNDropout(hidden_p) for _ in range(n_layers)])
        self.bs = 1
        self.hidden: list[tuple[Tensor, Tensor]] = []  # per layer (h, c), each (n_dir, bs, n_out // n_dir)
        self.reset()

    def _in_sz(self, i: int) -> int:
        return self.emb_sz if i == 0 else self.n_hid

    def _out_sz(self, i: int) -> int:
        return self.emb_sz if i == self.n_layers - 1 else self.n_hid  # last = emb_sz, for weight tying

    def _one_rnn(self, n_in: int, n_out: int, weight_p: float) -> WeightDropout:
        rnn = nn.LSTM(n_in, n_out // self.n_dir, num_layers=1, batch_first=True, bidirectional=self.bidir)
        names = ["weight_hh_l0", "weight_hh_l0_reverse"] if self.bidir else ["weight_hh_l0"]
        return WeightDropout(rnn, weight_p, names)

    def forward(self, inp: Tensor, from_embeds: bool = False) -> Tensor:
        raw_outputs, _ = self.forward_layers(inp, from_embeds)
        return raw_outputs[-1]

    def forward_layers(self, inp: Tensor, from_embeds: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """Per-layer activations `(raw_outputs, outputs)`: `outputs[l]` is `hidden_dps[l](raw_outputs[l])`,
        the input of layer `l + 1`, except the last, which is left to the decoder's output dropout.

        Args:
            inp: token ids `(bs, seq_len)`, or embeddings `(bs, seq_len, emb_sz)` with `from_embeds=True`.
        """
        if inp.dim() != (3 if from_embeds else 2):
            expected = ("embeddings of shape (bs, seq_len, emb_sz)" if from_embeds
                        else "token ids of shape (bs, seq_len)")
            raise ValueError(f"AWD_LSTM expects {expected}, got {tuple(inp.shape)}.")
        bs, w = inp.size(0), self.encoder.weight
        if self.hidden[0][0].device != w.device or self.hidden[0][0].dtype != w.dtype:  # after .to(...)
            self.hidden = [(h.to(w), c.to(w)) for h, c in self.hidden]
        if bs != self.hidden[0][0].size(1):  # the state's own size: a loaded state may not match `self.bs`
            self._change_bs(bs)
        x = self.input_dp(inp if from_embeds else self.encoder_dp(inp))  # (bs, seq_len, emb_sz)
        raw_outputs, outputs, new_hidden = [], [], []
        for i, (rnn, hidden_dp) in enumerate(zip(self.rnns, self.hidden_dps)):
            raw, h = rnn(x, self.hidden[i])  # raw: (bs, seq_len, n_hid), or emb_sz for the last layer
            new_hidden.append(h)
            raw_outputs.append(raw)
            x = hidden_dp(raw) if i < self.n_layers - 1 else raw
            outputs.append(x)
        # Truncated BPTT: the next batch continues from these values, but backward stops at this batch.
        # (autocast may hand back bf16 states: keep them in the model's dtype)
        self.hidden = [(h.detach().to(w.dtype), c.detach().to(w.dtype)) for h, c in new_hidden]
        return raw_outputs, outputs

    def _zeros(self, i: int, bs: int) -> tuple[Tensor, Tensor]:
        w = self.encoder.weight
        h = w.new_zeros(self.n_dir, bs, self._out_sz(i) // self.n_dir)
        return h, torch.zeros_like(h)

    def _change_bs(self, bs: int) -> None:
        # Keep the state of the streams that go on (fastai's behaviour); new streams start from zeros.
        new = []
        for i, (h, c) in enumerate(self.hidden):
            if bs < h.size(1):
                new.append((h[:, :bs], c[:, :bs]))
            else:
                z_h, z_c = self._zeros(i, bs - h.size(1))
                new.append((torch.cat([h, z_h], dim=1), torch.cat([c, z_c], dim=1)))
        self.hidden, self.bs = new, bs

    def reset(self) -> None:
        """Zero the hidden state, so the next batch starts a new text."""
        self.hidden = [self._zeros(i, self.bs) for i in range(self.n_layers)]

    def extra_repr(self) -> str:
        return f"vocab_sz={self.vocab_sz}, emb_sz={self.emb_sz}, n_hid={self.n_hid}, n_layers={self.n_layers}"


class LinearDecoder(nn.Module):
    """Output dropout then a linear layer to `n_out` logits, optionally tied to an embedding; returns
    `(logits, input, dropped_input)` so AR/TAR can read the activations."""

    initrange = 0.1  # init of an untied weight: uniform(-initrange, initrange)

    def __init__(self, n_out: int, n_hid: int, output_p: float = 0.1, tie_encoder: nn.Embedding | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        self.decoder = PooledLinear(n_hid, n_out, bias=bias)  # logits reuse pooled CPU buffers
        nn.init.uniform_(self.decoder.weight, -self.initrange, self.initrange)
        self.output_dp = RNNDropout(output_p)
        if self.decoder.bias is not None:
            nn.init.zeros_(self.decoder.bias)
        if tie_encoder is not None:
            if tie_encoder.weight.shape != self.decoder.weight.shape:
                raise ValueError(f"Cannot tie the decoder ({n_out}, {n_hid}) to an embedding of shape "
                                 f"{tuple(tie_encoder.weight.shape)}; make the last layer's size equal emb_sz.")
            self.decoder.weight = tie_encoder.weight  # one matrix maps words in and out

    def forward(self, input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dropped = self.output_dp(input)
        return self.decoder(dropped), input, dropped  # logits: (bs, seq_len, n_out)


class SequentialRNN(nn.Sequential):
    """`nn.Sequential` whose `reset()` resets every child that has a `reset` method."""

    def reset(self) -> None:
        """Reset the hidden state of the children that keep one."""
        for child in self.children():
            reset = getattr(child, "reset", None)
            if callable(reset):
                reset()


def as_config(config: dict[str, Any] | AWDLSTMConfig | str | None) -> dict[str, Any]:
    """An AWD-LSTM config as a dict: from None (the LM defaults), a dict, an `AWDLSTMConfig` or a preset name."""
    if config is None:
        return dict(awd_lstm_lm_config)
    if isinstance(config, str):
        if config not in AWD_LSTM_CONFIGS:
            raise ValueError(f"Unknown AWD_LSTM config {config!r}; choose one of {sorted(AWD_LSTM_CONFIGS)} "
                             "or pass a dict or an AWDLSTMConfig.")
        return AWD_LSTM_CONFIGS[config].to_dict()
    if isinstance(config, AWDLSTMConfig):
        return config.to_dict()
    if isinstance(config, dict):
        return dict(config)  # never change the caller's dict
    raise TypeError("config must be a dict, an AWDLSTMConfig, a preset name or None, "
                    f"got {type(config).__name__}.")


def get_language_model(arch: type[nn.Module], vocab_sz: int,
                       config: dict[str, Any] | AWDLSTMConfig | str | None = None,
                       drop_mult: float = 1.0) -> SequentialRNN:
    """An encoder `arch(vocab_sz, **config)` plus a `LinearDecoder`, returning `(logits, raw_out, out)`.

    Args:
        arch: the encoder class, e.g. `AWD_LSTM`.
        config: fastai-style dict, `AWDLSTMConfig`, or a name in `AWD_LSTM_CONFIGS`; default fastai's LM config.
        drop_mult: multiplies all five dropout probabilities (`output_p, hidden_p, input_p, embed_p, weight_p`).
    """
    cfg = as_config(config)
    for k in cfg:
        if k.endswith("_p"):
            if not 0 <= cfg[k] * drop_mult <= 1:
                raise UserError(f"drop_mult={drop_mult} makes {k}={cfg[k]} a dropout probability of "
                                f"{cfg[k] * drop_mult:g}; it must be in [0, 1], so lower drop_mult")
            cfg[k] = cfg[k] * drop_mult
    output_p = cfg.pop("output_p", 0.1)
    tie_weights, out_bias = cfg.pop("tie_weights", True), cfg.pop("out_bias", True)
    if "emb_sz" not in cfg:
        raise ValueError("get_language_model needs config['emb_sz'] to size the decoder.")
    encoder = arch(vocab_sz, **cfg)
    tie = getattr(encoder, "encoder", None) if tie_weights else None
    if tie_weights and tie is None:
        raise ValueError(f"tie_weights=True needs {arch.__name__} to have an `encoder` embedding; "
                         "set tie_weights=False in the config instead.")
    decoder = LinearDecoder(vocab_sz, cfg["emb_sz"], output_p, tie_encoder=tie, bias=out_bias)
    return SequentialRNN(encoder, decoder)
