"""GPT-2's GELU, the tanh approximation (Hendrycks & Gimpel 2016); `gelu_new` in HF.

    gelu(x) = 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
    gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

The lines below compute these in place on one or two buffers: the MLP's
activations are the largest arrays of a block (B, T, 4C), and NumPy temporaries
of that size cost more than the arithmetic.
"""
from __future__ import annotations

import math

import numpy as np

_K = math.sqrt(2.0 / math.pi)
_A = 0.044715


def gelu_forward(x):
    """Elementwise; cache = (x, tanh(u)), saving the tanh for the backward."""
    t = x * x
    t *= _A
    t += 1.0
    t *= x
    t *= _K                                             # u = K (x + A x^3)
    np.tanh(t, out=t)                                   # t = tanh(u)
    out = t + 1.0
    out *= x
    out *= 0.5                                          # 0.5 x (1 + t)
    return out, (x, t)


def gelu_backward(dout, cache):
    x, t = cache
    du = x * x
    du *= 3.0 * _A
    du += 1.0
    du *= _K                                            # du/dx = K (1 + 3 A x^2)
    sech2 = t * t
    np.subtract(1.0, sech2, out=sech2)                  # 1 - t^2
    du *= sech2
    du *= x
    du += t
    du += 1.0
    du *= 0.5                                           # 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx
    du *= dout
    return du
