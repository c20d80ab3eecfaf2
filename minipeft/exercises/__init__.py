"""Classroom exercises with checks that teach.

    from minipeft.exercises import EXERCISES, check
    def layernorm_forward(x, g, b, eps): ...
    check("layernorm_forward", layernorm_forward)      # prints [PASS] / [FAIL] + a hint

``EXERCISES`` maps each exercise's name to an ``Exercise``: ``.reference`` is the
package's own implementation with the student's signature, ``.check(fn, strict=False)``
returns a ``Verdict`` (``passed``: True, False, or None when ``fn`` raises
NotImplementedError; ``message`` says why). A check prints and returns; it raises
``ExerciseFailed`` only with ``strict=True`` or ``MINIPEFT_STRICT=1``. See core.py for
the order of a check and how a wrong answer is recognised.
"""
from __future__ import annotations

from ..errors import MinipeftError
from . import part1_ops, part2_lora, part3_methods, part4_training
from .core import RECORD_ENV, STRICT_ENV, Exercise, ExerciseFailed, Misconception, Verdict, max_rel

EXERCISES: dict[str, Exercise] = {ex.name: ex for part in (part1_ops, part2_lora, part3_methods,
                                                          part4_training)
                                  for ex in part.EXERCISES}


def check(name: str, fn, strict: bool = False) -> Verdict:
    """``EXERCISES[name].check(fn, strict)``, with a clear error for an unknown name."""
    if name not in EXERCISES:
        raise MinipeftError(f"no exercise named {name!r}; the exercises are: {', '.join(EXERCISES)}.")
    return EXERCISES[name].check(fn, strict=strict)


__all__ = ["EXERCISES", "Exercise", "ExerciseFailed", "Misconception", "Verdict", "check",
           "max_rel", "RECORD_ENV", "STRICT_ENV"]
