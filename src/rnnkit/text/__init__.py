"""Learners for text."""
from rnnkit.text.learner import TextLearner

__all__ = ["TextLearner"]
