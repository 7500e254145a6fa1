"""Data-parallel training on `torch.distributed`: the process group and the few collectives rnnkit uses.

One process per device, started by `torchrun` (which sets MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE and
LOCAL_RANK); every process runs the same script. `Learner.distrib_ctx()` sets the group up and adds a
`DistributedTrainer` (`rnnkit.callbacks.distributed`), which wraps the model in DistributedDataParallel
and gives each process its block of every batch, so that N processes of `bs/N` rows train exactly as
one process of `bs` rows. What is combined across the processes, and where:

- gradients: DDP averages them during `backward` (each process's loss is a mean over its rows);
- the training loss the Recorder records: `DistributedTrainer.after_loss`, batch-size weighted;
- validation loss and metrics: `Metric.sync()`, called by the Recorder on a sharded loader
  (sums and counts; `AccumMetric` gathers its predictions);
- `LMLearner.evaluate_lm`: its token-weighted sums.

Outside a process group every function here works as in one process: rank 0 of 1, the collectives
return their input. This module sits at the bottom of the package (metrics and text use it).
"""
from __future__ import annotations

import gc
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import torch
import torch.distributed as dist

from rnnkit.devices import default_device
from rnnkit.errors import UserError

if TYPE_CHECKING:
    from rnnkit.callbacks.distributed import DistributedTrainer

__all__ = [
    "rank_distrib", "num_distrib", "is_rank0", "is_distributed", "rank0_first", "setup_distrib",
    "teardown_distrib", "barrier", "all_reduce_sum", "all_reduce_max", "broadcast_int", "all_gather_cat", "shard_loader",
    "agree_on_seeds",
    "DistributedTrainer",  # defined in rnnkit.callbacks.distributed
]

_T = TypeVar("_T")
_TORCHRUN_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
_owns_group = False  # whether setup_distrib created the default group (teardown_distrib destroys only that)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name} must be an integer (torchrun sets it), got {value!r}.") from None


