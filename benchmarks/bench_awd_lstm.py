"""Training speed of the AWD-LSTM language model: what the dropouts cost, and what bf16 autocast buys.

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_awd_lstm.py
Options: --sizes fastai small, --steps N (timed steps per variant), --warmup N, --no-bf16,
--reuse-freed-memory.

One training step = forward, cross-entropy, backward, `torch.optim.AdamW(fused=True)` step.
Variants, alternating step by step within one process (medians over the timed steps):
  awd        AWD_LSTM + tied LinearDecoder with all five dropouts on
  awd_no_wd  the same model with weight_p=0 (no DropConnect on the hidden-to-hidden weights)
  plain      nn.Embedding + three nn.LSTMs of the same sizes + tied nn.Linear, no dropout
each in fp32 and under `torch.autocast('cpu', dtype=torch.bfloat16)`.
Sizes: fastai (vocab 10,000, emb 400, hid 1152, 3 layers, bs 32, bptt 70) and the `small`
preset on a Human-Numbers-sized problem (vocab 32, bs 64, bptt 16).
Target: weight dropout costs at most 5% over the same model without it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.models.awd_lstm import AWD_LSTM, AWD_LSTM_CONFIGS, get_language_model
from rnnkit.utils import cpu_computes_natively, reuse_freed_memory

SIZES = {
    "fastai": dict(config="fastai", vocab_sz=10_000, bs=32, bptt=70),
    "small": dict(config="small", vocab_sz=32, bs=64, bptt=16),
}


class PlainLM(nn.Module):
    """Embedding -> stacked nn.LSTMs (same sizes as the AWD-LSTM) -> tied Linear; no dropout."""

    def __init__(self, vocab_sz: int, emb_sz: int, n_hid: int, n_layers: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_sz, emb_sz)
        sizes = [emb_sz] + [n_hid] * (n_layers - 1) + [emb_sz]
        self.rnns = nn.ModuleList([nn.LSTM(i, o, batch_first=True) for i, o in zip(sizes[:-1], sizes[1:])])
        self.dec = nn.Linear(emb_sz, vocab_sz)
        self.dec.weight = self.emb.weight
        self.hidden: list | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        hidden = self.hidden or [None] * len(self.rnns)
        new = []
        for rnn, hx in zip(self.rnns, hidden):
            h, hx = rnn(h, hx)
            new.append((hx[0].detach().float(), hx[1].detach().float()))
        self.hidden = new
        return self.dec(h)


def make_models(size: str) -> dict[str, nn.Module]:
    s = SIZES[size]
    cfg = AWD_LSTM_CONFIGS[s["config"]]
    return {
        "awd": get_language_model(AWD_LSTM, s["vocab_sz"], cfg),
        "awd_no_wd": get_language_model(AWD_LSTM, s["vocab_sz"], dataclasses.replace(cfg, weight_p=0.0)),
        "plain": PlainLM(s["vocab_sz"], cfg.emb_sz, cfg.n_hid, cfg.n_layers),
    }


def make_step(model: nn.Module, vocab_sz: int, bs: int, bptt: int, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_sz, (bs, bptt), generator=g)
    y = torch.randint(0, vocab_sz, (bs, bptt), generator=g)
    model.train()

    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out
            loss = F.cross_entropy(logits.float().view(-1, vocab_sz), y.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench(size: str, steps: int, warmup: int,
          bf16_too: bool) -> tuple[dict[tuple[str, bool], float], dict[tuple[str, bool], float]]:
    """Median wall-clock and process CPU seconds per training step, by (variant, bf16)."""
    s = SIZES[size]
    steps_fns = {}
    for name, model in make_models(size).items():
        for bf16 in (False, True) if bf16_too else (False,):
            # A separate copy per precision so the optimizer states don't interact.
            m = copy.deepcopy(model) if bf16 else model
            steps_fns[(name, bf16)] = make_step(m, s["vocab_sz"], s["bs"], s["bptt"], bf16)
    wall: dict[tuple[str, bool], list[float]] = {k: [] for k in steps_fns}
    cpu: dict[tuple[str, bool], list[float]] = {k: [] for k in steps_fns}
    for i in range(warmup + steps):
        for key, fn in steps_fns.items():  # alternate the variants step by step
            t, c = time.perf_counter(), time.process_time()
            fn()
            if i >= warmup:
                wall[key].append(time.perf_counter() - t)
                cpu[key].append(time.process_time() - c)
    return ({k: statistics.median(v) for k, v in wall.items()},
            {k: statistics.median(v) for k, v in cpu.items()})


def add_machine_args(p: argparse.ArgumentParser) -> None:
    """The options both AWD-LSTM benchmarks take for how the machine runs them."""
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reuse-freed-memory", action="store_true",
                   help="call rnnkit.utils.reuse_freed_memory() first, as the rnnkit command does (both variants gain)")


def set_up_machine(args: argparse.Namespace) -> None:
    """Threads and allocator as asked; bf16 off (with a note) on a CPU without native bf16."""
    torch.set_num_threads(args.threads)
    if args.reuse_freed_memory:
        print(f"reuse_freed_memory(): {reuse_freed_memory()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.no_bf16 and not cpu_computes_natively(torch.bfloat16):
        print("this CPU has no native bf16 (no AVX-512): nn.LSTM fails under bf16 autocast here; bf16 skipped")
        args.no_bf16 = True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["small", "fastai"], choices=list(SIZES))
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 fastai, 40 small)")
    p.add_argument("--warmup", type=int, default=2)
    add_machine_args(p)
    args = p.parse_args()
    set_up_machine(args)
    torch.manual_seed(0)
    for size in args.sizes:
        s = SIZES[size]
        steps = args.steps or (5 if size == "fastai" else 40)
        wall, cpu = bench(size, steps, args.warmup, not args.no_bf16)
        n_tok = s["bs"] * s["bptt"]
        print(f"\n== {size}: vocab {s['vocab_sz']}, bs {s['bs']}, bptt {s['bptt']}, "
              f"{steps} timed steps after {args.warmup} warm-up, medians ==")
        for (name, bf16), t in wall.items():
            print(f"  {name:10s} {'bf16' if bf16 else 'fp32'}  {t * 1000:9.1f} ms/step  {n_tok / t:9.0f} tokens/s"
                  f"   (CPU time {cpu[(name, bf16)] * 1000:9.1f} ms/step)")
        for label, med in (("wall", wall), ("cpu", cpu)):
            for bf16 in sorted({k[1] for k in med}):
                tag = "bf16" if bf16 else "fp32"
                wd_cost = med[("awd", bf16)] / med[("awd_no_wd", bf16)] - 1
                print(f"  [{label} {tag}] weight dropout cost: {wd_cost * 100:+.1f}% (target <= 5%);  "
                      f"AWD (all dropouts) / plain: {med[('awd', bf16)] / med[('plain', bf16)]:.2f}x time")
            if ("awd", True) in med:
                ups = ", ".join(f"{n} {med[(n, False)] / med[(n, True)]:.2f}x"
                                for n in ("awd", "awd_no_wd", "plain"))
                print(f"  [{label}] bf16 autocast speed-up: {ups}")


if __name__ == "__main__":
    main()
