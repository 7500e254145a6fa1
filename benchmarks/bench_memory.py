"""Resident memory and speed of long language-model training runs under each allocator setting (issue 13).

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_memory.py
Options: --corpora wikitext-2 ptb synthetic-100k, --settings none old new, --steps N (default: two epochs'
worth of each corpus), --warmup N, --random-bptt, --no-pool, --preset, --bs, --bptt, --reps N, --threads N,
--trace.

For each corpus and setting a fresh process (malloc settings are process-wide) trains an AWD-LSTM (the
`small` preset by default, as `rnnkit train` does: Adam, one-cycle, AR/TAR, all dropouts) at bs 64 x bptt 70 and
reads its resident memory after every training step. Settings:

none    glibc's defaults.
old     mallopt serving blocks up to 1 GiB from the heap and keeping 1 GiB free at its top: what
        `reuse_freed_memory()` did before issue 13 (its heap grew without bound on WikiText-2).
new     what the `rnnkit` command does now: the same 1 GiB mallopt setting, bounded by the
        `ReleaseFreedMemory` callback (the heap's free memory goes back to the system whenever it exceeds
        what a step needed during the warm-up by a quarter, and after validation).

All three run today's code, whose decoder logits and cross-entropy gradient come from
`rnnkit.memory.buffer_pool` (and whose cross-entropy runs in row chunks); `--no-pool` turns both off, so
`--settings old --no-pool` is rnnkit as it was before issue 13.

Printed per run: tokens/s over the steps after the warm-up, resident memory
at the end of the warm-up and at the end, the growth between them, the largest growth at any step after
the warm-up, and the peak (VmHWM). With --reps > 1 the settings run in a rotated order each repetition and
the table gives medians.

Corpora: WikiText-2 and PTB from ../shared/data (or --data-root); synthetic-100k is uniform random ids over
a 100,000-word vocabulary (logits of 1.8 GB per step at bs 64 x bptt 70), 100 steps an epoch.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SYNTHETIC_VOCAB = 100_000


def _old_setting() -> None:
    """The allocator setting rnnkit used before issue 13 (kept here only to measure it)."""
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _dls(corpus: str, args: argparse.Namespace):
    import numpy as np

    from rnnkit.data.corpora import read_corpus
    from rnnkit.data.text import TextDataLoaders

    kw = dict(bs=args.bs, seq_len=args.bptt, random_bptt=args.random_bptt, seed=0)
    if corpus == "synthetic-100k":
        n_train = args.bs * args.bptt * 100 + 1  # 100 steps an epoch
        ids = np.random.default_rng(0).integers(0, SYNTHETIC_VOCAB, n_train + args.bs * args.bptt * 5)
        return TextDataLoaders.from_tensors(ids[:n_train], ids[n_train:], [f"w{i}" for i in range(SYNTHETIC_VOCAB)],
                                            **kw)
    return TextDataLoaders.from_corpus(read_corpus(corpus, args.data_root / corpus), **kw)


def child(corpus: str, setting: str, args: argparse.Namespace) -> None:
    """One run: print a JSON line with the figures."""
    if setting == "old":
        _old_setting()
    elif setting == "new":
        from rnnkit.cli import _set_up_memory

        _set_up_memory()
    import torch

    torch.set_num_threads(args.threads)
    if args.no_pool:
        from rnnkit.memory import buffer_pool

        buffer_pool.min_bytes = 1 << 62  # no output is large enough: plain F.linear and F.cross_entropy
    from rnnkit.models.awd_lstm import AWD_LSTM_CONFIGS
    from rnnkit.text.learner import language_model_learner
    from rnnkit.training.callback import Callback
    from rnnkit.training.events import CancelFitException

    dls = _dls(corpus, args)
    steps = args.steps or 2 * len(dls.train)
    torch.manual_seed(0)
    learn = language_model_learner(dls, config=AWD_LSTM_CONFIGS[args.preset], metrics=[])
    if setting == "new":
        from rnnkit.callbacks.memory import ReleaseFreedMemory

        learn.add_cb(ReleaseFreedMemory())

    class Sample(Callback):
        order = 100

        def before_fit(self) -> None:
            self.rss, self.times, self.tokens = [], [], []

        def after_batch(self) -> None:
            if not self.training:
                return
            self.rss.append(_rss())
            self.times.append(time.perf_counter())
            self.tokens.append(self.learn.xb[0].numel())
            if len(self.rss) >= steps:
                raise CancelFitException

    s = Sample()
    learn.add_cb(s)
    n_epochs = math.ceil(steps / len(dls.train)) + 1
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(n_epochs, 2e-3)
    w = args.warmup
    rss = [r / 2**20 for r in s.rss]
    # speed from the median step time: a validation pass at an epoch boundary falls in one gap between
    # two samples, which the median ignores
    gaps = [b - a for a, b in zip(s.times[w - 1:], s.times[w:])]
    tok = statistics.mean(s.tokens[w:])
    print(json.dumps(dict(corpus=corpus, setting=setting, steps=len(rss), tokens_per_s=tok / statistics.median(gaps),
                          rss_warm=rss[w - 1], rss_end=rss[-1], growth=rss[-1] - rss[w - 1],
                          max_growth=max(rss[w:]) - rss[w - 1], peak=_peak() / 2**20,
                          trace=[round(r) for r in rss[:: max(1, len(rss) // 40)]])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpora", nargs="+", default=["wikitext-2", "ptb", "synthetic-100k"],
                   choices=["wikitext-2", "ptb", "synthetic-100k"])
    p.add_argument("--settings", nargs="+", default=["none", "old", "new"], choices=["none", "old", "new"])
    p.add_argument("--steps", type=int, default=0, help="training steps per run (0: two epochs' worth)")
    p.add_argument("--warmup", type=int, default=30, help="steps before growth is counted")
    p.add_argument("--preset", default="small", choices=["small", "fastai", "paper"])
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--bptt", type=int, default=70)
    p.add_argument("--random-bptt", action="store_true")
    p.add_argument("--no-pool", action="store_true", help="plain logits and cross-entropy, as before issue 13")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--trace", action="store_true", help="also print each run's resident memory trace (MB)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--child", nargs=2, metavar=("CORPUS", "SETTING"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, args)
        return
    passthrough = [f"--steps={args.steps}", f"--warmup={args.warmup}", f"--bs={args.bs}", f"--bptt={args.bptt}",
                   f"--threads={args.threads}", f"--data-root={args.data_root}", f"--preset={args.preset}"]
    passthrough += (["--random-bptt"] if args.random_bptt else []) + (["--no-pool"] if args.no_pool else [])
    shape = f"bs {args.bs} x bptt {args.bptt}" + (" (random)" if args.random_bptt else "")
    shape += ", no pool" if args.no_pool else ""
    print(f"{args.preset} preset, {shape}, {args.threads} threads, warm-up {args.warmup} steps; memory in MB")
    print(f"{'corpus':15s} {'setting':7s} {'steps':>5s} {'tokens/s':>9s} {'rss warm':>9s} {'rss end':>8s} "
          f"{'growth':>7s} {'max gr.':>7s} {'peak':>7s}")
    for corpus in args.corpora:
        runs: dict[str, list[dict]] = {s: [] for s in args.settings}
        for rep in range(args.reps):
            order = args.settings[rep % len(args.settings):] + args.settings[: rep % len(args.settings)]
            for setting in order:
                out = subprocess.run([sys.executable, __file__, "--child", corpus, setting, *passthrough],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{corpus} {setting}: failed\n{out.stderr[-3000:]}")
                    continue
                runs[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for setting, rs in runs.items():
            if not rs:
                continue
            med = {k: statistics.median(r[k] for r in rs) for k in
                   ("steps", "tokens_per_s", "rss_warm", "rss_end", "growth", "max_growth", "peak")}
            print(f"{corpus:15s} {setting:7s} {med['steps']:5.0f} {med['tokens_per_s']:9.0f} {med['rss_warm']:9.0f} "
                  f"{med['rss_end']:8.0f} {med['growth']:+7.0f} {med['max_growth']:+7.0f} {med['peak']:7.0f}")
            if args.trace:
                for r in rs:
                    print("   trace:", " ".join(map(str, r["trace"])))
        base = statistics.median(r["tokens_per_s"] for r in runs.get("none", [])) if runs.get("none") else None
        if base:
            print("   tokens/s vs none: " + ", ".join(
                f"{s} {statistics.median(r['tokens_per_s'] for r in rs) / base:.2f}x" for s, rs in runs.items() if rs))


if __name__ == "__main__":
    main()
