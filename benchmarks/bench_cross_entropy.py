"""Cross-entropy forward + backward on a language model's logits: torch's `F.cross_entropy` against
rnnkit's `CrossEntropyLossFlat` (row chunks, gradient into a pooled buffer), at several chunk sizes.

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_cross_entropy.py
Options: --shapes N:C ..., --reps N, --threads N, --bf16.

--bf16: bfloat16 logits under CPU autocast (what a decoder gives with `--precision bf16`): autocast's own
path (the logits cast to float32, then torch's loss) against rnnkit's chunks computed in float32 from the
bfloat16 logits, with the gradient stored in bfloat16.

Shapes: 4480 x 10000 (PTB, bs 64 x bptt 70) and 4480 x 33278 (WikiText-2). The variants alternate in one
process; medians of --reps rounds. torch's loss allocates three logits-sized blocks per call (the
log-probabilities, the zero-filled gradient of them, the gradient of the logits), which glibc maps
afresh each time; rnnkit's allocates none after the first call.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

import rnnkit.losses as losses
from rnnkit.losses import CrossEntropyLossFlat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["4480:10000", "4480:33278"])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loss_func, library_chunk = CrossEntropyLossFlat(), losses._CE_CHUNK_BYTES
    for shape in args.shapes:
        n, c = map(int, shape.split(":"))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, generator=g)
        x = (x.bfloat16() if args.bf16 else x).requires_grad_()
        t = torch.randint(0, c, (n,), generator=g)
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

        def torch_ce() -> None:
            with ctx():
                loss = F.cross_entropy(x.float() if args.bf16 else x, t)
            torch.autograd.grad(loss, x)

        def rnnkit_ce(chunk: int):
            def run() -> None:
                losses._CE_CHUNK_BYTES = chunk
                with ctx():
                    loss = loss_func(x, t)
                torch.autograd.grad(loss, x)
            return run

        variants = {"torch F.cross_entropy": torch_ce}
        variants.update({f"rnnkit, {kb} KiB chunks": rnnkit_ce(kb << 10) for kb in (256, 1024, 4096)})
        times: dict[str, list[float]] = {k: [] for k in variants}
        for f in variants.values():
            f()  # warm-up
        for _ in range(args.reps):
            for k, f in variants.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        base = statistics.median(times["torch F.cross_entropy"])
        print(f"{n} x {c}{' bfloat16 logits under autocast' if args.bf16 else ''}:")
        for k, v in times.items():
            print(f"  {k:24s} {statistics.median(v) * 1e3:8.1f} ms  ({base / statistics.median(v):.2f}x torch)")
    losses._CE_CHUNK_BYTES = library_chunk


if __name__ == "__main__":
    main()
