"""Data-parallel AWD-LSTM training on this machine (1 process x 2 threads against 2 DDP processes x 1
thread) and a model of the gradient all-reduce on several machines.

Run with nothing else on the machine:  .venv/bin/python benchmarks/bench_distributed.py
Options: --sizes small fastai, --steps N (timed steps per variant per round), --reps N (timed rounds, after
one warm-up round), --threads N (threads of the one process; each of the two gets half), --only-model (the
analytical part only, no timing).

One training step = forward, cross-entropy, backward, `torch.optim.AdamW(fused=True)` step, on
`get_language_model(AWD_LSTM, vocab_sz, config)` with all its dropouts; the model detaches its hidden state
between steps (truncated BPTT). Random token ids; the same global batch (bs, bptt) for every step.
  1x2  one process, torch.set_num_threads(2), the whole batch.
  2x1  two processes spawned with torch.multiprocessing, torch.set_num_threads(1) each, PyTorch's
       DistributedDataParallel (gloo backend, default buckets), each rank bs/2 rows of the same global
       batch: the same tokens per step as 1x2.
The variants alternate round by round in a shuffled order (the two DDP workers wait blocked on a queue
while 1x2 runs); a 2x1 step lasts as long as its slower rank. Medians over the timed steps; the speed-up
is also given per round (rounds ran seconds apart, so their ratio is robust to the machine's drifts).
All-reduce: `dist.all_reduce` of one flat fp32 buffer of the model's gradient size, timed alone in the
2-process group right after each 2x1 round (median), and its fraction of the 2x1 step.
Sizes: small (the `small` preset, vocab 30 like Human Numbers, bs 64, bptt 16) and fastai (emb 400, hid
1152, 3 layers, vocab 10,000, bs 32, bptt 70).

Model for N machines (printed first; all that --only-model prints): fp32 gradients of every parameter
(the tied embedding once) are all-reduced each step; a ring all-reduce of `bytes` over links of
`bandwidth` takes C = 2 (N-1)/N * bytes / bandwidth (latency left out). DDP all-reduces gradients while
backward still runs, in the order they become ready: the top LSTM's (with the decoder bias) after the
decoder's and its own backward, ..., the first LSTM's and the tied embedding's only when backward ends
(the embedding's gradient is complete only after the embedding's backward, the last one). Backward time
is split between the decoder and the LSTMs in proportion to their weights (their matmul FLOPs per token):
for fastai's size the groups are ready at 0.27, 0.71 and 1.00 of backward; post-accumulate-grad hooks on
one fp32 step on the 2-core machine saw 0.30, 0.71 and 1.00. All-reduces run one after another. The time the all-reduce adds to a step is then
    exposed = max_k (a_k C - b_k B)
over the gradient groups k, with a_k the share of the gradient bytes ready at or after group k, b_k the
share of backward that is left when group k is ready (0 for the last group, so exposed >= a_last C), and
B the backward time, about 2/3 of the step time T. With each machine training on its own batch of the
same size, N machines then do N * T / (T + exposed) times the tokens/s of one.
"""
from __future__ import annotations

import argparse
import queue
import random
import socket
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rnnkit.models.awd_lstm import (
    AWD_LSTM,
    AWD_LSTM_CONFIGS,
    LinearDecoder,
    SequentialRNN,
    get_language_model,
)

SIZES: dict[str, dict[str, Any]] = {
    "small": {"config": "small", "vocab_sz": 30, "bs": 64, "bptt": 16, "steps": 20, "reps": 10, "ar_iters": 20},
    "fastai": {"config": "fastai", "vocab_sz": 10_000, "bs": 32, "bptt": 70, "steps": 4, "reps": 10, "ar_iters": 5},
}
# The analytical part: (config, vocab_sz). paper-wt2 is the paper's model on WikiText-2's vocabulary.
MODEL_SIZES = {"small": ("small", 30), "fastai": ("fastai", 10_000), "paper": ("paper", 10_000),
               "paper-wt2": ("paper", 33_278)}
LINKS_GBPS = (10, 25, 100)
MACHINES = (2, 4, 8)
BACKWARD_SHARE = 2 / 3  # backward ~ 2x forward; the optimizer step is small next to both
WORLD = 2


# ---------------------------------------------------------------- the model of the all-reduce

@dataclass
class GradGroup:
    """Gradients that become ready together during backward."""

    name: str
    n_params: int
    ready: float  # share of the backward time done when these gradients are ready


