"""Numba kernels for bottleneck adapters, the fast twins of ``minipeft.peft.bottleneck``.

The NumPy functions in minipeft/peft/bottleneck.py are the reference: each kernel
here has the same signature and returns the same values, cache included, so
``adapter_forward`` / ``adapter_backward`` run on either (``ops=``);
tests/test_bottleneck.py holds the two equal. What each kernel fuses:

    bias_act_forward    + b_d and the activation in one pass (the twin: 2-6 passes, and
                        a Python call of math.erf per element for the exact gelu)
    bias_act_backward   the activation's derivative, dd ⊙ act'(h) and the b_d sum in one pass
    scale_forward       + b_u, · s, · dropout mask, + residual in one pass
    scale_backward      dq = do ⊙ mask · s, the b_u sum and the dscaling sum in one pass

The two matrix products of the adapter stay in NumPy's BLAS, called by
adapter_forward; the kernels are serial for the reasons given in kernels/lora.py
(Numba's threads starve the BLAS call that follows).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

_jit = dict(cache=True, fastmath=False)   # fastmath off: keep the twin's arithmetic
# The twin's activations and slope (peft/bottleneck.py), kept here so that kernels import
# nothing from peft/; tests/test_bottleneck.py holds the two equal.
_CODE = {"relu": 0, "leakyrelu": 1, "swish": 2, "silu": 2, "gelu": 3, "gelu_new": 4, "tanh": 5}
LEAKY_SLOPE = 0.01                # F.leaky_relu's default


# The twin's caches, kept here for the same reason (fields held equal by tests/test_ops_choice.py).
class BiasActCache(NamedTuple):
    h: np.ndarray                 # (N, m) the pre-activation p + b
    d: np.ndarray                 # (N, m) act(h)


class ScaleCache(NamedTuple):
    u: np.ndarray                 # (N, C) q + b, before the scaling
    mask: np.ndarray | None       # (N, C) the dropout mask, or None
    scaling: object               # a float, or the trained s: (1,) or (C,)
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_K = math.sqrt(2.0 / math.pi)                 # gelu_new: 0.5 h (1 + tanh(K (h + A h³)))
_A = 0.044715


def _c(a, dtype):
    """C-contiguous in `dtype`: copies only a strided view or another dtype."""
    return np.ascontiguousarray(a, dtype=dtype)


def _code(non_linearity):
    if non_linearity not in _CODE:
        raise ValueError(f"non_linearity must be one of {tuple(_CODE)}, got {non_linearity!r}")
    return _CODE[non_linearity]


@njit(**_jit)
def _sigmoid(h):
    if h >= 0:
        return 1.0 / (1.0 + math.exp(-h))
    e = math.exp(h)
    return e / (1.0 + e)


@njit(**_jit)
def _act(h, code):
    """act(h) for one value; code from _CODE."""
    if code == 0:
        return h if h > 0 else 0.0
    if code == 1:
        return h if h > 0 else h * LEAKY_SLOPE
    if code == 2:
        return h * _sigmoid(h)
    if code == 3:
        return 0.5 * h * (1.0 + math.erf(h * _SQRT_HALF))
    if code == 4:
        return 0.5 * h * (1.0 + math.tanh(_K * (h + _A * h * h * h)))
    return math.tanh(h)


@njit(**_jit)
def _act_grad(h, d, code):
    """act'(h); d = act(h) (tanh uses it)."""
    if code == 0:
        return 1.0 if h > 0 else 0.0
    if code == 1:
        return 1.0 if h > 0 else LEAKY_SLOPE
    if code == 2:                          # σ (1 + h (1 − σ))
        s = _sigmoid(h)
        return s * (1.0 + h * (1.0 - s))
    if code == 3:                          # Φ(h) + h φ(h)
        return 0.5 * (1.0 + math.erf(h * _SQRT_HALF)) + h * math.exp(-0.5 * h * h) * _INV_SQRT_2PI
    if code == 4:
        hc = min(max(h, -100.0), 100.0)    # 1 − t² = 0 beyond: keep h² finite
        t = math.tanh(_K * (h + _A * h * h * h))
        return 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * _K * (1.0 + 3.0 * _A * hc * hc)
    return 1.0 - d * d


