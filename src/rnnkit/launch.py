"""Training on several processes (issue 17): the launcher side of `rnnkit train --nproc N` and of torchrun.

`rnnkit train --nproc N ...` starts N processes on this machine through torch's elastic launcher, the
library torchrun is built on, each running `python -m rnnkit train ...` with the same arguments;
`torchrun --nproc-per-node N -m rnnkit train ...` starts the same processes, on one machine or several.
A process started either way finds WORLD_SIZE > 1 in its environment (`in_worker`), joins the process
group (`rnnkit.distributed.setup_distrib`) and trains its share of every batch; rank 0 alone writes the
run folder and prints (`rnnkit.run.train`).

When a process fails, the launcher stops the others and `launch_local` prints one line that names the
process that failed first and how to continue::

    rnnkit train: error: process rank 1 (pid 4242) was killed by signal SIGKILL; the other processes were
    stopped. Continue from the last checkpoint with: rnnkit train --resume runs/x --nproc 2

Exit status: 1 for a process that crashed or was killed; 2 when a process found a mistake in the user's
input (it printed that one line itself); 130 when interrupted (rank 0 printed where the checkpoint is).
A process that loses contact with the others (a peer died, or waited longer than the process group's
timeout at a collective) exits with `EXIT_LOST_CONTACT` without a traceback, its reason recorded in the
launcher's error file: the process that failed first is the one worth reading about.
"""
from __future__ import annotations

import gc
import logging
import os
import re
import signal
import sys
import tempfile
import traceback
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn, Sequence

from rnnkit.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: the command line parses its options without it
    import torch

__all__ = ["EXIT_LOST_CONTACT", "DEFAULT_TIMEOUT_S", "in_worker", "local_world_size", "default_threads",
           "resolve_backend", "check_nproc", "launch_local", "failure_line", "is_lost_contact",
           "exit_lost_contact", "record_failure", "run_worker", "run_and_exit"]

EXIT_LOST_CONTACT = 3
# How long a process waits for the others at a collective: long enough for rank 0 to read a large corpus
# or write a checkpoint while the others wait, short enough that a hung process stops the job.
DEFAULT_TIMEOUT_S = 600.0
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130  # as in rnnkit.cli: the worker printed its own line for these


