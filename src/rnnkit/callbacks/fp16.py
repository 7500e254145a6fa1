"""Mixed precision training: autocast for the forward pass and loss, and, for float16,
dynamic loss scaling with `torch.amp.GradScaler`. Works on CPU, CUDA and MPS autocast."""
from __future__ import annotations

import warnings
from typing import Any

import torch

from rnnkit import utils
from rnnkit.training.callback import Callback
from rnnkit.training.events import CancelStepException

__all__ = ["MixedPrecision"]


class _ScalerView:
    """What GradScaler needs to see of our optimizer: `param_groups`, and a `step` that only
    records that the scaler found the gradients finite (the Learner takes the real step)."""

    def __init__(self, opt: Any) -> None:
        self.opt = opt
        self.skipped = True

    @property
    def param_groups(self) -> Any:
        return self.opt.param_groups

    def step(self, *args: Any, **kwargs: Any) -> None:
        self.skipped = False


def _grad_scaler(device_type: str, **kwargs: Any) -> Any:
    """`torch.amp.GradScaler(device_type)`; on PyTorch < 2.3 only CUDA has one (`torch.cuda.amp`), else None."""
    amp_scaler = getattr(torch.amp, "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler(device_type, **kwargs)
    if device_type == "cuda":
        return torch.cuda.amp.GradScaler(**kwargs)
    return None


def _float_out(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(_float_out(o) for o in x)
    return x


class MixedPrecision(Callback):
    """Run forward and loss under autocast in `dtype`; scale the loss when `dtype` is float16.

    Gradients are unscaled in `before_step`, so callbacks that run after it (`GradientClip`)
    see true gradients. A step whose gradients overflowed is skipped (`CancelStepException`).

    On a CPU that does not compute `dtype` natively (bfloat16 needs AVX-512, float16 AVX512-FP16 or
    AMX), it warns and trains in float32: there PyTorch's LSTM kernel fails under autocast and its
    matmuls run several times slower than in float32. `enabled` says which way the fit runs.
    """

    order = 10

    def __init__(self, dtype: torch.dtype = torch.float16, init_scale: float = 2.0 ** 16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000) -> None:
        super().__init__()
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"MixedPrecision dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        self.dtype = dtype
        self.init_scale, self.growth_factor = init_scale, growth_factor
        self.backoff_factor, self.growth_interval = backoff_factor, growth_interval
        self.scaler: torch.amp.GradScaler | None = None
        self._autocast: Any = None
        self.enabled, self._warned, self._scaler_missing = True, False, False

    def _device_type(self) -> str:
        p = next(self.learn.model.parameters(), None)
        return p.device.type if p is not None else "cpu"

    def _decide(self) -> None:
        self.enabled = ((self._device_type() != "cpu" or utils.cpu_computes_natively(self.dtype))
                        and not self._scaler_missing)
        if not self.enabled and not self._warned:
            self._warned = True
            name = str(self.dtype).removeprefix("torch.")
            warnings.warn(f"MixedPrecision({name}): this CPU has no native {name} (it needs "
                          f"{'AVX-512' if self.dtype == torch.bfloat16 else 'AVX512-FP16 or AMX'}): "
                          "PyTorch's LSTM cannot run under autocast here and its matmuls would be several "
                          "times slower than float32, so it trains in float32. Remove to_fp16()/"
                          "to_bf16() (or --precision) to silence this.", RuntimeWarning, stacklevel=2)

    def before_fit(self) -> None:
        self._warned = self._scaler_missing = False
        self._decide()
        self.scaler = None
        if not self.enabled:
            return
        if self.dtype == torch.float16:
            self.scaler = _grad_scaler(
                self._device_type(), init_scale=self.init_scale, growth_factor=self.growth_factor,
                backoff_factor=self.backoff_factor, growth_interval=self.growth_interval)
            if self.scaler is None:
                self.enabled, self._scaler_missing = False, True
                warnings.warn(f"MixedPrecision(float16): this PyTorch ({torch.__version__}) has no GradScaler for "
                              f"{self._device_type()} (torch.amp.GradScaler came in 2.3), so it trains in float32. "
                              "Upgrade PyTorch, or use to_bf16(), which needs no scaling.", RuntimeWarning,
                              stacklevel=2)

    def before_validate(self) -> None:
        self._decide()  # also for a `validate()` outside `fit`

    def before_batch(self) -> None:
        if not self.enabled:
            return
        self._autocast = torch.autocast(device_type=self._device_type(), dtype=self.dtype)
        self._autocast.__enter__()

    def after_pred(self) -> None:
        # the loss and metrics see float32 outputs, as with full precision
        self.learn.pred = _float_out(self.learn.pred)

    def _exit(self) -> None:
        if self._autocast is not None:
            self._autocast.__exit__(None, None, None)
            self._autocast = None

    def after_loss(self) -> None:
        self._exit()

    def before_backward(self) -> None:
        if self.scaler is not None:
            self.learn.loss_grad = self.scaler.scale(self.learn.loss_grad)

    def before_step(self) -> None:
        if self.scaler is None:
            return
        view = _ScalerView(self.learn.opt)
        self.scaler.unscale_(view)  # type: ignore[arg-type]  # it only needs param_groups
        self.scaler.step(view)  # type: ignore[arg-type]  # calls view.step() only if all grads are finite
        self.scaler.update()
        if view.skipped:
            raise CancelStepException()

    def after_batch(self) -> None:
        self._exit()  # when the batch was cancelled before after_loss

    def after_fit(self) -> None:
        self._exit()
