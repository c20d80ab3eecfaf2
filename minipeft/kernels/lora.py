"""Numba kernels for LoRA and DoRA, the fast twins of ``minipeft.peft.lora``.

The plain NumPy functions in minipeft/peft/lora.py are the reference: each kernel
here has the same signature and returns the same values, cache tuples included,
so the two replace each other one for one; tests/test_lora_kernels.py holds them
equal. Each loop quotes the twin line it implements. What each kernel fuses:

    lora_forward      the dropout multiply in one loop; the scaling folded into B (out, r)
                      rather than a pass over delta (N, out)
    lora_backward     the scaling folded into B; the dropout mask applied to dx in one loop
    dora_weight_norm  W + s (BA)ᵀ, its square and the sum over `in` in one pass
    dora_forward      (g − 1) ⊙ base + g ⊙ delta in one pass, no temporaries
    dora_backward     dbase, ddelta and the dmagnitude reduction in one pass

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
    base: np.ndarray              # (N, out) x W0 without bias (drop(x) W0 under dropout)
    delta: np.ndarray             # (N, out) the LoRA update
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
@njit(**_jit)
def _column_norms(W, D):
    n_in, n_out = W.shape
    sq = np.zeros(n_out, W.dtype)                               # (out,)
    for i in range(n_in):                  # merged = W + delta_weight
        for o in range(n_out):             # np.sum(merged * merged, axis=0)
            w = W[i, o] + D[i, o]
            sq[o] += w * w
    return np.sqrt(sq)                     # np.sqrt(...)


def dora_weight_norm(W, A, B, scaling):
    """‖W0 + s (BA)ᵀ‖ over `in` for each output column: (out,). Treated as a constant."""
    dt = np.result_type(W, A, B)
    D = _c(A, dt).T @ (_c(B, dt) * dt.type(scaling)).T          # (in, out) s (BA)ᵀ
    return _column_norms(_c(W, dt), D)


@njit(**_jit)
def _dora_forward(base, delta, g, gm1):
    N, n_out = base.shape
    extra = np.empty_like(base)                                 # (N, out)
    for n in range(N):                     # extra = (g - 1) * base + g * delta
        for o in range(n_out):
            extra[n, o] = gm1[o] * base[n, o] + g[o] * delta[n, o]
    return extra


def dora_forward(base, delta, magnitude, norm):
    """DoRA's extra output (g − 1) ⊙ base + g ⊙ delta, g = m / norm.

    base (N, out): x W0 without bias (drop(x) W0 under dropout); delta (N, out): the
    LoRA update from lora_forward. Returns (extra (N, out), cache)."""
    dt = np.result_type(base, delta, magnitude, norm)
    base, delta, norm = _c(base, dt), _c(delta, dt), _c(norm, dt)
    g = _c(magnitude, dt) / norm           # g = magnitude / norm          (out,)
    extra = _dora_forward(base, delta, g, g - 1)
    return extra, DoraCache(base, delta, g, norm)


@njit(**_jit)
def _dora_backward(dextra, base, delta, g, gm1, norm):
    N, n_out = dextra.shape
    dbase = np.empty_like(dextra)                               # (N, out)
    ddelta = np.empty_like(dextra)                              # (N, out)
    dmagnitude = np.zeros_like(g)                               # (out,)
    for n in range(N):
        for o in range(n_out):
            d = dextra[n, o]
            dbase[n, o] = d * gm1[o]       # dbase = dextra * (g - 1)
            ddelta[n, o] = d * g[o]        # ddelta = dextra * g
            # np.einsum("no,no->o", dextra, base + delta)
            dmagnitude[o] += d * (base[n, o] + delta[n, o])
    for o in range(n_out):                 # ... / norm
        dmagnitude[o] /= norm[o]
    return dbase, ddelta, dmagnitude


def dora_backward(dextra, cache):
    """dextra (N, out) -> (dbase (N, out), ddelta (N, out), dmagnitude (out,))."""
    base, delta, g, norm = cache
    dt = np.result_type(dextra, base, delta, g, norm)
    g = _c(g, dt)
    return _dora_backward(_c(dextra, dt), _c(base, dt), _c(delta, dt), g, g - 1, _c(norm, dt))
