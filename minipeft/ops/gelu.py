"""GPT-2's GELU, the tanh approximation (Hendrycks & Gimpel 2016); `gelu_new` in HF.

    gelu(x) = 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
    gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
"""
from __future__ import annotations

import math

import numpy as np

_K = math.sqrt(2.0 / math.pi)
_A = 0.044715


def gelu_forward(x):
    """Elementwise; cache = x (tanh is cheap to recompute, as llm.c does)."""
    t = np.tanh(_K * (x + _A * x * x * x))
    return 0.5 * x * (1.0 + t), x


def gelu_backward(dout, cache):
    x = cache
    x2 = x * x
    t = np.tanh(_K * (x + _A * x2 * x))
    local = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _K * (1.0 + 3.0 * _A * x2)
    return dout * local
