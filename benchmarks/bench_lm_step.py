"""The whole rnnkit training step of an AWD-LSTM language model against a plain PyTorch nn.LSTM loop.

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_lm_step.py
Options: --sizes small small-b32x70 medium fastai, --chunk N (batches per timed chunk), --reps N, --loss-epochs N,
--loss-batches N, --no-loss, --no-bf16, --reuse-freed-memory, --ablate.

rnnkit  `language_model_learner(dls, AWD_LSTM, config)` trained with `fit_one_cycle`: all five dropouts,
        AR (alpha=2) and TAR (beta=1), ModelResetter, rnnkit's default Adam with weight decay, the
        one-cycle schedule, the Recorder and the LM data loader: everything a user's `fit` runs.
plain   nn.Embedding + nn.LSTMs of the same sizes + tied nn.Linear, no dropout, no AR/TAR,
        `torch.optim.AdamW(fused=True)`, batches sliced from a pre-batchified tensor, the hidden
        state detached between batches.
Both train on the same tokens. Speed: tokens/s over the training batches (the Learner's train phase,
before_train to after_train), the variants alternating chunk by chunk in a shuffled order, medians over the chunks; in fp32
and under bf16 autocast (`learn.to_bf16()` / `torch.autocast`). Target: rnnkit >= 0.95x plain.

Loss: for the bf16 question, the same Learner trained for a fixed number of steps from the same initial
weights and data order in fp32 and in bf16, then the validation loss of a whole-split stateful pass
(`evaluate_lm`); a second fp32 run from another seed gives the seed-to-seed spread to compare it with.

Sizes: fastai (fastai's AWD-LSTM LM config, emb 400, hid 1152, 3 layers; bs 32, bptt 70; Penn Treebank,
vocab 10,000), small (the `small` preset the command line trains, with its batches: bs 64, bptt 16;
Human Numbers), small-b32x70 (the same model with fastai's batch shape, bs 32, bptt 70) and medium
(emb 256, hid 512, 2 layers, fastai's LM dropouts, bs 32, bptt 70, Penn Treebank: a model one would
train on a real corpus on a CPU).
PTB is read from ../shared/data/ptb (or --ptb); without it the speed part uses random ids over 10,000.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("RNNKIT_NO_PROGRESS", "1")

from bench_awd_lstm import PlainLM, add_machine_args, set_up_machine  # noqa: E402  (same directory)

from rnnkit.data.corpora import read_corpus  # noqa: E402
from rnnkit.data.text import TextDataLoaders  # noqa: E402
from rnnkit.data.vocab import Vocab  # noqa: E402
from rnnkit.models.awd_lstm import AWD_LSTM_CONFIGS, AWDLSTMConfig  # noqa: E402
from rnnkit.text.learner import language_model_learner  # noqa: E402
from rnnkit.training.callback import Callback  # noqa: E402

DEFAULT_PTB = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb"

SIZES = {
    "fastai": dict(config="fastai", corpus="ptb", bs=32, bptt=70, lr=2e-3, chunk=1, reps=12,
                   loss_batches=40, loss_epochs=1, valid_tokens=32 * 70 * 10),
    "small": dict(config="small", corpus="human_numbers", bs=64, bptt=16, lr=1e-2, chunk=20, reps=25,
                  loss_batches=None, loss_epochs=4, valid_tokens=None),
    # the same small model with fastai's batch shape: the per-step costs that do not grow with the
    # batch (weight-dropout masks, the Learner's Python) weigh 4x less than at bs 64 x bptt 16
    "small-b32x70": dict(config="small", corpus="human_numbers", bs=32, bptt=70, lr=1e-2, chunk=5, reps=25,
                         loss_batches=None, loss_epochs=4, valid_tokens=None),
    # a model sized for training on a real corpus on a CPU: 2 layers of 512 (a quarter of fastai's
    # hidden-to-hidden weights), fastai's LM dropouts, fastai's batch shape, Penn Treebank
    "medium": dict(config=dataclasses.replace(AWD_LSTM_CONFIGS["fastai"], emb_sz=256, n_hid=512, n_layers=2),
                   label="emb 256, hid 512, 2 layers, fastai dropouts", corpus="ptb", bs=32, bptt=70, lr=2e-3,
                   chunk=2, reps=15, loss_batches=40, loss_epochs=1, valid_tokens=32 * 70 * 10),
}


def size_config(size: str) -> AWDLSTMConfig:
    c = SIZES[size]["config"]
    return c if isinstance(c, AWDLSTMConfig) else AWD_LSTM_CONFIGS[c]


class TrainTimer(Callback):
    """Seconds of each training phase (before_train to after_train: batches, loader and callbacks)."""

    order = -100  # first at before_train; at after_train the later callbacks' work (microseconds) is not timed

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def before_train(self) -> None:
        self._t = time.perf_counter()

    def after_train(self) -> None:
        self.times.append(time.perf_counter() - self._t)


def load_ids(size: str, ptb: Path) -> tuple[np.ndarray, np.ndarray, Vocab, str]:
    """Train and valid token ids, the vocabulary, and where they came from."""
    s = SIZES[size]
    if s["corpus"] == "ptb":
        if not ptb.is_dir():
            rng = np.random.default_rng(0)
            vocab = Vocab([f"w{i}" for i in range(10_000)], unk=None, pad=None)
            return (rng.integers(0, 10_000, 400_000), rng.integers(0, 10_000, 40_000), vocab,
                    "random ids (no PTB found)")
        corpus = read_corpus("ptb", ptb)
    else:
        corpus = read_corpus("human_numbers")
    return (np.asarray(corpus["train"].ids), np.asarray(corpus["valid"].ids), corpus.vocab, s["corpus"])


def make_dls(train: np.ndarray, valid: np.ndarray, vocab: Vocab, bs: int, bptt: int) -> TextDataLoaders:
    return TextDataLoaders.from_tensors(train, valid, vocab, bs=bs, seq_len=bptt, seed=0)


# --ablate: rnnkit Learners with parts of the regularization switched off, to show where the time goes
ABLATIONS = {"rnnkit, no dropouts": dict(dropouts=False, ar_tar=True),
             "rnnkit, no AR/TAR": dict(dropouts=True, ar_tar=False),
             "rnnkit, neither": dict(dropouts=False, ar_tar=False)}


def make_learner(dls: TextDataLoaders, size: str, bf16: bool, seed: int = 0, dropouts: bool = True,
                 ar_tar: bool = True):
    torch.manual_seed(seed)
    kw = {} if ar_tar else dict(alpha=0.0, beta=0.0)
    learn = language_model_learner(dls, config=size_config(size), drop_mult=1.0 if dropouts else 0.0,
                                   metrics=[], cbs=TrainTimer(), **kw)
    return learn.to_bf16() if bf16 else learn


def learner_runner(learn, lr: float) -> Callable[[], float]:
    """Seconds of one `fit_one_cycle(1)` training phase of `learn`."""
    timer = learn.get_cb(TrainTimer)

    def run() -> float:
        with learn.no_logging():
            learn.fit_one_cycle(1, lr)
        return timer.times[-1]

    return run


def plain_chunk(model: PlainLM, opt: torch.optim.Optimizer, batches: torch.Tensor, bptt: int,
                bf16: bool) -> float:
    """Seconds to train on `batches` (bs, n * bptt + 1) in windows of `bptt`."""
    vocab_sz = model.dec.out_features
    model.train()
    t = time.perf_counter()
    for i in range(0, batches.shape[1] - 1, bptt):
        x, y = batches[:, i:i + bptt], batches[:, i + 1:i + 1 + bptt]
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            logits = model(x)
            loss = F.cross_entropy(logits.float().reshape(-1, vocab_sz), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def bench_speed(size: str, train: np.ndarray, valid: np.ndarray, vocab: Vocab, chunk: int, reps: int,
                precisions: list[bool], ablate: bool = False
                ) -> tuple[dict[tuple[str, bool], float], dict[bool, list[float]]]:
    """Median tokens/s by (variant, bf16), and by precision the rnnkit/plain tokens/s ratio of each round
    (the two chunks of a round ran seconds apart: the ratio is robust to the machine's slow drifts)."""
    s = SIZES[size]
    bs, bptt = s["bs"], s["bptt"]
    n_tok = bs * bptt * chunk
    ids = torch.as_tensor(train[:n_tok + bs].astype(np.int64))  # bs rows of chunk*bptt + 1
    dls = make_dls(ids.numpy(), valid[:bs * bptt + 1], vocab, bs, bptt)
    rows = torch.stack([ids[r * (chunk * bptt + 1):(r + 1) * (chunk * bptt + 1)] for r in range(bs)])
    cfg = size_config(size)
    runners = {}
    for bf16 in precisions:
        learn = make_learner(dls, size, bf16)
        torch.manual_seed(0)
        model = PlainLM(len(vocab), cfg.emb_sz, cfg.n_hid, cfg.n_layers)
        opt = torch.optim.AdamW(model.parameters(), lr=s["lr"], fused=True)
        runners[("rnnkit", bf16)] = learner_runner(learn, s["lr"])
        runners[("plain", bf16)] = lambda model=model, opt=opt, bf16=bf16: plain_chunk(model, opt, rows, bptt, bf16)
        assert len(learn.dls.train) == chunk, (len(learn.dls.train), chunk)
    if ablate:
        for name, parts in ABLATIONS.items():
            runners[(name, False)] = learner_runner(make_learner(dls, size, False, **parts), s["lr"])
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in runners}
    order = list(runners)
    rng = random.Random(0)
    for rep in range(reps + 1):  # the first round warms up
        rng.shuffle(order)  # a new order each round: no variant always runs after the same other one
        for key in order:
            t = runners[key]()
            if rep:
                times[key].append(t)
    ratios = {bf16: [p / r for r, p in zip(times[("rnnkit", bf16)], times[("plain", bf16)])]
              for bf16 in precisions}
    return {k: n_tok / statistics.median(v) for k, v in times.items()}, ratios