def in_worker() -> bool:
    """Whether this process is one of several that torchrun or `rnnkit train --nproc` started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def local_world_size() -> int:
    """How many processes of the job run on this machine (torchrun's --nproc-per-node)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def default_threads(nproc: int) -> int:
    """CPU threads per process when --threads is not given: this machine's cores shared by its processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, nproc))


def resolve_backend(backend: str, device: torch.device) -> str:
    """The process-group backend to use on `device`: 'auto' is nccl on CUDA and gloo elsewhere; a backend
    this PyTorch or this device cannot use is a UserError."""
    import torch.distributed as dist

    if not dist.is_available():
        raise UserError("this PyTorch was built without torch.distributed; train with one process (no --nproc)")
    name = ("nccl" if device.type == "cuda" else "gloo") if backend == "auto" else backend
    if name == "nccl" and not (device.type == "cuda" and dist.is_nccl_available()):
        why = "the device is not a CUDA GPU" if device.type != "cuda" else "this PyTorch has no NCCL"
        raise UserError(f"--backend nccl: {why} ({device}); use --backend gloo, or auto")
    if name == "gloo" and not dist.is_gloo_available():
        raise UserError("--backend gloo: this PyTorch has no gloo backend; use --backend nccl on CUDA GPUs")
    return name


def check_nproc(nproc: int, bs: int, device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Refuse a number of processes that cannot split the batch or share the device (`device` as the user
    wrote it), or a timeout that is not positive: before any process starts."""
    import torch

    from rnnkit.devices import resolve_device

    if nproc < 1:
        raise UserError(f"--nproc {nproc}: the number of processes must be at least 1")
    if not timeout_s > 0:
        raise UserError(f"--dist-timeout {timeout_s}: must be a positive number of seconds")
    if nproc == 1:
        return
    if bs % nproc:
        raise UserError(f"--bs {bs} is not divisible by {nproc} processes: each process trains on bs/{nproc} "
                        f"rows of every batch; use a --bs that is a multiple of {nproc}, e.g. "
                        f"{max(nproc, bs - bs % nproc)}")
    dev = resolve_device(device)
    if dev.type == "mps":
        raise UserError("several processes cannot share Apple's MPS device; use --device cpu with --nproc")
    if dev.type == "cuda":
        if re.fullmatch(r"cuda:\d+", device):
            raise UserError(f"--device {device} with {nproc} processes: each process uses the GPU of its local "
                            "rank; use --device cuda (or auto)")
        if nproc > torch.cuda.device_count():
            raise UserError(f"--nproc {nproc}: each process uses one GPU (cuda:LOCAL_RANK) and this machine "
                            f"has {torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()} or fewer")


def is_lost_contact(e: BaseException) -> bool:
    """Whether `e` says this process lost the others: a peer closed its connection (it died), or a
    collective waited past the process group's timeout (a peer hangs, or its machine is gone)."""
    import torch.distributed as dist

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    return isinstance(e, RuntimeError) and re.search(
        r"gloo|NCCL|Connection (reset|closed)|[Tt]imed out|Broken pipe", str(e)) is not None


def record_failure(e: BaseException) -> None:
    """Write `e` to the launcher's error file of this process (torchrun and `launch_local` show it)."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        get_error_handler().record_exception(e)


def exit_lost_contact(e: BaseException) -> NoReturn:
    """End a process that lost the others: record why, skip the process group's teardown (it would wait
    on, or abort over, the broken connections) and exit with `EXIT_LOST_CONTACT`."""
    record_failure(e)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_LOST_CONTACT)


def run_worker(body: Callable[[], int], backend: str, timeout_s: float, threads: int | None) -> int:
    """Run `body` (a command's work) as one process of a job: join the process group, take `threads` CPU
    threads (default: the machine's cores shared by its processes), leave the group; return body's status.

    A user mistake found on a rank other than 0 names the rank. A process that lost contact with the others
    ends with `exit_lost_contact`; any other exception is recorded for the launcher's report and raised. A
    failed process does not leave the group: its connections close when it has ended, with its status."""
    import torch

    from rnnkit.distributed import rank_distrib, setup_distrib, teardown_distrib

    setup_distrib(backend=backend, timeout_s=timeout_s)
    torch.set_num_threads(threads or default_threads(local_world_size()))
    try:
        code = body()
    except UserError as e:
        if rank_distrib() == 0:
            raise
        raise UserError(f"process rank {rank_distrib()}: {e}") from None
    except Exception as e:
        if is_lost_contact(e):  # another process failed first; the launcher reports that one
            exit_lost_contact(e)
        record_failure(e)
        raise
    # A DistributedDataParallel wrapper left in a reference cycle holds the group's gloo threads; freed
    # during the interpreter's exit instead, one of them can abort the process (SIGABRT).
    gc.collect()
    teardown_distrib()
    return code


def run_and_exit(main: Callable[[], int]) -> NoReturn:
    """`sys.exit(main())`; in one of several processes, end at once with main's status instead (`os._exit`,
    after flushing the output): the launcher must read that status before the process's connections
    close, or it sees the others lose contact first and stops this one (SIGTERM) while it is still
    exiting; and Python's clean-up of the process group's threads can abort the process (SIGABRT).
    `python -m rnnkit` runs the command this way."""
    if not in_worker():
        sys.exit(main())
    try:
        code = main()
    except SystemExit as e:  # argparse's usage errors: status 2, the message already printed
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except BaseException:  # a bug: its traceback, status 1, as Python would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextmanager
def _quiet_launcher_logs() -> Iterator[None]:
    """The launcher logs each failed and stopped process; `launch_local` prints one line instead."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
               if n.startswith("torch.distributed.elastic") or n == "torch.distributed.launcher.api"]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _message(failure: Any) -> str:
    """The first line of what a failed process recorded (its exception), or ''."""
    msg = failure.message
    if isinstance(msg, dict):
        msg = msg.get("message", "")
    msg = str(msg).strip()
    if not msg or msg.startswith(("To enable traceback", "Signal ")):
        return ""
    first = msg.splitlines()[0]
    return first if len(first) <= 200 else first[:197] + "..."


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # what the launcher stops the others with


