"""Optimizer step time: rnnkit's Adam, SGD with momentum and RMSProp against torch.optim (issue 6).

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_optim.py
Variants of one algorithm alternate within one process; figures are medians over repetitions
of `--steps` steps each, on random gradients (the same gradients for every variant).

Parameter sets:
  (a) fastai's default AWD-LSTM language model with a 10,000-word vocabulary: embedding
      10000x400 tied with the decoder, 3 LSTM layers 400->1152->1152->400, ~24M parameters;
  (b) 200 Linear(64, 64) layers: 400 small tensors, where per-parameter overhead shows.
Targets: rnnkit no slower than 1.05x the fastest torch.optim variant of the same algorithm
on (a) and 1.25x on (b). A chain with one user-written stepper (the per-parameter path) is
reported too, without a target.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from rnnkit.optim import (SGD, Adam, Optimizer, RMSProp, average_grad, average_sqr_grad, debias, step_stat,
                           weight_decay)

TARGETS = {"a": 1.05, "b": 1.25}


def awd_lstm_lm_params(vocab_sz: int = 10_000) -> tuple[list[nn.Parameter], str]:
    """The parameters of fastai's default AWD-LSTM language model (rnnkit's if it is there)."""
    try:
        from rnnkit.models.awd_lstm import AWD_LSTM, get_language_model
        model = get_language_model(AWD_LSTM, vocab_sz)
        return list(model.parameters()), "rnnkit get_language_model(AWD_LSTM, 10000)"
    except Exception as e:  # noqa: BLE001  # the model module may not be there yet
        why = type(e).__name__
    emb = nn.Embedding(vocab_sz, 400)
    rnns = [nn.LSTM(400, 1152), nn.LSTM(1152, 1152), nn.LSTM(1152, 400)]
    dec = nn.Linear(400, vocab_sz)
    dec.weight = emb.weight  # tied
    ps = list(nn.ModuleList([emb, *rnns, dec]).parameters())
    return ps, f"plain nn modules with AWD-LSTM shapes ({why} importing rnnkit's)"


def linear_params(n: int = 200) -> tuple[list[nn.Parameter], str]:
    """The parameters of `n` Linear(64, 64) layers."""
    return [p for _ in range(n) for p in nn.Linear(64, 64).parameters()], f"{n} x Linear(64, 64)"


def user_adam_step(p: torch.Tensor, lr: float, mom: float, step: int, sqr_mom: float,
                   grad_avg: torch.Tensor, sqr_avg: torch.Tensor, eps: float, **kwargs: Any) -> None:
    """Adam's step as a user writes it in a notebook (no foreach twin)."""
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    p.data.addcdiv_(grad_avg, (sqr_avg / debias2).sqrt() + eps, value=-lr / debias1)


def user_momentum_step(p: torch.Tensor, lr: float, grad_avg: torch.Tensor, **kwargs: Any) -> None:
    """The seed's momentum step."""
    p.data.add_(grad_avg, alpha=-lr)


def user_rms_prop_step(p: torch.Tensor, lr: float, sqr_avg: torch.Tensor, eps: float,
                       **kwargs: Any) -> None:
    """The seed's RMSProp step."""
    p.data.addcdiv_(p.grad, sqr_avg.sqrt().add_(eps), value=-lr)


def _with_impl(opt: Any, impl: str) -> Any:
    opt.impl = impl
    return opt


def _fresh_buffers(opt: Any) -> Any:
    """Without the optimizer's reusable `Scratch`: temporaries allocated on every step (what it saves)."""
    opt.scratch = None
    return opt


class _Regroup:
    """An optimizer whose parameter grouping is worked out again on every step (what keeping it saves)."""

    def __init__(self, opt: Any) -> None:
        self.opt = opt

    def step(self) -> None:
        self.opt.grouping.reset()
        self.opt.step()


def _ablations(lr: float) -> dict[str, dict[str, Callable[[list[nn.Parameter]], Any]]]:
    """Variants without the optimizer's caches, where this rnnkit has them (since the issue-16 redesign)."""
    if not hasattr(Optimizer([torch.zeros(1)], [weight_decay], lr=lr), "grouping"):
        return {"Adam(W)": {}, "RMSProp": {}}
    return {
        "Adam(W)": {
            "rnnkit Adam, regroup every step": lambda ps: _Regroup(Adam(ps, lr=lr)),
            "rnnkit Adam, impl='foreach', fresh buffers": lambda ps: _fresh_buffers(
                _with_impl(Adam(ps, lr=lr), "foreach")),
        },
        "RMSProp": {"rnnkit RMSProp, fresh buffers": lambda ps: _fresh_buffers(RMSProp(ps, lr=lr))},
    }


