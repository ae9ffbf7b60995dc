"""Offline training (PyTorch): ``python -m training``, and ``training.publish`` for a user's own
module (see ``training/publish.py``)."""

from training.publish import publish

__all__ = ["publish"]
