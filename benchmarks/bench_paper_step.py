"""The training step of the AWD-LSTM paper's model with its whole recipe (`--preset paper-ptb` / `paper-wt2`:
emb 400, hid 1150, 3 layers, the four dropouts and weight drop, AR/TAR, clipping, SGD) on this machine, in
fp32 and bf16, and what 750 epochs would take at that speed (docs/full-scale-plan.md).

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_paper_step.py [--data ../shared/data]

The sequence length is fixed at 70 (the recipe's random bptt averages about that). Median of 5 steps after 2.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from rnnkit.config import resolve_config
from rnnkit.run import build_dls, build_learner
from rnnkit.training.callback import Callback
from rnnkit.training.events import CancelFitException


class StepTimer(Callback):
    """Time each training step; end the fit after `n` steps."""

    order = 100

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.times = n, []

    def before_batch(self) -> None:
        if self.learn.training:
            self.t = time.perf_counter()

    def after_batch(self) -> None:
        if self.learn.training:
            self.times.append(time.perf_counter() - self.t)
            if len(self.times) >= self.n:
                raise CancelFitException()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for preset, corpus in (("paper-ptb", "ptb"), ("paper-wt2", "wikitext-2")):
        for precision in ("fp32", "bf16"):
            cfg = resolve_config({}, {"preset": preset, "data": str(args.data / corpus), "out": "/tmp/rnnkit-bench",
                                      "precision": precision, "random_bptt": False})
            dls = build_dls(cfg)
            learn = build_learner(cfg, dls)
            timer = StepTimer(7)
            with learn.no_bar(), learn.no_logging():
                learn.fit(1, cfg.lr, cbs=timer)
            step = statistics.median(timer.times[2:])
            n = len(dls.train)
            print(f"{preset} {precision}: bs {cfg.bs} bptt {cfg.bptt}: {step:.2f} s a step ({cfg.bs * cfg.bptt / step:,.0f} "
                  f"tokens/s), {n} steps an epoch = {step * n / 60:.1f} min; 750 epochs {step * n * 750 / 86400:.1f} days",
                  flush=True)


if __name__ == "__main__":
    main()
