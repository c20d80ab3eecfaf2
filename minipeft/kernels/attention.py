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

_jit = dict(cache=True, fastmath=False)   # fastmath off: keep the twin's arithmetic


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


def attention_forward(q, k, v, allowed):
    """q (B, NH, Tq, hs), k, v (B, NH, Tk, hs), allowed (B|1, 1, Tq, Tk) -> y (B, NH, Tq, hs)."""
    dt = np.result_type(q, k, v)
    q, k, v = _c(q, dt), _c(k, dt), _c(v, dt)
    scale = dt.type(1.0 / np.sqrt(q.shape[-1]))
    s = q @ k.swapaxes(-1, -2)                          # (B, NH, Tq, Tk) BLAS
    p = _masked_softmax(s, _c(allowed, np.bool_), scale, _consts(dt))
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


def attention_backward(dy, cache):
    """dy (B, NH, Tq, hs) -> dq, dk, dv with the shapes of q, k, v."""
    q, k, v, p = cache
    dt = np.result_type(dy, q)
    dy = _c(dy, dt)
    scale = dt.type(1.0 / np.sqrt(q.shape[-1]))
    dv = p.swapaxes(-1, -2) @ dy                        # (B, NH, Tk, hs)
    dp = dy @ v.swapaxes(-1, -2)                        # (B, NH, Tq, Tk)
    ds = _softmax_backward(dp, _c(p, dt), scale, _consts(dt))
    dq = ds @ k                                         # (B, NH, Tq, hs)
    dk = ds.swapaxes(-1, -2) @ q                        # (B, NH, Tk, hs)
    return dq, dk, dv