def _blame(exitcode: int) -> int:
    """How likely a process that ended with `exitcode` is the cause of a failed job, 0 the likeliest: one
    that ended by itself (a crash, a user mistake, a kill by a signal such as SIGKILL), then one that lost
    contact with another (which failed first), then one the launcher stopped (SIGTERM) because another failed."""
    if exitcode == EXIT_LOST_CONTACT:
        return 1
    return 2 if -exitcode in _STOP_SIGNALS else 0


def failure_line(failures: dict[int, Any], run: Path, nproc: int) -> tuple[str, int]:
    """The one line to print for the failed processes of a job (rank -> torch's ProcessFailure), and the
    exit status; the line is '' when the process printed its own (a user mistake, an interrupt).

    The process to name is the one that failed first (`_blame`), then the earliest, then the lowest rank."""
    rank, f = min(failures.items(), key=lambda kv: (_blame(kv[1].exitcode), kv[1].timestamp, kv[0]))
    if f.exitcode in (EXIT_USAGE, EXIT_INTERRUPTED):
        return "", f.exitcode
    detail = _message(f)
    if f.exitcode < 0:
        what = f"was killed by signal {f.signal_name()}"
    elif f.exitcode == EXIT_LOST_CONTACT:
        what = f"lost contact with the other processes ({detail or 'no reason recorded'})"
    else:
        what = f"failed with exit code {f.exitcode}" + (f" ({detail}; its traceback is above)" if detail else "")
    if (run / "checkpoints" / "LATEST").is_file():
        then = f"Continue from the last checkpoint with: rnnkit train --resume {run} --nproc {nproc}"
    else:
        then = "No checkpoint had been saved yet; start again with --overwrite (or --checkpoint-every N)"
    return (f"rnnkit train: error: process rank {rank} (pid {f.pid}) {what}; the other processes were stopped. "
            f"{then}"), 1


def launch_local(argv: Sequence[str], nproc: int, run: Path) -> int:
    """Run `python -m rnnkit <argv>` as `nproc` processes of one job on this machine, through torch's elastic
    launcher (a c10d rendezvous on a free local port, no restarts); return the exit status for `main`.

    `argv` is the command line as given, --nproc included: a process started here finds its count in
    LOCAL_WORLD_SIZE and does not launch again. A failure prints `failure_line`."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with tempfile.TemporaryDirectory(prefix="rnnkit-launch-") as logs:
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
            rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # port 0: the store picks a free one, no race
            max_restarts=0,  # a failed process stops the job; --resume continues it
            monitor_interval=0.1,  # seconds between looks at the processes: a dead one is noticed at once
            logs_specs=DefaultLogsSpecs(log_dir=logs),  # error files only; output goes to this terminal
        )
        try:
            with _quiet_launcher_logs():
                elastic_launch(config, sys.executable)("-m", "rnnkit", *argv)
        except ChildFailedError as e:
            line, code = failure_line(e.failures, run, nproc)
            if line:
                print(line, file=sys.stderr)
            return code
        except SignalException as e:  # Ctrl-C or kill of this process: the launcher passed it on to them
            return 128 + int(e.sigval)  # 130 for Ctrl-C, as for one process
    return 0
