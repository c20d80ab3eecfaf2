"""Numba kernels for the loss, the fast twins of ``minipeft/ops/loss.py``.

    cross_entropy   the loss AND its gradient in one pass over the logits, written in
                    place over them: the (N, V) logits are the step's largest array
                    (512 × 50257 floats = 98 MiB at GPT-2's shape), and the twin makes
                    four more of that size (the counted rows, x - max, the softmax, the
                    gradient)
    lm_head_loss    what training runs: the lm_head and the loss on the counted positions
                    only (the twin's equations), a block of rows at a time. Each block's
                    logits (at most LOGITS_BLOCK bytes) go through cross_entropy in place and
                    straight into the lm_head's backward, and are gone before the blocks'
                    backward starts: a larger batch's (N, V) logits never exist whole, and
                    positions labelled -100 (a prompt, padding, the last position) cost
                    nothing

The cross-entropy's rows run in parallel (prange): they are 50257 wide and the next call
is the lm_head's backward, a large product that the worker threads' spin does not touch
(benchmarks/README.md). The loss is summed in float64, as the twin's.

float32 logits run ``_cross_entropy_rows_f32``: the same arithmetic in passes that LLVM
vectorises, with kernels/fastmath.py's max on integer keys and exp_f32 (within 1 ulp of
float64 exp, where the C library's expf was a call per element); z is summed in float64
in the same serial order, now the longest pass (a chain of dependent adds, ~4 cycles a
logit). Against the float64 twin on (254, 50257) N(0, 1) and N(0, 16) logits: the loss
within 2.4e-11 relative (the kernel before issue 17: 4e-12; the float32 twin: 9e-10),
dlogits within 5.9e-8 (max|a - b| / max|b|), as before. float64 keeps
``_cross_entropy_rows``, bit for bit.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..ops.loss import IGNORE_INDEX
from .fastmath import exp_f32, max_f32

# Bytes of logits at a time in lm_head_loss: one block at GPT-2 124M with batch 4 × 128 (97 MiB),
# more beyond. Each block reads wte (154 MB at GPT-2's shape) twice more: lm_head_loss at that
# shape, median of 7 interleaved: 32 MiB blocks 580 ms, 64 MiB 514 ms, 128 MiB 459 ms.
LOGITS_BLOCK = 128 * 2**20


@njit(cache=True, fastmath=False, parallel=True)
def _cross_entropy_rows(x, t, count):
    """Row n: loss += lse - x[t]; then x[n] becomes (softmax - onehot) / count (0 if ignored).
    -> the rows' summed loss / count (count: the counted rows of the whole batch). float64
    (and any dtype but float32)."""
    N, V = x.shape
    nll = np.zeros(N)
    for n in prange(N):                        # rows in parallel: see the module docstring
        if t[n] == IGNORE_INDEX:
            for j in range(V):
                x[n, j] = 0.0
            continue
        xt = np.float64(x[n, t[n]])
        m = x[n, 0]
        for j in range(1, V):
            if x[n, j] > m:
                m = x[n, j]
        z = 0.0
        for j in range(V):
            e = math.exp(x[n, j] - m)          # in x's dtype, as the twin; exp(-inf) = 0
            x[n, j] = e
            z += e                             # summed in float64
        nll[n] = np.float64(m) + math.log(z) - xt          # logsumexp - x_t, in float64
        scale = 1.0 / (z * count)
        for j in range(V):
            x[n, j] = x[n, j] * scale
        x[n, t[n]] -= 1.0 / count
    return nll.sum() / count


@njit(cache=True, fastmath=False, error_model="numpy", parallel=True)
def _cross_entropy_rows_f32(x, t, count):
    """_cross_entropy_rows for float32 logits, each pass over a row vectorised: the max on
    the floats' integer keys (max_f32), exp_f32 (kernels/fastmath.py) in its own pass; z is
    still summed in float64, serially, in the same order."""
    N, V = x.shape
    nll = np.zeros(N)
    for n in prange(N):                        # rows in parallel: see the module docstring
        row = x[n]
        if t[n] == IGNORE_INDEX:
            for j in range(V):
                row[j] = 0.0
            continue
        xt = np.float64(row[t[n]])
        m = max_f32(row)
        for j in range(V):
            row[j] = exp_f32(row[j] - m)       # x - m in float32, as the twin; exp(-inf) = 0
        z = 0.0
        for j in range(V):
            z += row[j]                        # summed in float64
        nll[n] = np.float64(m) + math.log(z) - xt          # logsumexp - x_t, in float64
        scale = 1.0 / (z * count)
        for j in range(V):
            row[j] = row[j] * scale
        row[t[n]] -= 1.0 / count
    return nll.sum() / count


def _cross_entropy_inplace(x, t, count):
    """x (N, V) logits -> dlogits in place; -> the rows' summed loss / count."""
    kernel = _cross_entropy_rows_f32 if x.dtype == np.float32 else _cross_entropy_rows
    return kernel(x, t, count)


def cross_entropy(logits, targets):
    """logits (..., V), targets (...) -> (loss, dlogits): the loss and its gradient in one
    pass, the gradient written over ``logits`` (which the caller gives up)."""
    V = logits.shape[-1]
    x = logits.reshape(-1, V)
    if not x.flags.c_contiguous:
        raise ValueError("cross_entropy works in place: logits must be C-contiguous")
    t = np.ascontiguousarray(targets.reshape(-1), dtype=np.int64)
    count = int(np.count_nonzero(t != IGNORE_INDEX))
    loss = _cross_entropy_inplace(x, t, count)
    return float(loss), logits


def block_rows(n: int, V: int, itemsize: int, budget: int | None = None) -> int:
    """Rows per block: as few blocks as keep each block's (rows, V) logits within ``budget``
    bytes (default LOGITS_BLOCK), the rows shared evenly (2 × 508 rather than 667 + 349)."""
    budget = LOGITS_BLOCK if budget is None else budget
    blocks = max(1, math.ceil(n * V * itemsize / budget))
    return max(1, math.ceil(n / blocks))


def lm_head_loss(xf, wte, targets, need_dwte=False, grads=True):
    """xf (..., C), wte (V, C), targets (...) -> (loss, dxf (..., C), dwte (V, C) or None),
    as the twin; ``grads=False``: the loss alone."""
    C, V = xf.shape[-1], wte.shape[0]
    x = xf.reshape(-1, C)
    t = np.ascontiguousarray(targets.reshape(-1), dtype=np.int64)
    rows = np.flatnonzero(t != IGNORE_INDEX)                # the counted positions
    n = rows.size
    dx = np.zeros_like(x) if grads else None
    dwte = np.zeros_like(wte) if grads and need_dwte else None
    loss, step = 0.0, block_rows(n, V, x.itemsize)
    for start in range(0, n, step):
        r = rows[start:start + step]
        xs = x[r]                                           # (b, C) this block's positions
        logits = xs @ wte.T                                 # (b, V)
        loss += _cross_entropy_inplace(logits, t[r], n)     # logits -> dlogits, in place
        if grads:
            dx[r] = logits @ wte                            # (b, C)
            if dwte is not None:
                dwte += logits.T @ xs                       # (V, C)
    if not grads:
        return float(loss), None, None
    return float(loss), dx.reshape(xf.shape), dwte
