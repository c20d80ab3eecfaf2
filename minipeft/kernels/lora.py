"""Numba kernels for LoRA and DoRA, the fast twins of ``minipeft.peft.lora``.

The plain NumPy functions in minipeft/peft/lora.py are the reference: each kernel
here has the same signature and returns the same values, cache tuples included,
so the two replace each other one for one; tests/test_lora_kernels.py holds them
equal. Each loop quotes the twin line it implements. What each kernel fuses:

    lora_forward      the dropout multiply in one loop; the scaling folded into B (out, r)
                      rather than a pass over delta (N, out)
    lora_backward     the scaling folded into B; the dropout mask applied to dx in one loop
    dora_weight_norm  s (BA)ᵀ by BLAS a block of rows (256 KiB) at a time, then W + block, its
                      square and the sum over `in` in one pass: the (in, out) s (BA)ᵀ is never whole
    dora_forward      (g − 1) ⊙ base + g ⊙ delta and the cached base + delta in one pass
    dora_backward     dbase, ddelta and the dmagnitude reduction in one pass
    dora_merged_forward   b + g ⊙ (xw + delta) and the cached xw + delta in one pass
    dora_merged_backward  g ⊙ dout and the dmagnitude reduction in one pass

How it is fast, and why not more (the measurements: benchmarks/README.md, "Kernel design"):

* The matrix products stay with NumPy's BLAS, called from the Python wrappers. As Numba
  loops they lose (fastmath off: LLVM may not reorder a floating-point sum, so a
  reduction does not vectorise). Calling np.dot *inside* a kernel is worse in a real
  step: Numba links scipy's own OpenBLAS, a second thread pool that fights NumPy's.
* Serial, no parallel=True: Numba's OpenMP threads keep spinning after a prange loop
  and starve the next BLAS call (cf. OpenBLAS issue #3187). Every kernel here sits
  between BLAS calls.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

_jit = dict(cache=True, fastmath=False)   # fastmath off: keep the twin's arithmetic


# The twin's caches (peft/lora.py), defined here so that kernels import nothing from peft/;
# tests/test_ops_choice.py holds the fields equal, tests/test_lora_kernels.py the values.
class LoraCache(NamedTuple):
    xd: np.ndarray                # (N, in) drop(x), x itself without dropout
    u: np.ndarray                 # (N, r) the down-projection xd Aᵀ


class DoraCache(NamedTuple):
    merged: np.ndarray            # (N, out) base + delta: x (W0 + s (BA)ᵀ) without bias (under
                                  #          dropout drop(x) W0 + delta); all dmagnitude needs
    g: np.ndarray                 # (out,) m / norm
    norm: np.ndarray              # (out,) ‖W0 + s (BA)ᵀ‖_c, a constant


def _c(a, dtype):
    """C-contiguous in `dtype`: copies only a strided view or another dtype."""
    return np.ascontiguousarray(a, dtype=dtype)


# ------------------------------------------------------------------ LoRA
# The products go to NumPy's BLAS from the Python wrapper; the kernels fuse what is
# elementwise around them.
@njit(**_jit)
def _masked(x, mask):
    N, n_in = x.shape
    out = np.empty_like(x)                                      # (N, in)
    for n in range(N):                     # xd = x * mask  /  dx *= mask
        for i in range(n_in):
            out[n, i] = x[n, i] * mask[n, i]
    return out


def lora_forward(x, A, B, scaling, mask=None):
    """x (N, in) -> the update s · drop(x) Aᵀ Bᵀ (N, out); cache (xd, u)."""
    dt = np.result_type(x, A, B)
    x = _c(x, dt)
    xd = x if mask is None else _masked(x, _c(mask, dt))       # (N, in)  drop(x)
    u = xd @ _c(A, dt).T                                        # (N, r)   down-projection
    delta = u @ (_c(B, dt) * dt.type(scaling)).T               # (N, out) scaling folded into B (out, r)
    return delta, LoraCache(xd, u)


def lora_backward(ddelta, cache, A, B, scaling, mask=None):
    """ddelta (N, out) -> (dx (N, in), dA (r, in), dB (out, r))."""
    xd, u = cache
    dt = np.result_type(ddelta, A, B)
    s = dt.type(scaling)
    ddelta = _c(ddelta, dt)
    dB = (ddelta.T @ u) * s                                     # (out, r)
    du = ddelta @ (_c(B, dt) * s)                               # (N, r)   scaling folded into B
    dA = du.T @ xd                                              # (r, in)
    dx = du @ _c(A, dt)                                         # (N, in)
    if mask is not None:
        dx = _masked(dx, _c(mask, dt))
    return dx, dA, dB


# ------------------------------------------------------------------ DoRA
# Each (N, out) array costs a pass over memory, and a new one page faults too: the kernels
# read and write each element once and allocate only what they return. The per-row
# slices (x_n = xw[n], …) are what lets LLVM vectorise the loops over `out`.
_BLOCK_BYTES = 1 << 18      # dora_weight_norm: s (BA)ᵀ a block of rows at a time, 256 KiB: in L2


@njit(**_jit)
def _add_column_squares(sq, W, D):
    n_in, n_out = W.shape
    for i in range(n_in):                  # merged = W + delta_weight   (a block of rows)
        W_i, D_i = W[i], D[i]
        for o in range(n_out):             # np.sum(merged * merged, axis=0)
            w = W_i[o] + D_i[o]
            sq[o] += w * w


def dora_weight_norm(W, A, B, scaling):
    """‖W0 + s (BA)ᵀ‖ over `in` for each output column: (out,). Treated as a constant."""
    dt = np.result_type(W, A, B)
    W, AT = _c(W, dt), _c(A, dt).T                              # AT (in, r)
    sBT = (_c(B, dt) * dt.type(scaling)).T                      # (r, out) scaling folded into B
    n_in, n_out = W.shape
    rows = max(1, _BLOCK_BYTES // (n_out * dt.itemsize))
    D = np.empty((min(rows, n_in), n_out), dt)                  # (rows, out) rows of s (BA)ᵀ
    sq = np.zeros(n_out, dt)                                    # (out,)
    for i in range(0, n_in, rows):
        D_i = D[:min(rows, n_in - i)]
        np.matmul(AT[i:i + rows], sBT, out=D_i)                 # delta_weight's rows i … i + rows
        _add_column_squares(sq, W[i:i + rows], D_i)
    return np.sqrt(sq)                     # np.sqrt(...)


@njit(**_jit)
def _dora_forward(base, delta, g, gm1):
    N, n_out = base.shape
    extra = np.empty_like(base)                                 # (N, out)
    merged = np.empty_like(base)                                # (N, out)
    for n in range(N):
        b_n, d_n, e_n, m_n = base[n], delta[n], extra[n], merged[n]
        for o in range(n_out):
            e_n[o] = gm1[o] * b_n[o] + g[o] * d_n[o]    # extra = (g - 1) * base + g * delta
            m_n[o] = b_n[o] + d_n[o]                    # base + delta
    return extra, merged


def dora_forward(base, delta, magnitude, norm):
    """DoRA's extra output (g − 1) ⊙ base + g ⊙ delta, g = m / norm.

    base (N, out): x W0 without bias (drop(x) W0 under dropout); delta (N, out): the
    LoRA update from lora_forward. Returns (extra (N, out), cache)."""
    dt = np.result_type(base, delta, magnitude, norm)
    base, delta, norm = _c(base, dt), _c(delta, dt), _c(norm, dt)
    g = _c(magnitude, dt) / norm           # g = magnitude / norm          (out,)
    extra, merged = _dora_forward(base, delta, g, g - 1)
    return extra, DoraCache(merged, g, norm)


@njit(**_jit)
def _dora_backward(dextra, merged, g, gm1, norm):
    N, n_out = dextra.shape
    dbase = np.empty_like(dextra)                               # (N, out)
    ddelta = np.empty_like(dextra)                              # (N, out)
    dmagnitude = np.zeros_like(g)                               # (out,)
    for n in range(N):
        de_n, m_n, db_n, dd_n = dextra[n], merged[n], dbase[n], ddelta[n]
        for o in range(n_out):
            d = de_n[o]
            db_n[o] = d * gm1[o]           # dbase = dextra * (g - 1)
            dd_n[o] = d * g[o]             # ddelta = dextra * g
            dmagnitude[o] += d * m_n[o]    # np.einsum("no,no->o", dextra, merged)
    for o in range(n_out):                 # ... / norm
        dmagnitude[o] /= norm[o]
    return dbase, ddelta, dmagnitude


def dora_backward(dextra, cache):
    """dextra (N, out) -> (dbase (N, out), ddelta (N, out), dmagnitude (out,))."""
    merged, g, norm = cache
    dt = np.result_type(dextra, merged, g, norm)
    g = _c(g, dt)
    return _dora_backward(_c(dextra, dt), _c(merged, dt), g, g - 1, _c(norm, dt))


@njit(**_jit)
def _dora_merged_forward(xw, bias, delta, g):
    N, n_out = xw.shape
    out = np.empty_like(xw)                                     # (N, out)
    merged = np.empty_like(xw)                                  # (N, out)
    for n in range(N):
        x_n, d_n, o_n, m_n = xw[n], delta[n], out[n], merged[n]
        for o in range(n_out):
            h = x_n[o] + d_n[o]            # merged = xw + delta
            m_n[o] = h
            o_n[o] = bias[o] + g[o] * h    # out = bias + g * merged
    return out, merged


def dora_merged_forward(xw, bias, delta, magnitude, norm):
    """The whole DoRA layer without dropout, where base = x W0: the terms of dora_forward
    collect into the merged layer rescaled,  x W0 + b + extra = b + g ⊙ (x W0 + delta).

    xw (N, out): x W0 without bias; bias (out,); delta (N, out) from lora_forward.
    Returns (out (N, out), cache)."""
    dt = np.result_type(xw, bias, delta, magnitude, norm)
    norm = _c(norm, dt)
    g = _c(magnitude, dt) / norm           # g = magnitude / norm          (out,)
    out, merged = _dora_merged_forward(_c(xw, dt), _c(bias, dt), _c(delta, dt), g)
    return out, DoraCache(merged, g, norm)


@njit(**_jit)
def _dora_merged_backward(dout, merged, g, norm):
    N, n_out = dout.shape
    dmerged = np.empty_like(dout)                               # (N, out)
    dmagnitude = np.zeros_like(g)                               # (out,)
    for n in range(N):
        do_n, m_n, dm_n = dout[n], merged[n], dmerged[n]
        for o in range(n_out):
            d = do_n[o]
            dm_n[o] = d * g[o]             # dmerged = dout * g
            dmagnitude[o] += d * m_n[o]    # np.einsum("no,no->o", dout, merged)
    for o in range(n_out):                 # ... / norm
        dmagnitude[o] /= norm[o]
    return dmerged, dmagnitude


def dora_merged_backward(dout, cache):
    """dout (N, out) -> (dmerged (N, out), dmagnitude (out,)). dmerged = g ⊙ dout is the
    gradient of x W0 and of delta alike: both enter as their sum."""
    merged, g, norm = cache
    dt = np.result_type(dout, merged, g, norm)
    return _dora_merged_backward(_c(dout, dt), _c(merged, dt), _c(g, dt), _c(norm, dt))
