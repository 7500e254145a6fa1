"""All built-in steppers in one namespace (`from rnnkit.optim.steppers import adam_step`): the protocol
lives in `stepper.py`, each stepper with its twin in its family's module (`sgd.py`, `rmsprop.py`,
`adam.py`, `more.py`)."""
from __future__ import annotations

from rnnkit.optim.adam import adam_step, debias, step_stat
from rnnkit.optim.rmsprop import average_sqr_grad, rms_prop_step
from rnnkit.optim.sgd import average_grad, l2_reg, momentum_step, sgd_step, weight_decay
from rnnkit.optim.stepper import foreach_of, stepper

__all__ = [
    "stepper", "foreach_of", "sgd_step", "weight_decay", "l2_reg", "average_grad",
    "average_sqr_grad", "momentum_step", "rms_prop_step", "step_stat", "debias", "adam_step",
]
