"""The Numba attention kernels (minipeft.kernels.attention) against their NumPy twins
(minipeft.ops.attention): forward and backward, every output and the cache, over
prefix/past + causal keys, with padding (a query row that sees no key at all
included), a mask per row or shared, strided inputs, float32 and float64; and a float64
finite-difference check of the kernel's backward. float32 runs its own kernels (exp_f32,
integer max: kernels/fastmath.py), float64 the arithmetic it had before issue 17, bit
for bit (a Python transcription of its loops).

Tolerances (max|a - b| / max|b| per tensor):
- float64 1e-12: the same math, sums in another order (loops vs NumPy's pairwise sums).
- float32 1e-5: float32 sums over Tk (≤ 40 terms here) in another order.
- finite differences 1e-7: central differences, h = 1e-6, on outputs of size ~1.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from minipeft.kernels import attention as K
from minipeft.ops import attention as T
from minipeft.ops import attention_mask_allowed
from minipeft.testing import assert_close, grad_check

TOL = {np.float32: 1e-5, np.float64: 1e-12}
B, NH, TQ, HS = 3, 2, 6, 8


def make(dtype, past, padded, seed=0):
    """q (B, NH, TQ, HS) and k, v over past + TQ keys, q strided; dy; the allowed mask."""
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.standard_normal(shape).astype(dtype)
    q = f(B, NH, HS, TQ).swapaxes(-1, -2)                    # strided: not C-contiguous
    assert not q.flags.c_contiguous
    mask = None
    if padded:
        mask = np.ones((B, past + TQ), dtype=bool)
        mask[0, past:past + 2] = False                       # left padding after the prefix
        mask[1, :past + 3] = False                           # no prefix: row 1's first queries see nothing
    return dict(q=q, k=f(B, NH, past + TQ, HS), v=f(B, NH, past + TQ, HS), dy=f(B, NH, TQ, HS),
                allowed=attention_mask_allowed(TQ, past + TQ, mask))


CASES = pytest.mark.parametrize("past,padded", [(0, False), (5, False), (5, True), (0, True)],
                                ids=["causal", "prefix", "prefix-padded", "padded"])
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64])


def test_same_signatures():
    for name in ("attention_forward", "attention_backward"):
        assert inspect.signature(getattr(K, name)) == inspect.signature(getattr(T, name))


@DTYPES
@CASES
def test_kernel_equals_twin(dtype, past, padded):
    d = make(dtype, past, padded)
    args = (d["q"], d["k"], d["v"], d["allowed"])
    y, cache = K.attention_forward(*args)
    y_t, cache_t = T.attention_forward(*args)
    names = ("q", "k", "v", "p")
    ours = {"y": y, **dict(zip(names, cache))}
    ref = {"y": y_t, **dict(zip(names, cache_t))}
    assert_close(ours, ref, TOL[dtype])
    assert all(a.dtype == dtype for a in ours.values())
    if padded and past == 0:
        assert not y_t[1, :, :3].any() and not y[1, :, :3].any()  # rows that see no key: y = 0
    # backward from the twin's cache into both
    grads = dict(zip(("dq", "dk", "dv"), K.attention_backward(d["dy"], cache_t)))
    grads_t = dict(zip(("dq", "dk", "dv"), T.attention_backward(d["dy"], cache_t)))
    assert_close(grads, grads_t, TOL[dtype])
    assert all(a.dtype == dtype for a in grads.values())


def test_large_scores_float32():
    """Scores of ~1e4: the row max keeps exp finite in both."""
    d = make(np.float32, 5, True)
    q = d["q"] * np.float32(300.0)
    y, c = K.attention_forward(q, d["k"], d["v"], d["allowed"])
    y_t, c_t = T.attention_forward(q, d["k"], d["v"], d["allowed"])
    assert np.isfinite(y).all() and np.isfinite(c[3]).all()
    assert_close({"y": y, "p": c[3]}, {"y": y_t, "p": c_t[3]}, 1e-5)


@CASES
def test_kernel_finite_differences(past, padded):
    d = make(np.float64, past, padded)
    inputs = {"q": np.ascontiguousarray(d["q"]), "k": d["k"], "v": d["v"]}
    allowed = d["allowed"]
    forward = lambda q, k, v: K.attention_forward(q, k, v, allowed)[0]
    _, cache = K.attention_forward(**inputs, allowed=allowed)
    backward = lambda dy: dict(zip(("q", "k", "v"), K.attention_backward(dy, cache)))
    errors = grad_check(forward, inputs, backward)
    assert max(errors.values()) <= 1e-7, errors


def softmax_python(s, allowed, scale):
    """The float64 kernel's loops (_masked_softmax, in place) in Python floats: the allowed
    scores' max, math.exp (the C library's, as in Numba), z summed in order, p = e / z."""
    p = np.zeros_like(s)
    for b, h, i in np.ndindex(s.shape[:3]):
        ok = allowed[b if allowed.shape[0] > 1 else 0, 0, i]
        x = [float(v) * scale for v in s[b, h, i]]
        m = max([x[j] for j in range(len(x)) if ok[j]], default=-math.inf)
        m = m if math.isfinite(m) else 0.0
        e = [math.exp(x[j] - m) if ok[j] else 0.0 for j in range(len(x))]
        z = 0.0
        for v in e:
            z += v
        p[b, h, i] = [v / (z if z != 0 else 1.0) for v in e]
    return p


def softmax_backward_python(dp, p, scale):
    """_softmax_backward's loops in Python floats: ds = p (dp - sum(dp p)) scale."""
    ds = np.empty_like(dp)
    for r in np.ndindex(dp.shape[:3]):
        dot = 0.0
        for d, q in zip(dp[r], p[r]):
            dot += float(d) * float(q)
        ds[r] = [float(q) * (float(d) - dot) * scale for d, q in zip(dp[r], p[r])]
    return ds


