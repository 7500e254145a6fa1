"""Learner overhead against a plain PyTorch loop, and rnnkit Adam against torch.optim.AdamW.

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_learner.py
The variants alternate within one process; figures are medians over repetitions.

Workload (issue 2): a 2-layer LSTM language model of 64 units on Human Numbers, bs=64,
sl=16; one epoch = 49 training batches (forward, loss, backward, step) plus 12
validation batches (loss and accuracy). `--model 7` uses the chapter's LMModel7 (dropout 0.4,
tied weights, `(logits, raw, dropped)` outputs split by RNNCallback) instead of LMModel6.
The last variant adds a callback that overrides `__call__` (fastai's VerboseCallback pattern,
doing nothing): it receives every event, so it shows what such a callback costs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

os.environ.setdefault("RNNKIT_NO_PROGRESS", "1")

from rnnkit.callbacks.rnn import ModelResetter, RNNCallback  # noqa: E402
from rnnkit.data.human_numbers import human_numbers_lm_dls  # noqa: E402
from rnnkit.losses import CrossEntropyLossFlat  # noqa: E402
from rnnkit.metrics import accuracy  # noqa: E402
from rnnkit.models.book import LMModel6, LMModel7  # noqa: E402
from rnnkit.optim import Adam, OptimWrapper  # noqa: E402
from rnnkit.training.callback import Callback  # noqa: E402
from rnnkit.training.learner import Learner  # noqa: E402


class CallEveryEvent(Callback):
    """Overrides `__call__`, as a fastai user's logging callback does; does nothing else."""

    def __call__(self, event_name):
        return super().__call__(event_name)


def _logits(out):
    return out[0] if isinstance(out, tuple) else out


def plain_epoch(model, dls, opt, vocab_sz):
    """The same work as one Learner epoch, written as a bare PyTorch loop."""
    model.train()
    model.reset()
    for xb, yb in dls.train:
        loss = F.cross_entropy(_logits(model(xb)).view(-1, vocab_sz), yb.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.reset()
    tot_loss, tot_acc, n = 0.0, 0.0, 0
    with torch.no_grad():
        for xb, yb in dls.valid:
            out = _logits(model(xb))
            bs = yb.shape[0]
            tot_loss += F.cross_entropy(out.view(-1, vocab_sz), yb.view(-1)) * bs
            tot_acc += (out.argmax(-1) == yb).float().mean() * bs
            n += bs
    return float(tot_loss / n), float(tot_acc / n)


def time_it(f, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return ts


def bench_learner(reps: int, model_no: int = 6) -> None:
    dls, vocab = human_numbers_lm_dls(bs=64, sl=16)
    n_batches = len(dls.train) + len(dls.valid)
    v = len(vocab)

    def fresh_model():
        torch.manual_seed(0)
        return LMModel7(v, 64, 2, 0.4) if model_no == 7 else LMModel6(v, 64, 2)

    def cbs(*extra):
        return ([ModelResetter(), RNNCallback()] if model_no == 7 else [ModelResetter()]) + list(extra)

    # Each variant keeps its own model and optimizer; epochs alternate between variants.
    m_plain = fresh_model()
    opt_plain = torch.optim.AdamW(m_plain.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-5,
                                  weight_decay=0.01, foreach=True)
    learn_wrap = Learner(dls, fresh_model(), loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                         cbs=cbs(), opt_func=partial(OptimWrapper, opt=torch.optim.AdamW, foreach=True))
    learn_adam = Learner(dls, fresh_model(), loss_func=CrossEntropyLossFlat(), metrics=accuracy, cbs=cbs())
    learn_call = Learner(dls, fresh_model(), loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                         cbs=cbs(CallEveryEvent()))
    variants = {
        "plain loop (torch AdamW foreach)": lambda: plain_epoch(m_plain, dls, opt_plain, v),
        "Learner.fit, OptimWrapper(AdamW foreach)": lambda: learn_wrap.fit(1),
        "Learner.fit_one_cycle, OptimWrapper(AdamW)": lambda: learn_wrap.fit_one_cycle(1),
        "Learner.fit, rnnkit Adam": lambda: learn_adam.fit(1),
        "Learner.fit, rnnkit Adam, + __call__ callback": lambda: learn_call.fit(1),
    }
    for learn in (learn_wrap, learn_adam, learn_call):
        learn.logger = lambda row: None  # the per-epoch rows would interleave with the report
    for f in variants.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for k, f in variants.items():
            times[k] += time_it(f, 1)
    base = statistics.median(times["plain loop (torch AdamW foreach)"])
    print(f"\nLearner vs plain loop: LMModel{model_no}(2 layers, 64), bs=64, sl=16, {n_batches} batches/epoch, "
          f"median of {reps}")
    print(f"{'variant':48s} {'ms/batch':>9s} {'vs plain':>9s}")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"{k:48s} {1000 * med / n_batches:9.3f} {med / base:8.3f}x")


def bench_overhead(reps: int) -> None:
    """The Learner's own cost per batch: a Linear(4, 3) on 4,000 items, bs 8, where the model is nearly free."""
    from rnnkit.data.core import DataLoaders
    from rnnkit.optim import SGD

    g = torch.Generator().manual_seed(0)
    items = [(torch.randn(4, generator=g), int(torch.randint(0, 3, (1,), generator=g))) for _ in range(4000)]
    dls = DataLoaders.from_dsets(items, items[:400], bs=8)
    n_batches = len(dls.train) + len(dls.valid)

    def learner(**kw):
        torch.manual_seed(0)
        learn = Learner(dls, torch.nn.Linear(4, 3), loss_func=F.cross_entropy, opt_func=SGD, lr=0.01, **kw)
        learn.logger = lambda row: None
        return learn

    m_plain = torch.nn.Linear(4, 3)
    opt_plain = torch.optim.SGD(m_plain.parameters(), lr=0.01)

    def plain():
        for xb, yb in dls.train:
            F.cross_entropy(m_plain(xb), yb).backward()
            opt_plain.step()
            opt_plain.zero_grad()
        with torch.no_grad():
            for xb, yb in dls.valid:
                F.cross_entropy(m_plain(xb), yb)

    dropping = learner()
    dropping.drop_grads = True
    variants = {"plain loop (torch SGD)": plain, "Learner.fit (grads zeroed in place)": learner().fit,
                "Learner.fit, drop_grads=True": dropping.fit,
                "Learner.fit, + __call__ callback": learner(cbs=CallEveryEvent()).fit}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for f in variants.values():
        f() if f is plain else f(1)
    for _ in range(reps):
        for k, f in variants.items():
            times[k] += time_it(plain if f is plain else (lambda f=f: f(1)), 1)
    print(f"\nLearner overhead: Linear(4, 3), bs 8, {n_batches} batches/epoch, median of {reps}")
    base = statistics.median(times["plain loop (torch SGD)"])
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"{k:48s} {1e6 * med / n_batches:9.1f} us/batch {1e6 * (med - base) / n_batches:+8.1f} us")


