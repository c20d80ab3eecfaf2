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
    gelu                 float32: one vectorised pass per direction, tanh as Eigen's
                         rational function (6.1 ulp, 3.6e-7 from tanh; GELU within 1.4e-6,
                         gelu' within 4.5e-6 of the twin); float64: NumPy's lines in place
    cross_entropy,       kernels/loss.py: the loss and its gradient in one pass, in place
    lm_head_loss         over the logits; the lm_head and the loss on the counted rows only

Serial, as kernels/lora.py explains (Numba's worker threads spin after a parallel loop
and slow the BLAS call that follows), except the cross-entropy (kernels/loss.py says
why). The arithmetic is the twin's, in float64 where the twin accumulates in float64
(row sums of layernorm and the loss); elsewhere it follows the input's dtype, so float32
results agree with the twins to float32 rounding (GELU's to the bounds above: its float32
tanh is not np.tanh).
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
from .fastmath import JIT_VEC, tanh_f32
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
# float32: one Numba loop per direction over the (N, 4C) buffer, tanh(u) computed in the
# loop as a rational function, kernels/fastmath.py's tanh_f32 (Eigen's float32 tanh,
# generic_fast_tanh_float, which TensorFlow and XLA use): no call, only multiplies, adds,
# a division and selects, so LLVM vectorises the loop (a loop calling math.tanh is
# scalar, 7x slower than NumPy's SIMD tanh). Two settings make it vectorise: float32
# constants (a float64 literal would turn the arithmetic into float64) and
# error_model="numpy" (fastmath.JIT_VEC: Numba's default checks each division for a zero
# divisor, to raise ZeroDivisionError, and that branch stops the vectoriser; tanh_f32's
# divisor is >= 4.9e-3).
# fastmath stays off: no fused multiply-adds, the same bits on every x86 machine. Serial:
# a prange loop was no faster on 2 busy cores (0.8-0.9 ms either way), 12 ms under OpenMP's
# default spin-waiting, and could save at most ~0.5 ms a call (benchmarks/README.md, GELU).
# Its error over a sweep of 72 million float32 inputs in [-10, 10] (every 32nd float32 in
# (0, 10] of either sign, a 2^-16 grid, 2 million N(0, 9) draws), against float64 np.tanh:
# max 6.1 ulp, 3.6e-7 absolute, at |u| = 5.9 (np.tanh in float32: 1.4 ulp, 6.0e-8; the
# rational function itself, evaluated in float64, 1.6 ulp: the rest is float32 rounding).
# GELU against the twin in float32 on the same sweep: forward max 1.4e-6 absolute,
# backward (dout = 1) 4.5e-6 absolute, both at x = 4.2, where gelu ~ x and gelu' ~ 1 (in
# ulp, 3.4 and 35 ulp of the float64 value for x in [0, 10]; for x < 0 both this kernel
# and the twin lose all relative precision to 1 + t -> 0, 1.7e8 ulp for the twin).
# Extreme inputs follow from the twin's formulas: the clamp makes t = ±1 exactly (as
# np.tanh beyond |u| = 9), so beyond |x| = 5.5 both give the same bits: beyond |x| = 100
# gelu(x) is x or -0 and gelu'(x) 1 or 0, and ±inf and nan give the twin's inf/nan.
# float64 (and any other dtype): NumPy's lines, each in place on one or two (B, T, 4C)
# buffers, in the twin's order of operations (the twin's results, bit for bit).
_f32 = np.float32
_K32, _A32, _3A32 = _f32(_K), _f32(_A), _f32(3 * _A)
_HALF32, _ONE32, _X_MAX32 = _f32(0.5), _f32(1.0), _f32(100.0)
@njit(**JIT_VEC)
def _gelu_forward_f32(x, out):
    """x (n,) float32 -> out (n,): 0.5 x (1 + t), t = tanh(K (x + A x·x·x)), the twin's order."""
    for i in range(x.shape[0]):
        xi = x[i]
        t = tanh_f32(_K32 * (xi + _A32 * xi * xi * xi))
        out[i] = _HALF32 * xi * (_ONE32 + t)


@njit(**JIT_VEC)
def _gelu_backward_f32(dout, x, dx):
    """dout, x (n,) float32 -> dx (n,) = dout 0.5 (1 + t + x (1 - t²) K (1 + 3A xc²)), with
    the twin's guard xc = x clipped to ±100 (xc² finite; 1 - t² is 0 beyond)."""
    for i in range(x.shape[0]):
        xi = x[i]
        t = tanh_f32(_K32 * (xi + _A32 * xi * xi * xi))          # recomputed: the cache is x
        xc = _X_MAX32 if xi > _X_MAX32 else (-_X_MAX32 if xi < -_X_MAX32 else xi)
        dgelu = _HALF32 * (_ONE32 + t + xi * (_ONE32 - t * t) * _K32 * (_ONE32 + _3A32 * (xc * xc)))
        dx[i] = dout[i] * dgelu


def _takes_f32_kernel(*arrays):
    """Whether the float32 kernels take these: float32 ndarrays of one shape, the last (x)
    C-contiguous."""
    x = arrays[-1]
    return (all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == x.shape
                for a in arrays) and x.flags.c_contiguous)


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
    if _takes_f32_kernel(x):
        out = np.empty_like(x)
        _gelu_forward_f32(x.reshape(-1), out.reshape(-1))
        return out, x
    t = _tanh_u(x)
    t += 1                                     # 1 + t
    out = x * 0.5
    out *= t                                   # 0.5 x (1 + t)
    return out, x


def gelu_backward(dout, cache):
    """dout -> dx, as the twin: 0.5 (1 + t + x (1 - t²) K (1 + 3A x²)), times dout; in one
    pass for float32, in three buffers otherwise."""
    x = cache
    if _takes_f32_kernel(dout, x):
        dx = np.empty_like(x)
        _gelu_backward_f32(np.ascontiguousarray(dout).reshape(-1), x.reshape(-1), dx.reshape(-1))
        return dx
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