@CASES
def test_float64_is_the_arithmetic_before_issue_17(past, padded):
    d = make(np.float64, past, padded, seed=1)
    q, k, v = np.ascontiguousarray(d["q"]), d["k"], d["v"]
    scale = 1.0 / np.sqrt(HS)
    y, cache = K.attention_forward(q, k, v, d["allowed"])
    p = softmax_python(q @ k.swapaxes(-1, -2), d["allowed"], scale)
    assert np.array_equal(cache[3], p) and np.array_equal(y, p @ v)
    ds = softmax_backward_python(d["dy"] @ v.swapaxes(-1, -2), p, scale)
    dq, dk, dv = K.attention_backward(d["dy"], cache)
    assert np.array_equal(dq, ds @ k) and np.array_equal(dk, ds.swapaxes(-1, -2) @ q)
    assert np.array_equal(dv, p.swapaxes(-1, -2) @ d["dy"])


@DTYPES
def test_long_rows_and_exact_weights(dtype):
    """Tk = 45 + 70 keys (the float32 kernel's vectorised passes, a partial last register),
    padded: the twin within TOL; exact weights where the softmax is exact: a query that sees
    one key gives it p = 1 (exp(0) = 1), every hidden key has p = 0."""
    rng = np.random.default_rng(11)
    past, tq = 45, 70
    q, k, v, dy = (rng.standard_normal((2, 3, n, HS)).astype(dtype) for n in (tq, past + tq, past + tq, tq))
    mask = np.ones((2, past + tq), dtype=bool)
    mask[1, :past + 20] = False                               # row 1's first 21 queries see 0 or 1 key
    allowed = attention_mask_allowed(tq, past + tq, mask)
    (y, cache), (y_t, cache_t) = K.attention_forward(q, k, v, allowed), T.attention_forward(q, k, v, allowed)
    assert_close({"y": y, "p": cache[3]}, {"y": y_t, "p": cache_t[3]}, TOL[dtype])
    grads = dict(zip(("dq", "dk", "dv"), K.attention_backward(dy, cache_t)))
    assert_close(grads, dict(zip(("dq", "dk", "dv"), T.attention_backward(dy, cache_t))), TOL[dtype])
    p = cache[3]
    assert not p[~np.broadcast_to(allowed, p.shape)].any()  # hidden keys: exactly 0
    assert np.all(p[1, :, 20, past + 20] == 1) and not p[1, :, :20].any()   # one key: 1; none: 0
