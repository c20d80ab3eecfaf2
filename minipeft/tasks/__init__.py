"""Tasks to fine-tune on: each module makes its examples and scores predictions.

``restaurants``: a restaurant's attributes -> one English sentence, in the style of
the E2E NLG challenge that the LoRA paper uses (``make_examples``, ``score``,
``format_examples``).
"""
from . import restaurants

__all__ = ["restaurants"]
