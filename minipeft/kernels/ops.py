"""Numba kernels for GPT-2's own ops, the fast twins of ``minipeft/ops/``.

This module is the table of ops a GPT2 runs with ``use_kernels`` (``GPT2.ops``): the
kernels below, attention's from kernels/attention.py, the loss's from kernels/loss.py,
and the ops that have no kernel (the linear products and the head split/merge: NumPy's
BLAS and reshapes already) taken from ops/ as they are. Each kernel has its twin's
signature and cache and returns the same values; tests/test_ops_kernels.py holds them
equal. How each is fast:

    layernorm_forward    the shift, the float64 mean and variance, xhat and the affine
                         map of a row in three passes over it, in xhat's own buffer, no
                         (B, T, C) temporaries; rounded where the twin rounds (the
                         variance of the rounded xc: an exact float64 xc that disagrees
                         with the rounded xhat makes float32 gradients through a near
                         one-hot softmax 10x noisier)
    layernorm_backward   dxhat, its two row means and dx in two passes per row
    gelu                 NumPy's vectorised lines, in place on one or two buffers
    cross_entropy,       kernels/loss.py: the loss and its gradient in one pass, in place
    lm_head_loss         over the logits; the lm_head and the loss on the counted rows only

Serial, as kernels/lora.py explains (Numba's worker threads spin after a parallel loop
and slow the BLAS call that follows), except the cross-entropy (kernels/loss.py says
why). The arithmetic is the twin's, in float64 where the twin accumulates in float64
(row sums of layernorm and the loss); elsewhere it follows the input's dtype, so float32
results agree with the twins to float32 rounding.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..ops import (  # noqa: F401 (the table)
    LayerNormCache,
    linear_backward,
    linear_forward,
    merge_heads,
    merge_heads_backward,
    split_heads,
    split_heads_backward,
)
from .attention import attention_backward, attention_forward  # noqa: F401 (the table)
from .loss import cross_entropy, lm_head_loss  # noqa: F401 (the table)

_jit = dict(cache=True, fastmath=False)
_K = math.sqrt(2.0 / math.pi)                  # GELU's constants, the twin's (ops/gelu.py)
_A = 0.044715


# ------------------------------------------------------------------ layernorm
@njit(**_jit)
def _layernorm_rows(x, g, b, eps, out, xhat, rstd):
    N, C = x.shape
    for n in range(N):
        xc = xhat[n]                           # the row's buffer, in x's dtype (as the twin)
        s = 0.0
        for c in range(C):
            xc[c] = x[n, c] - x[n, 0]          # about x[0]: a constant row gives exactly 0
            s += xc[c]
        mean = s / C                           # float64
        v = 0.0
        for c in range(C):
            xc[c] = xc[c] - mean               # rounded to x's dtype, as the twin's xc -= mean
            v += np.float64(xc[c]) * np.float64(xc[c])
        rstd[n, 0] = 1.0 / math.sqrt(v / C + eps)
        r = rstd[n, 0]                         # in x's dtype
        for c in range(C):
            xc[c] = xc[c] * r
            out[n, c] = xc[c] * g[c] + b[c]


def layernorm_forward(x, g, b, eps):
    """x (..., C), g (C,), b (C,) -> out (..., C); cache = (xhat, rstd, g)."""
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)
    out, xhat = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty((x2.shape[0], 1), dtype=x.dtype)
    _layernorm_rows(x2, g, b, eps, out, xhat, rstd)
    shape = x.shape
    cache = LayerNormCache(xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,)), g)
    return out.reshape(shape), cache


@njit(**_jit)
def _layernorm_backward_rows(dout, xhat, rstd, g, dx):
    N, C = dout.shape
    for n in range(N):
        s1 = 0.0
        s2 = 0.0
        for c in range(C):
            dxh = dout[n, c] * g[c]
            s1 += dxh
            s2 += dxh * xhat[n, c]
        m1 = s1 / C                            # mean(dxhat)
        m2 = s2 / C                            # mean(dxhat * xhat)
        r = rstd[n, 0]
        for c in range(C):
            dx[n, c] = (dout[n, c] * g[c] - m1 - xhat[n, c] * m2) * r


def layernorm_backward(dout, cache, need_params=True):
    """dout (..., C) -> (dx (..., C), dg (C,), db (C,)); dg, db None if not needed."""
    xhat, rstd, g = cache
    C = dout.shape[-1]
    d2 = np.ascontiguousarray(dout).reshape(-1, C)
    xh2 = xhat.reshape(-1, C)
    dg = db = None
    if need_params:
        dg = np.einsum("nc,nc->c", d2, xh2)
        db = d2.sum(axis=0)
    dx = np.empty_like(d2)
    _layernorm_backward_rows(d2, xh2, rstd.reshape(-1, 1), g, dx)
    return dx.reshape(dout.shape), dg, db


# ------------------------------------------------------------------ GELU
# NumPy's lines, not a Numba loop: NumPy's tanh is vectorised (SIMD), a Numba loop calls a
# scalar tanh per element (7x slower, benchmarks/README.md). What this kernel changes is
# memory: each line works in place on one or two (B, T, 4C) buffers, the largest arrays of
# a block, in the twin's order of operations (so the results are the twin's, bit for bit).
def _tanh_u(x):
    """tanh(K (x + A x·x·x)) in one new array, the twin's operations in the twin's order."""
    t = x * _A
    t *= x
    t *= x                                     # A x·x·x
    t += x
    t *= _K                                    # u = K (x + A x³)
    return np.tanh(t, out=t)


def gelu_forward(x):
    """Elementwise -> (out, cache = x), as the twin."""
    t = _tanh_u(x)
    t += 1                                     # 1 + t
    out = x * 0.5
    out *= t                                   # 0.5 x (1 + t)
    return out, x


def gelu_backward(dout, cache):
    """dout -> dx, as the twin: 0.5 (1 + t + x (1 - t²) K (1 + 3A x²)), times dout, in
    three buffers."""
    x = cache
    t = _tanh_u(x)                             # recomputed: the cache holds x alone
    du = np.clip(x, -100.0, 100.0)             # the twin's guard
    np.square(du, out=du)
    du *= 3 * _A
    du += 1                                    # 1 + 3A x²
    s = t * t
    np.subtract(1, s, out=s)                   # 1 - t²
    s *= x
    s *= _K
    s *= du                                    # x (1 - t²) K (1 + 3A x²)
    t += 1
    t += s
    t *= 0.5
    t *= dout
    return t
