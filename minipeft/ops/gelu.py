"""GPT-2's GELU, the tanh approximation (Hendrycks & Gimpel 2016); `gelu_new` in HF.

    gelu(x) = 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
    gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

The lines below compute these in place on one or two buffers: the MLP's
activations are the largest arrays of a block (B, T, 4C), and NumPy temporaries
of that size cost more than the arithmetic.

Extreme inputs: beyond |x| = 100, tanh(u) is ±1 exactly (in float32 and float64), so
gelu(x) is x or -0 and gelu'(x) is 1 or 0. The forward halves (1 + t) before it
multiplies by x (2x would overflow for x > 1.7e38), and the backward takes x² of x
clipped to ±100, where the (1 - t²) factor is 0 anyway (x² overflows float32 beyond
1.8e19, and inf · 0 is nan). x³ inside u may still overflow to ±inf in the forward:
tanh(±inf) = ±1 is the right value there (NumPy warns of the overflow).
"""
from __future__ import annotations

import math

import numpy as np

_K = math.sqrt(2.0 / math.pi)
_A = 0.044715


def tanh_u(x):
    """tanh(u), u = K (x + A x³), in one new array."""
    t = x * x
    t *= _A
    t += 1.0
    t *= x
    t *= _K                                             # u = K (x + A x^3)
    return np.tanh(t, out=t)                            # t = tanh(u)


def gelu_forward(x):
    """Elementwise; cache = (x, tanh(u)), saving the tanh for the backward."""
    t = tanh_u(x)
    out = t + 1.0
    out *= 0.5
    out *= x                                            # 0.5 (1 + t) x
    return out, (x, t)


def gelu_backward(dout, cache):
    x, t = cache
    du = np.clip(x, -100.0, 100.0)                      # (1 - t²) = 0 beyond: x² stays finite
    du *= du
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