def grad_groups(model: SequentialRNN) -> list[GradGroup]:
    """The gradient groups of an AWD-LSTM language model in the order backward makes them ready."""
    encoder, head = model[0], model[1]
    assert isinstance(encoder, AWD_LSTM) and isinstance(head, LinearDecoder), model
    decoder = head.decoder
    emb = encoder.encoder.weight.numel()
    lstm = [sum(p.numel() for p in rnn.parameters()) for rnn in encoder.rnns]
    work = emb + sum(lstm)  # backward work ~ weights: the tied decoder's matmul, then each LSTM's
    bias = decoder.bias.numel() if decoder.bias is not None else 0
    untied = 0 if decoder.weight is encoder.encoder.weight else decoder.weight.numel()
    groups, done = [], emb
    for i in range(len(lstm) - 1, 0, -1):  # top LSTM first; the decoder's own parameters ride with it
        done += lstm[i]
        extra = bias + untied if i == len(lstm) - 1 else 0
        groups.append(GradGroup(f"LSTM {i}" + (" + decoder" if extra else ""), lstm[i] + extra, done / work))
    # The first LSTM's gradients are ready when its backward ends, the embedding's after the embedding's
    # backward (a cheap scatter, counted as no work): both when the whole backward ends.
    first = lstm[0] + (bias + untied if len(lstm) == 1 else 0)
    groups.append(GradGroup("LSTM 0 + embedding", first + emb, 1.0))
    return groups


def exposure_terms(groups: list[GradGroup]) -> list[tuple[float, float]]:
    """(a_k, b_k) of exposed = max_k (a_k C - b_k B): bytes share ready at or after group k, backward share left."""
    total = sum(g.n_params for g in groups)
    return [(sum(g.n_params for g in groups[k:]) / total, 1.0 - groups[k].ready) for k in range(len(groups))]


def exposed_ms(terms: list[tuple[float, float]], c_ms: float, backward_ms: float) -> float:
    """Time the all-reduces (C in all, run one after another) add after a backward of `backward_ms`."""
    return max(0.0, max(a * c_ms - b * backward_ms for a, b in terms))


def hiding_backward_ms(terms: list[tuple[float, float]], c_ms: float) -> float:
    """Backward time above which all but the last group's all-reduce is hidden."""
    a_last = terms[-1][0]
    return max([(a - a_last) * c_ms / b for a, b in terms[:-1]], default=0.0)


def ring_allreduce_ms(n_bytes: float, machines: int, gbps: float) -> float:
    """Bandwidth term of a ring all-reduce: 2 (N-1)/N * bytes / bandwidth."""
    return 2 * (machines - 1) / machines * n_bytes / (gbps * 1e9 / 8) * 1e3


def make_model(config: str, vocab_sz: int) -> SequentialRNN:
    torch.manual_seed(0)
    return get_language_model(AWD_LSTM, vocab_sz, AWD_LSTM_CONFIGS[config])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields the tied matrix once


def print_model() -> dict[str, list[tuple[float, float]]]:
    """Print the analytical part; return the exposure terms by size."""
    print("\n== Gradient bytes per step (fp32, 4 bytes a parameter, the tied embedding counted once) ==")
    print(f"  {'size':10s} {'config':7s} {'vocab':>6s} {'params':>11s} {'MB/step':>8s}  exposed = max over groups of")
    info = {}
    for size, (config, vocab_sz) in MODEL_SIZES.items():
        model = make_model(config, vocab_sz)
        terms = exposure_terms(grad_groups(model))
        info[size] = (n_params(model) * 4, terms)
        formula = ", ".join(f"{a:.2f}C" + (f" - {b:.2f}B" if b else "") for a, b in terms)
        print(f"  {size:10s} {config:7s} {vocab_sz:6d} {n_params(model):11,d} {n_params(model) * 4 / 1e6:8.2f}  "
              f"max({formula})")
    print("  groups, in the order backward makes them ready: "
          + "; ".join(f"{size}: " + ", ".join(g.name for g in grad_groups(make_model(*MODEL_SIZES[size])))
                      for size in ("small", "fastai")))
    print(f"\n== Ring all-reduce C = 2(N-1)/N * bytes / bandwidth; backward B* above which all but the last group "
          f"is hidden, step T* = B* / {BACKWARD_SHARE:.2f}; then exposed = a_last * C ==")
    print(f"  {'size':10s} {'link':>8s} " + " ".join(f"{'N=' + str(n):>28s}" for n in MACHINES))
    print(f"  {'':10s} {'':>8s} " + " ".join(f"{'C / B* / T* / exposed ms':>28s}" for _ in MACHINES))
    for size, (n_bytes, terms) in info.items():
        for gbps in LINKS_GBPS:
            cells = []
            for n in MACHINES:
                c = ring_allreduce_ms(n_bytes, n, gbps)
                b_star = hiding_backward_ms(terms, c)
                cells.append(f"{c:6.2f} / {b_star:6.2f} / {b_star / BACKWARD_SHARE:6.2f} / {terms[-1][0] * c:5.2f}")
            print(f"  {size:10s} {str(gbps) + ' Gb/s':>8s} " + " ".join(f"{cell:>28s}" for cell in cells))
    return {size: terms for size, (_, terms) in info.items()}


