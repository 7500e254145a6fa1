"""Small helpers that fastai code expects: `L`, `tensor`, `Module`, device and naming utilities."""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from pathlib import Path

import functools
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO, Callable

import numpy as np
import torch
from fastcore.foundation import L
from torch import nn

__all__ = [
    "atomic_write",
    "L",
    "Module",
    "camel2snake",
    "class2attr",
    "cpu_autocast_dtype",
    "cpu_computes_natively",
    "default_device",
    "describe_device",
    "resolve_device",
    "detuplify",
    "find_bs",
    "noop",
    "range_of",
    "heap_free_bytes",
    "release_freed_memory",
    "reuse_freed_memory",
    "snake_case",
    "tensor",
    "to_device",
]


def _plain(t: torch.Tensor) -> torch.Tensor:
    # Tensor subclasses route every op through Python (`__torch_function__`), which is slow.
    return t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)


def _from_sequence(x: list | tuple, **kwargs: Any) -> torch.Tensor:
    if len(x) > 0 and all(isinstance(o, torch.Tensor) for o in x):
        res = torch.stack([_plain(o) for o in x])
        return res.to(**kwargs) if kwargs else res
    if any(isinstance(o, (torch.Tensor, np.ndarray, L)) for o in x):
        return _from_sequence([tensor(o) for o in x], **kwargs)
    try:
        return torch.tensor(x, **kwargs)
    except (TypeError, ValueError, RuntimeError):
        # Nested rows may hold tensors deeper down: convert row by row, then stack.
        if not any(isinstance(o, (list, tuple)) for o in x):
            raise
        return _from_sequence([tensor(o) for o in x], **kwargs)


def tensor(x: Any, *rest: Any, **kwargs: Any) -> torch.Tensor:
    """Make a plain `torch.Tensor` from a number, list, array, `L` or values given as varargs."""
    if rest:
        x = (x, *rest)
    if isinstance(x, torch.Tensor):
        res = _plain(x)
        res = res.to(**kwargs) if kwargs else res
    elif isinstance(x, (list, tuple)):
        res = _from_sequence(x, **kwargs)
    elif isinstance(x, (numbers.Number, np.generic)):
        res = torch.tensor(x, **kwargs)
    elif isinstance(x, np.ndarray):
        if x.dtype == np.uint16:  # torch has poor uint16 support
            x = x.astype(np.float32)
        res = torch.as_tensor(np.ascontiguousarray(x), **kwargs)
    elif isinstance(x, L):
        res = _from_sequence(list(x), **kwargs)
    elif hasattr(x, "__array__"):
        res = tensor(np.asarray(x), **kwargs)
    elif isinstance(x, Iterable):
        res = _from_sequence(list(x), **kwargs)
    else:
        raise TypeError(
            f"tensor() cannot convert an object of type {type(x).__name__}; pass a number, list, array or tensor."
        )
    # fastai keeps floats single precision unless a dtype is asked for.
    if res.dtype == torch.float64 and "dtype" not in kwargs:
        res = res.float()
    return res


def range_of(a: Any, b: int | None = None, step: int | None = None) -> list[int]:
    """All indices of collection `a`, or `list(range(a, b, step))` when `a` is an int."""
    if hasattr(a, "__len__") and not isinstance(a, (str, bytes)):
        a = len(a)
    start, stop = (0, a) if b is None else (a, b)
    return list(range(start, stop, 1 if step is None else step))


def noop(x: Any = None, *args: Any, **kwargs: Any) -> Any:
    """Do nothing and return `x`."""
    return x


def _ensure_module_init(self: nn.Module) -> None:
    # nn.Module.__init__ creates `_parameters`, `_modules`, ...; run it only once per object.
    if "_parameters" not in self.__dict__:
        nn.Module.__init__(self)


