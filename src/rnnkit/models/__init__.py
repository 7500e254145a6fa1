"""Models: the book's language models."""
from rnnkit.models.book import LMModel6, LMModel7

__all__ = ["LMModel6", "LMModel7"]