def is_distributed() -> bool:
    """Whether a process group of more than one process is running (the collectives then communicate)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_distrib() -> int:
    """This process's rank: from the process group, else $RANK, else 0 (fastai's name)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def num_distrib() -> int:
    """The number of processes: from the process group, else $WORLD_SIZE, else 1 (fastai's name)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def is_rank0() -> bool:
    """Whether this is the process that prints and writes files (rank 0)."""
    return rank_distrib() == 0


def _pick_backend(backend: str | None) -> str:
    if backend is None:
        on_cuda = torch.cuda.is_available() and default_device().type == "cuda"
        return "nccl" if on_cuda else "gloo"
    if not dist.is_backend_available(backend):
        raise UserError(f"the torch.distributed backend {backend!r} is not available in this PyTorch build"
                        f"{' (it needs CUDA)' if backend == 'nccl' else ''}; use backend='gloo' on the CPU, "
                        "or backend=None to pick one for the device.")
    return backend


def setup_distrib(backend: str | None = None, timeout_s: float = 60.0) -> bool:
    """Create the default process group from torchrun's environment when $WORLD_SIZE > 1 and none exists.

    Args:
        backend: 'gloo' or 'nccl'; None picks 'nccl' when the device is CUDA, else 'gloo'.
        timeout_s: how long a collective (and the start-up rendezvous) waits for the other processes.

    Returns whether it created the group. With 'nccl' this process uses GPU $LOCAL_RANK.
    """
    global _owns_group
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise UserError(f"WORLD_SIZE={world} asks for {world} processes but this PyTorch build has no "
                        "torch.distributed; install a build with it or run one process.")
    missing = [k for k in _TORCHRUN_VARS if not os.environ.get(k)]
    if missing:
        raise UserError(f"WORLD_SIZE={world} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                        "set; start the processes with torchrun (or set MASTER_ADDR, MASTER_PORT and RANK).")
    backend = _pick_backend(backend)
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s),
                            rank=_env_int("RANK", 0), world_size=world)
    _owns_group = True
    return True


def teardown_distrib() -> None:
    """Destroy the default process group if `setup_distrib` created it (a group the caller made is left)."""
    global _owns_group
    if _owns_group and dist.is_available() and dist.is_initialized():
        # A DDP wrapper left in a reference cycle keeps gloo's threads alive past the group; collected here,
        # it cannot abort the interpreter at exit (seen ~1 in 3 runs with mid-epoch checkpoints).
        gc.collect()
        dist.destroy_process_group()
    _owns_group = False


def _comm_device() -> torch.device:
    """Where tensors must be for the group's backend: NCCL only moves CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process gets here; a no-op in one process."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def rank0_first(func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """`func(*args, **kwargs)` on rank 0 first, then on the other ranks (e.g. a download or a cache that
    rank 0 creates and the others then read). Sets the process group up if torchrun asked for one."""
    setup_distrib()
    if is_rank0():
        res = func(*args, **kwargs)
    barrier()
    if not is_rank0():
        res = func(*args, **kwargs)
    return res


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over every process, in place, and return it; a no-op in one process."""
    if not is_distributed():
        return tensor
    dev = _comm_device()
    if tensor.device == dev:
        dist.all_reduce(tensor)
        return tensor
    moved = tensor.to(dev)
    dist.all_reduce(moved)
    return tensor.copy_(moved)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of `tensor` over every process, in place; a no-op in one process."""
    if not is_distributed():
        return tensor
    moved = tensor.to(_comm_device())
    dist.all_reduce(moved, op=dist.ReduceOp.MAX)
    return tensor.copy_(moved)


def broadcast_int(value: int, src: int = 0) -> int:
    """Rank `src`'s `value` on every process (e.g. a seed drawn on rank 0); `value` in one process."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.broadcast(t, src)
    return int(t.item())


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` concatenated along dim 0, in rank order; the lengths along dim 0 may
    differ, the other dimensions and the dtype may not. `tensor` itself in one process."""
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    shapes: list[Any] = [None] * world
    dist.all_gather_object(shapes, (tuple(tensor.shape), str(tensor.dtype)))
    if len(set((s[1:], d) for s, d in shapes)) > 1:
        raise ValueError(f"all_gather_cat: the processes hold tensors of different trailing shapes or dtypes "
                         f"({shapes}); only the first dimension may differ.")
    longest = max(s[0] for s, _ in shapes)
    dev = _comm_device()
    padded = tensor.new_zeros((longest, *tensor.shape[1:]), device=dev)
    padded[:tensor.shape[0]] = tensor.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)  # all_gather needs equal shapes: pad, then cut each back to its length
    return torch.cat([p[:s[0]] for p, (s, _) in zip(parts, shapes)]).to(tensor.device)


def shard_loader(dl: Any, rank: int | None = None, world_size: int | None = None) -> Any:
    """This process's shard of `dl` (an `LMDataLoader` or a `DataLoader`), with rank 0's seed everywhere:
    random bptt lengths and shuffles must be identical on every process for the shards to fit together."""
    rank = rank_distrib() if rank is None else rank
    world_size = num_distrib() if world_size is None else world_size
    shard = getattr(dl, "shard", None)
    if not callable(shard):
        raise UserError(f"distributed training shards rnnkit's DataLoader and LMDataLoader, got a "
                        f"{type(dl).__name__}; build the loaders with rnnkit.data (DataLoaders.from_dsets, "
                        "TextDataLoaders) or train in one process.")
    res = shard(rank, world_size)
    res.seed = broadcast_int(res.seed)  # a seed=None loader drew its own seed on each process
    return res


def agree_on_seeds(loaders: Any) -> None:
    """Give every loader in `loaders` (e.g. a `DataLoaders`) that has an int `seed` rank 0's seed, so the
    number of batches of a random-bptt epoch, which depends on it, is the same on every process (a
    schedule, `lr_find` and the loaders count them before any fit starts). A no-op in one process."""
    for dl in loaders:
        seed = getattr(dl, "seed", None)
        if isinstance(seed, int):
            dl.seed = broadcast_int(seed)


def __getattr__(name: str) -> Any:
    # DistributedTrainer is a callback and lives with the callbacks, above this module; it is importable
    # from here too (the documented home of the distributed API), without an import cycle.
    if name == "DistributedTrainer":
        from rnnkit.callbacks.distributed import DistributedTrainer

        return DistributedTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
