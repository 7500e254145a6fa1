"""A pytest plugin (registered by installing rnnkit): `from rnnkit.all import *` brings fastcore's
`test_eq`, `test_close` ... into a test module, as `from fastai.basics import *` does, and pytest
would collect those helpers as tests ("fixture 'a' not found"). This skips the functions fastcore
and `rnnkit.test_utils` define; every other function is collected as usual."""
from __future__ import annotations

from typing import Any


def pytest_pycollect_makeitem(collector: Any, name: str, obj: Any) -> Any:
    """No test items for fastcore's helpers; None lets pytest collect everything else."""
    module = str(getattr(obj, "__module__", ""))
    if callable(obj) and (module.startswith("fastcore.") or module == "rnnkit.test_utils"):
        return []
    return None
