"""Cost of scaling dropout masks by fastai's exact 1/(1 - p): `div_(1 - p)` against `mul_` by a scale
computed once (what `dropout_mask` did before it took fastai's value, with the scale of the rounded p).

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_dropout.py [--reps 31]

'div' and 'mul' draw the same 16-bit CPU mask and differ only in the scaling; 'rand' is the plain mask
(`torch.rand(sz) >= p`, one float32 uniform per element) that the 16-bit draws replace. They alternate rep by rep
in one process on 2 threads; the figures are medians over the reps, in microseconds per mask.
Shapes are those of the fastai-size AWD-LSTM (emb 400, hid 1152, vocab 10,000, bs 32).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from rnnkit.models.dropout import dropout_mask

SHAPES = {
    "weight_hh 4608x1152": (4608, 1152),
    "weight_hh 1600x400": (1600, 400),
    "embedding rows 10000x1": (10_000, 1),
    "RNNDropout 32x1x1152": (32, 1, 1152),
}


def mask_mul(x: torch.Tensor, sz: tuple[int, ...], p: float, scale: float) -> torch.Tensor:
    """The 16-bit CPU mask of `dropout_mask`, scaled by multiplying with a precomputed `scale`."""
    n = math.prod(sz)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    mask = torch.empty(sz, dtype=x.dtype)
    torch.ge(bits.view(torch.int16)[:n].view(mask.shape), round(p * 65536) - 32768, out=mask)
    return mask.mul_(scale)


def mask_rand(x: torch.Tensor, sz: tuple[int, ...], p: float) -> torch.Tensor:
    """The plain mask, one float32 uniform per element (what the 16-bit mask replaces)."""
    return (torch.rand(sz) >= p).to(x.dtype).div_(1 - p)


def time_us(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=31)
    parser.add_argument("--p", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    p = args.p
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.empty(0, dtype=dtype)
        scale = torch.ones((), dtype=dtype).div_(1 - p).item()
        for label, sz in SHAPES.items():
            n = max(1, 2_000_000 // math.prod(sz))  # about 2M mask elements per timing
            variants = {"div (shipped)": lambda: dropout_mask(x, sz, p), "mul": lambda: mask_mul(x, sz, p, scale),
                        "rand": lambda: mask_rand(x, sz, p)}
            times: dict[str, list[float]] = {k: [] for k in variants}
            for fn in variants.values():
                fn()  # warm-up
            for _ in range(args.reps):
                for k, fn in variants.items():
                    times[k].append(time_us(fn, n))
            med = {k: statistics.median(v) for k, v in times.items()}
            extra = med["div (shipped)"] - med["mul"]
            print(f"{str(dtype):15} {label:24} " + "  ".join(f"{k} {v:9.1f} us" for k, v in med.items())
                  + f"  div costs {extra:+7.1f} us ({extra / med['mul']:+.1%}); 16-bit draws "
                  f"{med['rand'] / med['div (shipped)']:.1f}x faster than rand")


if __name__ == "__main__":
    main()
