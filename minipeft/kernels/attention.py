"""Numba kernels for attention over past/prefix + causal keys, the fast twins of
``minipeft.ops.attention.attention_forward`` / ``attention_backward``.

Same signatures, same cache ``(q, k, v, p)``, same values: tests/test_attention_kernel.py
holds them equal. The equations (see ops/attention.py) are

    s = q kᵀ / √hs                   (B, NH, Tq, Tk), keys = P prefix/past + Tq new
    p = softmax(s where allowed, else −∞)     a row with no allowed key gives p = 0
    y = p v
    backward:  dv = pᵀ dy;  dp = dy vᵀ;  ds = p ⊙ (dp − Σ_j dp ⊙ p) / √hs;
               dq = ds k;  dk = dsᵀ q

The four matrix products stay with NumPy's BLAS (batched matmul over B·NH). What the
kernels fuse is everything elementwise between them, one pass over each score row
instead of the twin's six (scale, where, max, exp, sum, divide) and three (dp·p, sum,
subtract-multiply-scale):

    _masked_softmax     scale, mask, row max, exp, normalise: in place, scores -> p
    _softmax_backward   Σ dp·p and p ⊙ (dp − Σ) / √hs: in place, dp -> ds

Masked entries are written as exact zeros without calling exp. The mask ``allowed``
(B|1, 1, Tq, Tk) is read as given, so the same kernel serves plain GPT-2 (Tk = Tq),
a KV cache and a trainable prefix (Tk = P + Tq), with or without padding.

float32 runs ``_masked_softmax_f32`` / ``_softmax_backward_f32``: the same equations in
passes over a row that LLVM vectorises, with kernels/fastmath.py's exp_f32 (within 1 ulp
of float64 exp; the C library's expf is a call per element, which no loop vectorises)
and its integer-key max. The serial sums keep their order and stop at the last key
allowed (forward) or with p != 0 (backward), as the keys after it add exact zeros; the
exp stops at the 16-float register holding that key: a causal row's hidden half is
mostly skipped. Against the float64 twin at (4, 12, 128, 128), N(0, 1) inputs: p within
2.9e-7 (1.3e-6 with scores 3x larger), y, dq, dk, dv within 3.4e-7, 2.9e-7, 6.8e-7,
5.2e-7 (max|a - b| / max|b|): the figures of the kernel before issue 17 and of the
float32 twin. A query that sees one key gives it exactly 1 (exp(0) = 1), a hidden key
exactly 0. float64 keeps the loops above and their results, bit for bit.

The four products dominate, so the kernels win only what the elementwise passes cost
(timings: benchmarks/README.md, "Kernel design"). Serial, no prange: parallel over
(B, NH) did not pay, for the reason kernels/lora.py gives: Numba's OpenMP threads keep
spinning after a prange loop and compete with NumPy's BLAS threads, and every kernel
here sits between BLAS calls.
Typed constants: see ``_consts``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .fastmath import JIT_VEC, exp_f32, masked_max_f32

_jit = dict(cache=True, fastmath=False)   # fastmath off: keep the twin's arithmetic
_ZERO32, _ONE32 = np.float32(0.0), np.float32(1.0)


def _c(a, dtype):
    """C-contiguous in ``dtype``: copies only a strided view or another dtype."""
    return np.ascontiguousarray(a, dtype=dtype)


def _consts(dtype):
    """(-inf, 0, 1) in ``dtype``: inside a kernel a float64 literal would turn float32
    arithmetic into float64 (Numba types float32 op 0.0 as float64), 1.6x slower."""
    return np.array([-np.inf, 0.0, 1.0], dtype=dtype)


@njit(**_jit)
def _masked_softmax(s, allowed, scale, consts):
    """s (B, NH, Tq, Tk) scores q kᵀ -> p, in place; allowed (B|1, 1, Tq, Tk) bool."""
    neg_inf, zero, one = consts[0], consts[1], consts[2]
    B, NH, Tq, Tk = s.shape
    per_row = allowed.shape[0] > 1
    for b in range(B):
        ab = b if per_row else 0
        for h in range(NH):
            for i in range(Tq):
                row, ok = s[b, h, i], allowed[ab, 0, i]
                m = neg_inf                  # m = max(where(allowed, s * scale, -inf))
                for j in range(Tk):
                    if ok[j]:
                        x = row[j] * scale   # s *= scale
                        row[j] = x
                        m = max(m, x)
                if not np.isfinite(m):       # m[~isfinite(m)] = 0: a row with no visible key
                    m = zero
                z = zero
                for j in range(Tk):          # p = exp(s - m) where allowed, exactly 0 elsewhere
                    if ok[j]:
                        e = np.exp(row[j] - m)
                        row[j] = e
                        z += e
                    else:
                        row[j] = zero
                if z == zero:                # z[z == 0] = 1: such rows stay all zero
                    z = one
                for j in range(Tk):          # p /= z
                    row[j] /= z
    return s


@njit(**JIT_VEC)
def _masked_softmax_f32(s, allowed, scale):
    """_masked_softmax for float32, in passes that LLVM vectorises: the exp is exp_f32
    (kernels/fastmath.py), computed on every key up to ``stop`` and masked after; the max
    an integer max (masked_max_f32). The sum z stays serial, in _masked_softmax's order,
    over the keys up to the last allowed one (those after it add exact zeros)."""
    B, NH, Tq, Tk = s.shape
    per_row = allowed.shape[0] > 1
    for b in range(B):
        ab = b if per_row else 0
        for h in range(NH):
            for i in range(Tq):
                row, ok = s[b, h, i], allowed[ab, 0, i]
                for j in range(Tk):          # s *= scale
                    row[j] = row[j] * scale
                m, last = masked_max_f32(row, ok)   # max(where(allowed, s, -inf)); keys < last
                if not np.isfinite(m):       # m[~isfinite(m)] = 0: a row with no visible key
                    m = _ZERO32
                stop = min(Tk, -(-last // 16) * 16)  # last, up to a multiple of 16 (a zmm)
                for j in range(stop):        # p = exp(s - m) where allowed, exactly 0 elsewhere
                    e = exp_f32(row[j] - m)
                    row[j] = e if ok[j] else _ZERO32
                z = _ZERO32
                for j in range(last):        # z = sum(p): the same order as _masked_softmax
                    z += row[j]
                if z == _ZERO32:             # z[z == 0] = 1: such rows stay all zero
                    z = _ONE32
                for j in range(Tk):          # p /= z; and the 0 of the keys after stop
                    row[j] = row[j] / z if j < stop else _ZERO32
    return s


def attention_forward(q, k, v, allowed):
    """q (B, NH, Tq, hs), k, v (B, NH, Tk, hs), allowed (B|1, 1, Tq, Tk) -> y (B, NH, Tq, hs)."""
    dt = np.result_type(q, k, v)
    q, k, v = _c(q, dt), _c(k, dt), _c(v, dt)
    scale = dt.type(1.0 / np.sqrt(q.shape[-1]))
    s = q @ k.swapaxes(-1, -2)                          # (B, NH, Tq, Tk) BLAS
    allowed = _c(allowed, np.bool_)
    if dt == np.float32:
        p = _masked_softmax_f32(s, allowed, scale)
    else:
        p = _masked_softmax(s, allowed, scale, _consts(dt))
    y = p @ v                                           # (B, NH, Tq, hs) BLAS
    return y, (q, k, v, p)


@njit(**_jit)
def _softmax_backward(dp, p, scale, consts):
    """dp (B, NH, Tq, Tk) -> ds = p (dp - sum(dp p)) scale, in place."""
    zero = consts[1]
    B, NH, Tq, Tk = dp.shape
    for b in range(B):
        for h in range(NH):
            for i in range(Tq):
                d, pr = dp[b, h, i], p[b, h, i]
                dot = zero                   # sum(dp * p, axis=-1)
                for j in range(Tk):
                    dot += d[j] * pr[j]
                for j in range(Tk):          # ds = p * (dp - dot) * scale
                    d[j] = pr[j] * (d[j] - dot) * scale
    return dp


@njit(**JIT_VEC)
def _softmax_backward_f32(dp, p, scale):
    """_softmax_backward for float32: the same serial sum, over the keys up to the last
    nonzero p (those after add d·0 = 0; so a non-finite dp there no longer turns the row's
    sum into nan, as it does in float64 and in the twin), and a vectorised second pass."""
    B, NH, Tq, Tk = dp.shape
    for b in range(B):
        for h in range(NH):
            for i in range(Tq):
                d, pr = dp[b, h, i], p[b, h, i]
                last = 0                     # 1 + the last j with p != 0 (an integer max)
                for j in range(Tk):
                    last = max(last, (j + 1) * (pr[j] != _ZERO32))
                dot = _ZERO32                # sum(dp * p, axis=-1), _softmax_backward's order
                for j in range(last):
                    dot += d[j] * pr[j]
                for j in range(Tk):          # ds = p * (dp - dot) * scale
                    d[j] = pr[j] * (d[j] - dot) * scale
    return dp


def attention_backward(dy, cache):
    """dy (B, NH, Tq, hs) -> dq, dk, dv with the shapes of q, k, v."""
    q, k, v, p = cache
    dt = np.result_type(dy, q)
    dy = _c(dy, dt)
    scale = dt.type(1.0 / np.sqrt(q.shape[-1]))
    dv = p.swapaxes(-1, -2) @ dy                        # (B, NH, Tk, hs)
    dp = dy @ v.swapaxes(-1, -2)                        # (B, NH, Tq, Tk)
    if dt == np.float32:
        ds = _softmax_backward_f32(dp, _c(p, dt), scale)
    else:
        ds = _softmax_backward(dp, _c(p, dt), scale, _consts(dt))
    dq = ds @ k                                         # (B, NH, Tq, hs)
    dk = ds.swapaxes(-1, -2) @ q                        # (B, NH, Tk, hs)
    return dq, dk, dv