def bench_loss(size: str, train: np.ndarray, valid: np.ndarray, vocab: Vocab, epochs: int,
               batches: int | None) -> tuple[dict[str, float], int]:
    """Validation loss after `epochs` of `batches` training steps (None: the whole split), in fp32, in
    bf16 (same seed) and in fp32 from another seed; and the number of steps."""
    s = SIZES[size]
    bs, bptt = s["bs"], s["bptt"]
    if batches is not None:
        n_tok = bs * bptt * batches + bs
        if len(train) < n_tok:
            raise SystemExit(f"{size}: {batches} batches need {n_tok} training tokens, the corpus has {len(train)}")
        train = train[:n_tok]
    v = valid if s["valid_tokens"] is None else valid[:s["valid_tokens"]]
    dls = make_dls(train, v, vocab, bs, bptt)
    out = {}
    for name, bf16, seed in (("fp32", False, 0), ("bf16", True, 0), ("fp32 seed 1", False, 1)):
        learn = make_learner(dls, size, bf16, seed)
        with learn.no_logging():
            learn.fit_one_cycle(epochs, s["lr"])
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            out[name] = learn.evaluate_lm()["loss"]  # as the Learner validates: under autocast
        if bf16:
            out["bf16, evaluated in fp32"] = learn.evaluate_lm()["loss"]
    return out, epochs * len(dls.train)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["small", "small-b32x70", "medium", "fastai"], choices=list(SIZES))
    p.add_argument("--chunk", type=int, default=None, help="training batches per timed chunk")
    p.add_argument("--reps", type=int, default=None, help="timed chunks per variant (after one warm-up)")
    p.add_argument("--loss-epochs", type=int, default=None, help="training epochs before the validation loss")
    p.add_argument("--loss-batches", type=int, default=None,
                   help="training batches per epoch for the loss (default: 40 for fastai, the whole split for small)")
    p.add_argument("--no-loss", action="store_true", help="skip the bf16 validation-loss comparison")
    p.add_argument("--ablate", action="store_true",
                   help="also time rnnkit without the dropouts, without AR/TAR, and without both (fp32)")
    p.add_argument("--ptb", type=Path, default=DEFAULT_PTB)
    add_machine_args(p)
    args = p.parse_args()
    set_up_machine(args)
    precisions = [False] if args.no_bf16 else [False, True]
    for size in args.sizes:
        s = SIZES[size]
        train, valid, vocab, source = load_ids(size, args.ptb)
        chunk, reps = args.chunk or s["chunk"], args.reps or s["reps"]
        tps, ratios = bench_speed(size, train, valid, vocab, chunk, reps, precisions, args.ablate)
        print(f"\n== {size}: {s.get('label', str(s['config']) + ' config')}, vocab {len(vocab)}, bs {s['bs']}, bptt {s['bptt']}, {source}; "
              f"{reps} chunks of {chunk} batches per variant after one warm-up, medians ==")
        for (name, bf16), v in tps.items():
            ms = s["bs"] * s["bptt"] / v * 1e3
            extra = (f"  {ms - s['bs'] * s['bptt'] / tps[('plain', bf16)] * 1e3:+6.2f} ms/step over plain"
                     if name != "plain" else "")
            print(f"  {name:20s} {'bf16' if bf16 else 'fp32'}  {v:9.0f} tokens/s  {ms:8.2f} ms/step{extra}")
        for bf16 in precisions:
            tag = "bf16" if bf16 else "fp32"
            q1, med, q3 = statistics.quantiles(ratios[bf16], n=4)
            print(f"  [{tag}] rnnkit step / plain loop: {tps[('rnnkit', bf16)] / tps[('plain', bf16)]:.3f}x "
                  f"tokens/s (ratio of medians); per round: median {med:.3f}x, quartiles {q1:.3f}-{q3:.3f}x "
                  "(target >= 0.95x)")
        if not args.no_bf16:
            print("  bf16 autocast speed-up: " + ", ".join(
                f"{n} {tps[(n, True)] / tps[(n, False)]:.2f}x" for n in ("rnnkit", "plain")))
        if args.no_loss or args.no_bf16 or source.startswith("random"):
            continue
        t = time.perf_counter()
        losses, steps = bench_loss(size, train, valid, vocab, args.loss_epochs or s["loss_epochs"],
                                   args.loss_batches or s["loss_batches"])
        d, spread = losses["bf16"] - losses["fp32"], losses["fp32 seed 1"] - losses["fp32"]
        print(f"  validation loss after {steps} steps (fit_one_cycle, lr {s['lr']}, {time.perf_counter() - t:.0f} s): "
              + ", ".join(f"{k} {v:.4f} (ppl {math.exp(v):.1f})" for k, v in losses.items()))
        print(f"  bf16 - fp32: {d:+.4f} ({d / losses['fp32'] * 100:+.2f}%); "
              f"fp32 seed-to-seed: {spread:+.4f} ({spread / losses['fp32'] * 100:+.2f}%)")


if __name__ == "__main__":
    main()
