"""Numba kernels for IA3, the fast twins of ``minipeft.peft.ia3``.

Each kernel has its twin's signature and returns the same values, cache included;
tests/test_ia3.py holds the two equal. IA3 is elementwise, so there is no matrix
product to leave to BLAS here; what each kernel fuses:

    ia3_forward     y = u ⊙ l in one pass (strided u, e.g. a q/k/v slice, read in place)
    ia3_backward    du = dy ⊙ l and the reduction dl = Σ_n dy ⊙ u in one pass over dy
                    (the twin makes two: a product, then einsum)
    merge_weight    W ⊙ l and b ⊙ l in one pass each, without NumPy's broadcast temporaries
    unmerge_weight  the same with a division

Serial, as the LoRA kernels (see minipeft/kernels/lora.py): every kernel sits between
BLAS calls, and Numba's OpenMP threads would keep spinning and starve them.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_jit = dict(cache=True, fastmath=False)   # fastmath off: keep the twin's arithmetic


@njit(**_jit)
def _scale(u, l):
    N, n = u.shape
    y = np.empty((N, n), u.dtype)                               # (N, n)
    for i in range(N):                     # y = u * l
        for k in range(n):
            y[i, k] = u[i, k] * l[k]
    return y


def ia3_forward(u, l):
    """u (N, n) ⊙ l (n,) -> (y (N, n), cache u)."""
    dt = np.result_type(u, l)
    return _scale(np.asarray(u, dt), np.ascontiguousarray(l, dt)), u


@njit(**_jit)
def _ia3_backward(dy, u, l):
    N, n = dy.shape
    du = np.empty((N, n), dy.dtype)                             # (N, n)
    dl = np.zeros(n, dy.dtype)                                  # (n,)
    for i in range(N):
        for k in range(n):
            d = dy[i, k]
            du[i, k] = d * l[k]            # du = dy * l
            dl[k] += d * u[i, k]           # dl = np.einsum("nk,nk->k", dy, u)
    return du, dl


def ia3_backward(dy, u, l):
    """dy (N, n) -> (du (N, n), dl (n,)), for y = u ⊙ l."""
    dt = np.result_type(dy, u, l)
    return _ia3_backward(np.asarray(dy, dt), np.asarray(u, dt), np.ascontiguousarray(l, dt))


@njit(**_jit)
def _fold(W, b, l, feedforward, divide):
    n_in, n_out = W.shape
    W2 = np.empty((n_in, n_out), W.dtype)                       # (in, out)
    b2 = b.copy()                                               # (out,)
    for i in range(n_in):
        for o in range(n_out):
            s = l[i] if feedforward else l[o]   # rows (input) or columns (output)
            W2[i, o] = W[i, o] / s if divide else W[i, o] * s
    if not feedforward:
        for o in range(n_out):             # b * l  /  b / l
            b2[o] = b[o] / l[o] if divide else b[o] * l[o]
    return W2, b2


def merge_weight(W, b, l, feedforward):
    """Fold l into a Conv1D layer: -> (W' (in, out), b' (out,)), new arrays.
    Input scaling (feedforward) scales W's rows; output scaling its columns and b."""
    dt = np.result_type(W, b, l)
    return _fold(np.asarray(W, dt), np.asarray(b, dt), np.ascontiguousarray(l, dt),
                 bool(feedforward), False)


def unmerge_weight(W, b, l, feedforward):
    """Inverse of merge_weight: divide l back out (exact division; every l must be ≠ 0)."""
    dt = np.result_type(W, b, l)
    return _fold(np.asarray(W, dt), np.asarray(b, dt), np.ascontiguousarray(l, dt),
                 bool(feedforward), True)