# ---------------------------------------------------------------- timing

def global_batch(size: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (bs, bptt) inputs and targets in every process."""
    s = SIZES[size]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, s["vocab_sz"], (s["bs"], s["bptt"]), generator=g)
    return x, torch.randint(0, s["vocab_sz"], (s["bs"], s["bptt"]), generator=g)


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, vocab_sz: int,
              parts: list[tuple[float, float, float]] | None = None) -> Callable[[], float]:
    """A training step returning its seconds; `parts` collects (forward+loss, backward, optimizer) seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    model.train()

    def step() -> float:
        t0 = time.perf_counter()
        logits = model(x)[0]  # (bs, bptt, vocab_sz)
        loss = F.cross_entropy(logits.reshape(-1, vocab_sz), y.reshape(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if parts is not None:
            parts.append((t1 - t0, t2 - t1, t3 - t2))
        return t3 - t0

    return step


def _worker(rank: int, port: int, threads: int, cmd_qs: list[Any], res_q: Any) -> None:
    """A DDP rank: builds each size's model on first use, then runs (size, steps, ar_iters) rounds."""
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    steps: dict[str, tuple[Callable[[], float], torch.Tensor]] = {}
    try:
        while (cmd := cmd_qs[rank].get()) is not None:
            size, n_steps, ar_iters = cmd
            if size not in steps:
                s = SIZES[size]
                model = make_model(s["config"], s["vocab_sz"])
                ddp = DistributedDataParallel(model)  # broadcasts rank 0's weights
                x, y = global_batch(size)
                rows = slice(rank * s["bs"] // WORLD, (rank + 1) * s["bs"] // WORLD)  # (bs/2, bptt)
                steps[size] = (make_step(ddp, x[rows], y[rows], s["vocab_sz"]), torch.zeros(n_params(model)))
            step, flat = steps[size]
            dist.barrier()
            times = [step() for _ in range(n_steps)]
            dist.barrier()
            ar = []
            for _ in range(ar_iters):
                t = time.perf_counter()
                dist.all_reduce(flat)
                ar.append(time.perf_counter() - t)
            res_q.put((rank, times, ar))
    except Exception:
        res_q.put((rank, None, traceback.format_exc()))  # the main process would otherwise wait forever
        raise
    finally:
        dist.destroy_process_group()


def _collect(ctx: Any, res_q: Any) -> dict[int, tuple[list[float], list[float]]]:
    """One result per rank; stops with the worker's traceback if a rank failed."""
    out: dict[int, tuple[list[float], list[float]]] = {}
    while len(out) < WORLD:
        try:
            rank, times, ar = res_q.get(timeout=1.0)
        except queue.Empty:  # check that the workers still live
            dead = [p.exitcode for p in ctx.processes if not p.is_alive()]
            if dead:
                raise SystemExit(f"a DDP worker exited (exit codes {dead}) without reporting; see its output above")
            continue
        if times is None:
            raise SystemExit(f"DDP rank {rank} failed:\n{ar}")
        out[rank] = (times, ar)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench(size: str, steps: int, reps: int, threads: int, ctx: Any, cmd_qs: list[Any],
          res_q: Any) -> dict[str, Any]:
    """Per-step seconds of 1x2 and 2x1, all-reduce seconds, per-round speed-ups and the 1x2 step's parts."""
    s = SIZES[size]
    x, y = global_batch(size)
    parts: list[tuple[float, float, float]] = []  # this round's
    all_parts: list[tuple[float, float, float]] = []
    one = make_step(make_model(s["config"], s["vocab_sz"]), x, y, s["vocab_sz"], parts)
    times: dict[str, list[float]] = {"1x2": [], "2x1": []}
    ar_times: list[float] = []
    ratios = []
    order = list(times)
    rng = random.Random(0)
    for rep in range(reps + 1):  # the first round warms up (and builds the DDP models)
        rng.shuffle(order)
        round_times = {}
        for variant in order:
            if variant == "1x2":
                torch.set_num_threads(threads)
                del parts[:]
                round_times[variant] = [one() for _ in range(steps)]
            else:
                for q in cmd_qs:
                    q.put((size, steps, s["ar_iters"]))
                res = _collect(ctx, res_q)
                round_times[variant] = [max(ts) for ts in zip(*(res[r][0] for r in range(WORLD)))]
                if rep:
                    ar_times += res[0][1]
        if rep:
            for variant, ts in round_times.items():
                times[variant] += ts
            all_parts += parts
            ratios.append(statistics.median(round_times["1x2"]) / statistics.median(round_times["2x1"]))
    return {"times": times, "ar": ar_times, "ratios": ratios, "parts": all_parts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant per round (default: 20 small, 4 fastai)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds after one warm-up round (default: 10)")
    p.add_argument("--threads", type=int, default=2, help="threads of the one process; each DDP process gets half")
    p.add_argument("--only-model", action="store_true", help="print the analytical part only, time nothing")
    args = p.parse_args()
    if args.threads < WORLD or args.threads % WORLD:
        p.error(f"--threads must be a multiple of {WORLD} (each of the {WORLD} processes gets threads/{WORLD}), "
                f"got {args.threads}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}")
    terms = print_model()
    if args.only_model:
        return

    ctx_mp = mp.get_context("spawn")
    cmd_qs, res_q = [ctx_mp.Queue() for _ in range(WORLD)], ctx_mp.Queue()
    ctx = mp.spawn(_worker, args=(_free_port(), args.threads // WORLD, cmd_qs, res_q), nprocs=WORLD, join=False)
    results = {}
    try:
        for size in args.sizes:
            s = SIZES[size]
            steps, reps = args.steps or s["steps"], args.reps or s["reps"]
            t = time.perf_counter()
            results[size] = bench(size, steps, reps, args.threads, ctx, cmd_qs, res_q)
            print(f"\n({size}: {reps} rounds of {steps} steps per variant after one warm-up round, "
                  f"{time.perf_counter() - t:.0f} s)")
    finally:
        for q in cmd_qs:
            q.put(None)
        ctx.join()

    half = args.threads // WORLD
    print(f"\n== 1 process x {args.threads} threads against {WORLD} DDP processes (gloo) x {half} thread"
          f"{'s' if half > 1 else ''}, the same global batch; medians ==")
    print(f"  {'size':7s} {'variant':8s} {'ms/step':>9s} {'tokens/s':>9s} {'vs 1x2':>7s} {'all-reduce ms':>14s}")
    for size, r in results.items():
        s = SIZES[size]
        n_tok = s["bs"] * s["bptt"]
        t1, t2 = (statistics.median(r["times"][v]) for v in ("1x2", "2x1"))
        ar = statistics.median(r["ar"])
        print(f"  {size:7s} {'1x2':8s} {t1 * 1e3:9.2f} {n_tok / t1:9.0f} {1.0:6.2f}x {'-':>14s}")
        print(f"  {size:7s} {'2x1':8s} {t2 * 1e3:9.2f} {n_tok / t2:9.0f} {t1 / t2:6.2f}x "
              f"{ar * 1e3:8.2f} ({ar / t2 * 100:.0f}%)")
    for size, r in results.items():
        ratios = r["ratios"]
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (0, 0, 0)
        spread = f", quartiles {q1:.2f}-{q3:.2f}x" if len(ratios) > 1 else ""
        fwd, bwd, opt = (statistics.median(v) for v in zip(*r["parts"]))
        print(f"  {size}: 2x1 speed-up per round: median {statistics.median(ratios):.2f}x{spread}; "
              f"1x2 step = forward+loss {fwd * 1e3:.1f} + backward {bwd * 1e3:.1f} + optimizer {opt * 1e3:.1f} ms "
              f"(backward {bwd / (fwd + bwd + opt) * 100:.0f}%)")

    print("\n== Predicted speed-up on N machines like this one, each training on its own batch of the 1x2 size: "
          "N T / (T + exposed), T the 1x2 step, B its measured backward ==")
    for size, r in results.items():
        s = SIZES[size]
        t_ms = statistics.median(r["times"]["1x2"]) * 1e3
        b_ms = statistics.median(p[1] for p in r["parts"]) * 1e3
        n_bytes = n_params(make_model(s["config"], s["vocab_sz"])) * 4
        for gbps in LINKS_GBPS:
            ups = ", ".join(f"N={n} {n * t_ms / (t_ms + exposed_ms(terms[size], ring_allreduce_ms(n_bytes, n, gbps), b_ms)):.2f}x"
                            for n in MACHINES)
            print(f"  {size:7s} {str(gbps) + ' Gb/s':>8s}: {ups}")


if __name__ == "__main__":
    main()
