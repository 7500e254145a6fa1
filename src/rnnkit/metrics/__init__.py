"""Metrics with fastai's API (transitional: the code is being split out of `core`)."""
from rnnkit.metrics.core import *  # noqa: F403
from rnnkit.metrics.core import __all__  # noqa: F401