def algorithms(lr: float = 1e-3) -> dict[str, dict[str, Callable[[list[nn.Parameter]], Any]]]:
    """For each algorithm, its variants: `name -> build(params)`; torch ones start with 'torch'."""
    adam_kw = dict(lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
    ablations = _ablations(lr)
    return {
        "Adam(W)": {
            "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, foreach=True, **adam_kw),
            "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, fused=True, **adam_kw),
            "rnnkit Adam": lambda ps: Adam(ps, lr=lr),
            "rnnkit Adam, impl='foreach'": lambda ps: _with_impl(Adam(ps, lr=lr), "foreach"),
            "rnnkit Adam chain + user adam_step": lambda ps: Optimizer(
                ps, [weight_decay, partial(average_grad, dampening=True), average_sqr_grad,
                     step_stat, user_adam_step], lr=lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01),
            **ablations["Adam(W)"],
        },
        "SGD mom=0.9": {
            "torch SGD foreach": lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9, foreach=True),
            "torch SGD fused": lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9, fused=True),
            "rnnkit SGD": lambda ps: SGD(ps, lr=lr, mom=0.9),
            "rnnkit SGD chain + user momentum_step": lambda ps: Optimizer(
                ps, [weight_decay, average_grad, user_momentum_step], lr=lr, mom=0.9, wd=0.0),
        },
        "RMSProp": {
            "torch RMSprop foreach": lambda ps: torch.optim.RMSprop(ps, lr=lr, alpha=0.99, eps=1e-8,
                                                                    foreach=True),
            "rnnkit RMSProp": lambda ps: RMSProp(ps, lr=lr),
            "rnnkit RMSProp chain + user rms_prop_step": lambda ps: Optimizer(
                ps, [weight_decay, average_sqr_grad, user_rms_prop_step], lr=lr, sqr_mom=0.99,
                eps=1e-8, wd=0.0),
            **ablations["RMSProp"],
        },
    }


def bench_set(label: str, params: list[nn.Parameter], desc: str, reps: int, steps: int) -> list[str]:
    """Time every variant of every algorithm on `params`; return the lines of a verdict."""
    n = sum(p.numel() for p in params)
    print(f"\n({label}) {desc}: {n / 1e6:.1f}M parameters in {len(params)} tensors, "
          f"median of {reps} x {steps} steps")
    print(f"{'algorithm':14s} {'variant':44s} {'ms/step':>9s} {'vs fastest torch':>17s}")
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-2
    verdicts = []
    for algo, variants in algorithms().items():
        opts = {k: build(params) for k, build in variants.items()}
        for o in opts.values():  # warm-up: state, scratch buffers, plans
            o.step()
        times: dict[str, list[float]] = {k: [] for k in opts}
        for _ in range(reps):
            for k, o in opts.items():
                t = time.perf_counter()
                for _ in range(steps):
                    o.step()
                times[k].append((time.perf_counter() - t) / steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        best_torch = min(v for k, v in med.items() if k.startswith("torch"))
        for k, v in med.items():
            print(f"{algo:14s} {k:44s} {1000 * v:9.2f} {v / best_torch:16.2f}x")
        ours = next(k for k in med if k.startswith("rnnkit"))
        ratio, target = med[ours] / best_torch, TARGETS[label]
        verdicts.append(f"({label}) {ours:14s} {ratio:5.2f}x fastest torch (target <= {target}x): "
                        f"{'ok' if ratio <= target else 'MISSED'}")
        del opts
        gc.collect()
    return verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--only", choices=["a", "b"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    verdicts = []
    if args.only in (None, "a"):
        ps, desc = awd_lstm_lm_params()
        verdicts += bench_set("a", ps, desc, args.reps, steps=3)
        del ps
        gc.collect()
    if args.only in (None, "b"):
        ps, desc = linear_params()
        verdicts += bench_set("b", ps, desc, args.reps, steps=20)
    print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    main()