def bench_adam(reps: int) -> None:
    from rnnkit.models.book import LMModel6

    cases = {
        "LMModel6(2x64) params": lambda: list(LMModel6(30, 64, 2).parameters()),
        "200 x Linear(64,64)": lambda: [p for _ in range(200) for p in torch.nn.Linear(64, 64).parameters()],
    }
    print(f"\nOptimizer step, median of {reps} x 20 steps")
    print(f"{'params':24s} {'optimizer':34s} {'ms/step':>9s} {'vs AdamW fastest':>17s}")
    for name, make in cases.items():
        torch.manual_seed(0)
        opts = {}
        for label, build in {
            "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
            "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
            "rnnkit Adam": lambda ps: Adam(ps, lr=1e-3),
        }.items():
            ps = make()
            for p in ps:
                p.grad = torch.randn_like(p)
            opts[label] = build(ps)
        times = {k: [] for k in opts}
        for _ in range(reps):
            for k, o in opts.items():
                times[k] += [t / 20 for t in time_it(lambda: [o.step() for _ in range(20)], 1)]
        best = min(statistics.median(times[k]) for k in ("torch AdamW foreach", "torch AdamW fused"))
        for k, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:24s} {k:34s} {1000 * med:9.3f} {med / best:16.2f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--model", type=int, choices=(6, 7), default=6, help="the chapter's LMModel6 or LMModel7")
    ap.add_argument("--no-adam", action="store_true", help="skip the optimizer-step comparison")
    ap.add_argument("--overhead", action="store_true", help="only the per-batch overhead with a tiny model")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.overhead:
        bench_overhead(args.reps)
        raise SystemExit
    bench_learner(args.reps, args.model)
    bench_overhead(args.reps)
    if not args.no_adam:
        bench_adam(args.reps)
