"""Data loading: batching loaders and fastai's sample datasets."""

from __future__ import annotations

from rnnkit.data.core import DataLoader, DataLoaders
from rnnkit.data.external import URLs, untar_data

__all__ = ["DataLoader", "DataLoaders", "URLs", "untar_data"]
