"""Optimizers built from stepper functions, one module per algorithm family, and a wrapper for `torch.optim`.

- `stepper.py`: the stepper protocol (`@stepper`, `@foreach_of`, `Scratch` buffers);
- `sgd.py`, `rmsprop.py`, `adam.py`, `more.py`: each family's steppers, their foreach twins, its fused
  step and its fastai recipe (`SGD`, `RMSProp`, `Adam`; `RAdam`, `QHAdam`, `Lamb`, `Larc`);
- `optimizer.py`: `Optimizer`, whose `step` dispatches to the declared fused step, the twins, or the
  steppers one parameter at a time; `buckets.py`: how it groups parameters; `fused.py`: where kernels run;
- `wrapper.py`: `OptimWrapper` around `torch.optim`; `lookahead.py`: `Lookahead` and `ranger`.
"""
from __future__ import annotations

from rnnkit.optim.adam import Adam, adam_step, debias, fused_adam, step_stat
from rnnkit.optim.lookahead import Lookahead, ranger
from rnnkit.optim.more import (Lamb, Larc, QHAdam, RAdam, lamb_step, larc_layer_lr, larc_step,
                               qhadam_step, radam_step)
from rnnkit.optim.optimizer import Optimizer
from rnnkit.optim.rmsprop import RMSProp, average_sqr_grad, fused_rmsprop, rms_prop_step
from rnnkit.optim.sgd import SGD, average_grad, fused_sgd, l2_reg, momentum_step, sgd_step, weight_decay
from rnnkit.optim.stepper import Scratch, foreach_of, stepper
from rnnkit.optim.wrapper import OptimWrapper, detuplify_pg, pytorch_hp_map, set_item_pg

__all__ = [
    "Optimizer", "OptimWrapper", "detuplify_pg", "set_item_pg", "pytorch_hp_map",
    "SGD", "RMSProp", "Adam", "RAdam", "QHAdam", "Lamb", "Larc", "Lookahead", "ranger",
    "stepper", "foreach_of", "Scratch", "sgd_step", "weight_decay", "l2_reg", "average_grad",
    "average_sqr_grad", "momentum_step", "rms_prop_step", "step_stat", "debias", "adam_step",
    "radam_step", "qhadam_step", "lamb_step", "larc_layer_lr", "larc_step",
    "fused_sgd", "fused_rmsprop", "fused_adam",
]