class Module(nn.Module):
    """`nn.Module` whose subclasses need not call `super().__init__()`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_rnnkit_pre_init", False):
            return

        @functools.wraps(init)
        def __init__(self: nn.Module, *args: Any, **kw: Any) -> None:
            _ensure_module_init(self)
            init(self, *args, **kw)

        __init__._rnnkit_pre_init = True  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _ensure_module_init(self)


def find_bs(b: Any) -> int:
    """Batch size of `b`: the first dimension of the first tensor found in a nested tuple/list/dict."""
    stack = [b]
    while stack:
        o = stack.pop(0)
        if isinstance(o, torch.Tensor):
            if o.ndim == 0:
                raise ValueError("find_bs found a 0-d tensor first; a batch needs a leading batch dimension.")
            return o.shape[0]
        if isinstance(o, Mapping):
            stack = list(o.values()) + stack
        elif isinstance(o, (list, tuple)):
            stack = list(o) + stack
    raise ValueError(f"find_bs found no tensor in a batch of type {type(b).__name__}.")


def to_device(b: Any, device: torch.device | str | None = None) -> Any:
    """Move every tensor in nested tuples, lists and dicts `b` to `device` (default: `default_device()`)."""
    device = default_device() if device is None else torch.device(device)
    non_blocking = device.type == "cuda"

    def _move(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            return o.to(device, non_blocking=non_blocking)
        if isinstance(o, Mapping):
            return type(o)({k: _move(v) for k, v in o.items()})  # type: ignore[call-arg]
        if isinstance(o, tuple) and hasattr(o, "_fields"):  # namedtuple
            return type(o)(*(_move(v) for v in o))
        if isinstance(o, (list, tuple)):
            return type(o)(_move(v) for v in o)
        return o

    return _move(b)


@functools.cache
def cpu_computes_natively(dtype: torch.dtype) -> bool:
    """Whether this CPU runs `dtype` (bfloat16 or float16) in oneDNN's kernels: bfloat16 needs AVX-512
    (native with AVX512-BF16 or AMX), float16 needs AVX512-FP16 or AMX-FP16. Without it, PyTorch's
    LSTM kernel fails under CPU autocast in that dtype and its matmuls are emulated, several times
    slower than float32. Other dtypes: True."""
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    if dtype not in check:
        return True
    try:
        return bool(getattr(torch.ops.mkldnn, check[dtype])())
    except (AttributeError, RuntimeError):  # a PyTorch without these checks: assume it works
        return True


def reuse_freed_memory(max_block: int = 32 << 20, keep_free: int = 128 << 20) -> bool:
    """Have glibc's malloc serve blocks up to `max_block` bytes from its heap, where freed memory is
    reused, and keep up to `keep_free` bytes free at the heap's top instead of returning them after
    each step. Larger blocks are mapped afresh each time, as glibc does by default.

    By default glibc maps every block over 32 MiB afresh and trims its heap's top often, so a training
    step's activations (an LSTM's oneDNN workspace, dropped weights, gradients) are mapped and
    zero-filled by the kernel every step. (A language model's logits-sized blocks do not need this:
    they come from `rnnkit.memory.buffer_pool`.)

    The defaults are safe on their own: 32 MiB is glibc's own ceiling for its adaptive threshold, and
    resident memory stays flat. Larger values are faster (a fastai-sized AWD-LSTM step on PTB: 1.78 s
    with 1 GiB against 1.89 s on 2 cores; `benchmarks/bench_memory.py --preset fastai --bs 32 --corpora
    ptb` measures it) but only together with the `ReleaseFreedMemory` callback, which
    bounds what the heap keeps: without it, smaller blocks settle in the holes large ones leave and the
    heap grows without bound (21 GB within an epoch of WikiText-2 before issue 13). The `rnnkit`
    command line uses 1 GiB with that callback. Process-wide and lasting. Returns True where it took
    effect (Linux with glibc).
    """
    mallopt = getattr(_glibc(), "mallopt", None)
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's M_TRIM_THRESHOLD and M_MMAP_THRESHOLD
    return (bool(mallopt(m_mmap_threshold, min(int(max_block), 2**31 - 1)))
            and bool(mallopt(m_trim_threshold, min(int(keep_free), 2**31 - 1))))


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _glibc() -> Any:
    """The process's C library with glibc's malloc controls typed, or None (not Linux, not glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library already loaded into this process
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # other C libraries lack them
        return None
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.argtypes, libc.mallinfo2.restype = [], _Mallinfo2
    return libc


def heap_free_bytes() -> int | None:
    """Bytes free inside glibc's heaps (`mallinfo2().fordblks`): memory the process holds but does not use.
    None where that cannot be read (not glibc, or glibc older than 2.33)."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    return int(libc.mallinfo2().fordblks)


def release_freed_memory() -> bool:
    """Return the free memory inside glibc's heap to the system (`malloc_trim(0)`), keeping what is in use.

    The heap keeps freed blocks for reuse, and over thousands of steps the holes between blocks in use
    add up: resident memory crept up by about 0.6 MB a step on WikiText-2 (600 MB over two epochs) with
    or without `reuse_freed_memory`. Called every few dozen steps (`ReleaseFreedMemory`, which the
    `rnnkit` command line adds), it holds resident memory flat for a few milliseconds and one step's
    worth of page faults each time. Returns True where it ran (Linux with glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def default_device() -> torch.device:
    """The device loaders put batches on unless told: `$RNNKIT_DEVICE` if set (`cpu`, `cuda:1` ...),
    else the best available one: CUDA, then Apple MPS, then CPU."""
    forced = os.environ.get("RNNKIT_DEVICE", "").strip()
    if forced and forced != "auto":
        try:
            return torch.device(forced)
        except RuntimeError:
            raise ValueError(f"RNNKIT_DEVICE={forced!r} is not a device; use cpu, cuda, cuda:N, mps or auto") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _autocast_takes_device_type() -> bool:
    try:
        torch.is_autocast_enabled("cpu")  # type: ignore[call-arg, unused-ignore]
    except TypeError:
        return False
    return True


# Decided once, outside any torch.compile trace (where a TypeError would surface as a dynamo error).
_AUTOCAST_TAKES_DEVICE_TYPE = _autocast_takes_device_type()


def cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast computes in right now, or None when it is off (PyTorch 2.2 to 2.13 alike:
    the device-type arguments of `torch.is_autocast_enabled`/`get_autocast_dtype` came in 2.4)."""
    if _AUTOCAST_TAKES_DEVICE_TYPE:
        if not torch.is_autocast_enabled("cpu"):  # type: ignore[call-arg, unused-ignore]
            return None
        return torch.get_autocast_dtype("cpu")
    return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device `spec` names, checked to exist: 'auto' (or None) is `default_device()` ($RNNKIT_DEVICE if
    set, else CUDA when available, then Apple MPS, then the CPU); 'cpu', 'cuda', 'cuda:N' and 'mps' must be
    there, or a ValueError says what is."""
    if spec is None or str(spec) == "auto":
        spec = default_device()
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"device {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"device {spec!r}: no CUDA device is available (this PyTorch is {build}); "
                             "use --device cpu or auto")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {spec!r}: there are {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
        return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {spec!r}: Apple's MPS is not available here; use --device cpu or auto")
        return dev
    if dev.type != "cpu":
        raise ValueError(f"device {spec!r}: rnnkit trains on cpu, cuda or mps")
    return dev


def describe_device(dev: torch.device) -> str:
    """One line naming `dev` for a run's log: 'cuda:0 (NVIDIA H200, 139 GiB)', 'cpu (2 threads)'."""
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return f"{dev} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if dev.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(dev)


def detuplify(x: Any) -> Any:
    """Unwrap a one-element tuple or list; an empty one gives `None`."""
    if isinstance(x, (tuple, list, L)):
        if len(x) == 0:
            return None
        if len(x) == 1:
            return x[0]
    return x


_word_start = re.compile(r"(.)([A-Z][a-z]+)")  # "RNNCallback" -> "RNN_Callback"
_lower_upper = re.compile(r"([a-z0-9])([A-Z])")  # "trainEval" -> "train_Eval"


def camel2snake(name: str) -> str:
    """Convert a CamelCase name to snake_case: `TrainEvalCallback` -> `train_eval_callback`."""
    return _lower_upper.sub(r"\1_\2", _word_start.sub(r"\1_\2", name)).lower()


snake_case = camel2snake


def class2attr(obj: Any, cls_name: str) -> str:
    """Snake-case class name of `obj` without the `cls_name` suffix: `TrainEvalCallback` -> `train_eval`."""
    name = obj.__name__ if isinstance(obj, type) else type(obj).__name__
    if name.endswith(cls_name):
        name = name[: -len(cls_name)]
    return camel2snake(name) if name else cls_name.lower()


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[BinaryIO], Any]) -> Path:
    """Write `data` (text, bytes, or a function writing to a binary file, such as `torch.save`'s) to `path`
    through a temporary file in the same folder, fsync, a rename and an fsync of the folder: a reader, or a
    crash at any moment, sees the old file or the new one, never half of one. rnnkit's one atomic writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
