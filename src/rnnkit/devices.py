"""Where tensors go: the default device, checking and describing a device the user names, moving batches,
and what the CPU computes natively in low precision (for autocast).

`default_device`, `resolve_device` and `describe_device` serve the loaders and the command line;
`to_device` moves nested batches; `cpu_computes_natively` and `cpu_autocast_dtype` let mixed precision
and the dropout kernels pick a dtype the CPU runs fast.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import torch

from rnnkit.errors import UserError

__all__ = [
    "cpu_autocast_dtype",
    "cpu_computes_natively",
    "cpu_has_bf16_instructions",
    "default_device",
    "describe_device",
    "resolve_device",
    "to_device",
]


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
def cpu_has_bf16_instructions() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags),
    where `--precision bf16` pays: the `budget` recipe's PTB step takes 0.35-0.45 s in bf16 against 0.60 s in
    float32 on an AVX512-BF16 EPYC. Plain AVX-512 only converts (`cpu_computes_natively` is True there,
    but the matmuls are no faster); False where the flags cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


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



def default_device() -> torch.device:
    """The device loaders put batches on unless told: `$RNNKIT_DEVICE` if set (`cpu`, `cuda:1` ...),
    else the best available one: CUDA, then Apple MPS, then CPU."""
    forced = os.environ.get("RNNKIT_DEVICE", "").strip()
    if forced and forced != "auto":
        try:
            return torch.device(forced)
        except RuntimeError:
            raise UserError(f"RNNKIT_DEVICE={forced!r} is not a device; use cpu, cuda, cuda:N, mps or auto") from None
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
    there, or a UserError (a ValueError) says what is."""
    if spec is None or str(spec) == "auto":
        spec = default_device()
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UserError(f"device {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UserError(f"device {spec!r}: no CUDA device is available (this PyTorch is {build}); "
                             "use --device cpu or auto")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UserError(f"device {spec!r}: there are {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
        return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"device {spec!r}: Apple's MPS is not available here; use --device cpu or auto")
        return dev
    if dev.type != "cpu":
        raise UserError(f"device {spec!r}: rnnkit trains on cpu, cuda or mps")
    return dev


def describe_device(dev: torch.device) -> str:
    """One line naming `dev` for a run's log: 'cuda:0 (NVIDIA H200, 139 GiB)', 'cpu (2 threads)'."""
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return f"{dev} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if dev.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(dev)
