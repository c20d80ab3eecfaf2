"""Numba kernels for LoRA and DoRA, the fast twins of ``minipeft.peft.lora``.

The plain NumPy functions in minipeft/peft/lora.py are the reference: each kernel
here has the same signature and returns the same values, cache tuples included,
so the two replace each other one for one; tests/test_lora_kernels.py holds them
equal. Each loop quotes the twin line it implements. What each kernel fuses:

    lora_forward      the scaling folded into B (out, r) rather than a pass over
                      delta (N, out); the dropout multiply is one loop
    lora_backward     the dropout mask applied to dx in place
    dora_weight_norm  W + s (BA)ᵀ, its square and the sum over `in` in one pass
    dora_forward      (g − 1) ⊙ base + g ⊙ delta in one pass, no temporaries
    dora_backward     dbase, ddelta and the dmagnitude reduction in one pass

Design, measured at N=512, in=768, out=2304, r=8, float32 (2-core CPU, OpenBLAS):

* The products go to BLAS through np.dot (scipy's OpenBLAS, as Numba links it).
  Loops lose: with fastmath=False LLVM may not reorder a floating-point sum, so a
  reduction does not vectorise. Written as loops, forward took 1.8 ms (0.92 ms with
  prange) and backward over 6.7 ms (6.2 ms with prange), against 0.42 and 0.96 ms below.
* Serial, no parallel=True: prange halved the DoRA loops timed alone, but Numba's
  OpenMP threads keep spinning after a parallel loop and starve the next OpenBLAS
  call (a prange loop then a small matmul: 8.1 ms a pair against 0.5 ms serial;
  cf. OpenBLAS issue #3187). In a training step every kernel sits between BLAS calls.
* Kernel against twin, median of 50 calls:
      lora_forward       0.42 ms vs 0.66 ms    with dropout 0.60 vs 0.90 ms
      lora_backward      0.96 ms vs 0.88 ms    with dropout 1.05 vs 1.07 ms
      dora_weight_norm   0.97 ms vs 17.9 ms    (the twin adds W to a transposed view)
      dora_forward       0.57 ms vs 1.51 ms
      dora_backward      0.95 ms vs 1.87 ms
"""
from __future__ import annotations

import numpy as np
from numba import njit

_jit = dict(cache=True, fastmath=False)   # fastmath off: keep the twin's arithmetic


def _c(a, dtype):
    """C-contiguous in `dtype`: copies only a strided view or another dtype."""
    return np.ascontiguousarray(a, dtype=dtype)


# ------------------------------------------------------------------ LoRA
@njit(**_jit)
def _lora_forward(x, A, Bs, mask):
    N, n_in = x.shape
    if mask is None:                       # xd = x if mask is None else x * mask
        xd = x
    else:
        xd = np.empty_like(x)                                   # (N, in)
        for n in range(N):
            for i in range(n_in):
                xd[n, i] = x[n, i] * mask[n, i]
    u = np.dot(xd, A.T)                    # u = xd @ A.T                  (N, r)
    delta = np.dot(u, Bs.T)                # delta = u @ B.T; delta *= scaling, Bs = s·B
    return delta, xd, u                                         # (N, out)


def lora_forward(x, A, B, scaling, mask=None):
    """x (N, in) -> the update s · drop(x) Aᵀ Bᵀ (N, out); cache (xd, u)."""
    dt = np.result_type(x, A, B)
    Bs = _c(B, dt) * dt.type(scaling)                           # (out, r)
    m = None if mask is None else _c(mask, dt)
    delta, xd, u = _lora_forward(_c(x, dt), _c(A, dt), Bs, m)
    return delta, (xd, u)


@njit(**_jit)
def _lora_backward(ddelta, xd, u, A, B, s, mask):
    dB = np.dot(ddelta.T, u)               # dB = scaling * (ddelta.T @ u)  (out, r)
    dB *= s
    du = np.dot(ddelta, B)                 # du = scaling * (ddelta @ B)    (N, r)
    du *= s
    dA = np.dot(du.T, xd)                  # dA = du.T @ xd                 (r, in)
    dx = np.dot(du, A)                     # dx = du @ A                    (N, in)
    if mask is not None:                   # dx *= mask
        N, n_in = dx.shape
        for n in range(N):
            for i in range(n_in):
                dx[n, i] *= mask[n, i]
    return dx, dA, dB


def lora_backward(ddelta, cache, A, B, scaling, mask=None):
    """ddelta (N, out) -> (dx (N, in), dA (r, in), dB (out, r))."""
    xd, u = cache
    dt = np.result_type(ddelta, A, B)
    m = None if mask is None else _c(mask, dt)
    return _lora_backward(_c(ddelta, dt), _c(xd, dt), _c(u, dt), _c(A, dt), _c(B, dt),
                          dt.type(scaling), m)


# ------------------------------------------------------------------ DoRA
@njit(**_jit)
def _dora_weight_norm(W, A, B, s):
    n_in, n_out = W.shape
    BA_T = np.dot(A.T, B.T)                # delta_weight = scaling * (B @ A).T   (in, out)
    sq = np.zeros(n_out, W.dtype)                               # (out,)
    for i in range(n_in):                  # merged = W + delta_weight
        for o in range(n_out):             # np.sum(merged * merged, axis=0)
            w = W[i, o] + s * BA_T[i, o]
            sq[o] += w * w
    return np.sqrt(sq)                     # np.sqrt(...)


def dora_weight_norm(W, A, B, scaling):
    """‖W0 + s (BA)ᵀ‖ over `in` for each output column: (out,). Treated as a constant."""
    dt = np.result_type(W, A, B)
    return _dora_weight_norm(_c(W, dt), _c(A, dt), _c(B, dt), dt.type(scaling))


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
    return extra, (base, delta, g, norm)


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
