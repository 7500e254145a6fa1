"""AR/TAR with rnnkit's hand-written backward (`callbacks/rnn.py: ar_tar`) against autograd's version of the
same formula, forward + backward, on the activations of an AWD-LSTM step.

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_ar_tar.py
The two variants alternate in one process; figures are medians over repetitions. Shapes: (bs, bptt, n) of
the last LSTM layer's output: the `small` preset (64 x 16 x 200, Human Numbers), the `medium` one
(32 x 70 x 256) and fastai's AWD-LSTM (32 x 70 x 400).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnkit.callbacks.rnn import ar_tar

SHAPES = {"small": (64, 16, 200), "medium": (32, 70, 256), "fastai": (32, 70, 400)}


def autograd_ar_tar(out: torch.Tensor, raw: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """fastai's RNNRegularizer formula, differentiated by autograd."""
    return alpha * out.float().pow(2).mean() + beta * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()


def time_one(f, shape: tuple[int, int, int], dtype: torch.dtype, n: int) -> float:
    g = torch.Generator().manual_seed(0)
    out = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    raw = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    t = time.perf_counter()
    for _ in range(n):
        f(out, raw, 2.0, 1.0).backward()
        out.grad = raw.grad = None
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--n", type=int, default=50, help="calls per timed repetition")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; forward + backward, median of "
          f"{args.reps} x {args.n} calls")
    print(f"{'shape':8s} {'dtype':9s} {'rnnkit us':>10s} {'autograd us':>12s} {'ratio':>7s}")
    for name, shape in SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            times: dict[str, list[float]] = {"rnnkit": [], "autograd": []}
            for f in (ar_tar, autograd_ar_tar):  # warm-up
                time_one(f, shape, dtype, 3)
            for _ in range(args.reps):
                times["rnnkit"].append(time_one(ar_tar, shape, dtype, args.n))
                times["autograd"].append(time_one(autograd_ar_tar, shape, dtype, args.n))
            ours, ref = (statistics.median(times[k]) * 1e6 for k in ("rnnkit", "autograd"))
            print(f"{name:8s} {str(dtype)[6:]:9s} {ours:10.0f} {ref:12.0f} {ours / ref:6.2f}x")


if __name__ == "__main__":
    main()