# ------------------------------------------------------------------ bias + activation
@njit(**_jit)
def _bias_act_forward(p, b, code):
    N, m = p.shape
    h = np.empty_like(p)                                        # (N, m)
    d = np.empty_like(p)                                        # (N, m)
    for n in range(N):
        for j in range(m):
            v = p[n, j] + b[j]             # h = p + b
            h[n, j] = v
            d[n, j] = _act(v, code)        # d = act(h)
    return h, d


def bias_act_forward(p, b, non_linearity):
    """p (N, m) = z W_dᵀ, b (m,) -> d = act(p + b) (N, m); cache (h, d)."""
    dt = np.result_type(p, b)
    h, d = _bias_act_forward(_c(p, dt), _c(b, dt), _code(non_linearity))
    return d, BiasActCache(h, d)


@njit(**_jit)
def _bias_act_backward(dd, h, d, code):
    N, m = dd.shape
    dh = np.empty_like(dd)                                      # (N, m)
    db = np.zeros(m, dd.dtype)                                  # (m,)
    for n in range(N):
        for j in range(m):
            g = dd[n, j] * _act_grad(h[n, j], d[n, j], code)    # dh = dd * act'(h)
            dh[n, j] = g
            db[j] += g                     # db = dh.sum(axis=0)
    return dh, db


def bias_act_backward(dd, cache, non_linearity):
    """dd (N, m) -> (dp (N, m), db (m,)): the derivative of act at h = p + b."""
    h, d = cache
    dt = np.result_type(dd, h)
    return _bias_act_backward(_c(dd, dt), _c(h, dt), _c(d, dt), _code(non_linearity))


# ------------------------------------------------------------------ scaling, dropout, residual
@njit(**_jit)
def _scale_forward(q, b, s, mask, residual, has_mask, has_res):
    N, C = q.shape
    u = np.empty_like(q)                                        # (N, C)
    o = np.empty_like(q)                                        # (N, C)
    per_channel = s.shape[0] > 1
    for n in range(N):
        for c in range(C):
            v = q[n, c] + b[c]             # u = q + b
            u[n, c] = v
            v = v * (s[c] if per_channel else s[0])             # o = u * scaling
            if has_mask:
                v = v * mask[n, c]         # o *= mask
            if has_res:
                v = v + residual[n, c]     # o += residual
            o[n, c] = v
    return u, o


def scale_forward(q, b, scaling, mask=None, residual=None):
    """q (N, C) = d W_uᵀ -> o = drop(s · (q + b)) (+ residual) (N, C); cache (u, mask, s).
    scaling: a float, or a trained array (1,) ("learned") or (C,) ("channel")."""
    dt = np.result_type(q, b)
    s1 = _c(np.atleast_1d(scaling), dt)
    dummy = np.zeros((1, 1), dt)
    u, o = _scale_forward(_c(q, dt), _c(b, dt), s1,
                          dummy if mask is None else _c(mask, dt),
                          dummy if residual is None else _c(residual, dt),
                          mask is not None, residual is not None)
    return o, ScaleCache(u, mask, scaling)


@njit(**_jit)
def _scale_backward(do, u, s, mask, has_mask, want_ds):
    N, C = do.shape
    per_channel = s.shape[0] > 1
    dq = np.empty_like(do)                                      # (N, C)
    db = np.zeros(C, do.dtype)                                  # (C,)
    ds = np.zeros(s.shape[0], do.dtype)                         # (1,) or (C,)
    for n in range(N):
        for c in range(C):
            g = do[n, c] * mask[n, c] if has_mask else do[n, c]  # g = do * mask
            sc = s[c] if per_channel else s[0]
            dq[n, c] = g * sc              # dq = g * scaling
            db[c] += g * sc                # db = dq.sum(axis=0)
            if want_ds:                    # ds = (g * u).sum(...)
                ds[c if per_channel else 0] += g * u[n, c]
    return dq, db, ds


def scale_backward(do, cache):
    """do (N, C) -> (dq (N, C), db (C,), dscaling: None for a float s, else s's shape)."""
    u, mask, scaling = cache
    dt = np.result_type(do, u)
    want_ds = bool(np.ndim(scaling))
    dq, db, ds = _scale_backward(_c(do, dt), _c(u, dt), _c(np.atleast_1d(scaling), dt),
                                 np.zeros((1, 1), dt) if mask is None else _c(mask, dt),
                                 mask is not None, want_ds)
    return dq, db, (ds if want_ds else None)
