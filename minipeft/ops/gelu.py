"""GPT-2's GELU, the tanh approximation (Hendrycks & Gimpel 2016); `gelu_new` in HF.

    gelu(x) = 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
    gelu'(x) = 0.5 (1 + tanh(u) + x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2))

The cache is x alone: the backward recomputes tanh(u) rather than hold a second
(B, T, 4C) array, the largest of a block, from forward to backward.

Extreme inputs: beyond |x| = 100, tanh(u) is ±1 exactly (in float32 and float64), so
gelu(x) is x or -0 and gelu'(x) is 1 or 0. 0.5 x is taken before the product with
(1 + t), so 2x never overflows; x³ inside u may overflow to ±inf, and tanh(±inf) = ±1 is
the right value there (NumPy warns of the overflow). The backward's one guard: x² is
taken of x clipped to ±100, where (1 - t²) is 0 anyway (x² overflows float32 beyond
1.8e19, and inf · 0 is nan).
"""
from __future__ import annotations

import math

import numpy as np

_K = math.sqrt(2.0 / math.pi)
_A = 0.044715


def gelu_forward(x):
    """Elementwise -> (out, cache = x)."""
    t = np.tanh(_K * (x + _A * x * x * x))              # tanh(u)
    out = 0.5 * x * (1 + t)
    return out, x


def gelu_backward(dout, cache):
    """dout -> dx, elementwise."""
    x = cache
    t = np.tanh(_K * (x + _A * x * x * x))              # tanh(u), recomputed
    xc = np.clip(x, -100.0, 100.0)                      # guard: x² finite; (1 - t²) = 0 beyond
    dgelu = 0.5 * (1 + t + x * (1 - t * t) * _K * (1 + 3 * _A * xc**2))
    return dout * dgelu
