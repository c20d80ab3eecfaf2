"""Causal multi-head self-attention (Vaswani et al. 2017), as GPT-2 computes it.

    q, k, v = split(x @ w_attn + b_attn)          each (B, NH, T, hs), hs = C / NH
    s = q @ k^T / sqrt(hs)                         (B, NH, Tq, Tk)
    s[not allowed] = -inf                           causal + padding mask
    p = softmax(s, axis=-1)
    y = p @ v                                       (B, NH, Tq, hs)

Keys may be longer than queries (Tk = past + Tq: a KV cache or a prefix); the
query at position t sees every key up to past + t. A query that may see no key
at all (a left-padding row) gets p = 0 and so y = 0. Subtracting the row's max keeps
exp from overflowing; for float32 scores of ±3e38, s - m overflows to -inf exactly
where p is 0 anyway.

Backward, with dy upstream:
    dv = p^T @ dy;  dp = dy @ v^T
    ds = p * (dp - sum(dp * p, axis=-1))           softmax backward
    dq = ds @ k / sqrt(hs);  dk = ds^T @ q / sqrt(hs)
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class AttentionCache(NamedTuple):
    q: np.ndarray                           # (B, NH, Tq, hs)
    k: np.ndarray                           # (B, NH, Tk, hs), past or prefix keys first
    v: np.ndarray                           # (B, NH, Tk, hs)
    p: np.ndarray                           # (B, NH, Tq, Tk) the attention weights


def split_heads(qkv, n_head):
    """(B, T, 3C) -> q, k, v each (B, NH, T, hs), contiguous."""
    B, T, C3 = qkv.shape
    hs = C3 // (3 * n_head)
    x = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)   # (3, B, NH, T, hs)
    x = np.ascontiguousarray(x)
    return x[0], x[1], x[2]


def split_heads_backward(dq, dk, dv):
    """Backward of split_heads: 3 × (B, NH, T, hs) -> dqkv (B, T, 3C)."""
    B, NH, T, hs = dq.shape
    d = np.stack([dq, dk, dv])                                      # (3, B, NH, T, hs)
    return np.ascontiguousarray(d.transpose(1, 3, 0, 2, 4)).reshape(B, T, 3 * NH * hs)


def merge_heads(y):
    """(B, NH, T, hs) -> (B, T, C)."""
    B, NH, T, hs = y.shape
    return np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(B, T, NH * hs)


def merge_heads_backward(dout, n_head):
    """Backward of merge_heads: (B, T, C) -> dy (B, NH, T, hs)."""
    B, T, C = dout.shape
    return np.ascontiguousarray(dout.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3))


def attention_mask_allowed(Tq, Tk, key_mask=None):
    """Which keys each query may see: (B|1, 1, Tq, Tk) bool.

    Query t (0-based among the Tq new tokens) sees keys 0 .. (Tk - Tq) + t.
    ``key_mask`` (B, Tk) of 0/1 hides padding keys.
    """
    past = Tk - Tq
    allowed = np.tri(Tq, Tk, k=past, dtype=bool)[None, None]        # (1, 1, Tq, Tk)
    if key_mask is not None:
        allowed = allowed & key_mask.astype(bool)[:, None, None, :]  # (B, 1, Tq, Tk)
    return allowed


def attention_forward(q, k, v, allowed):
    """q (B, NH, Tq, hs), k, v (B, NH, Tk, hs), allowed (B|1, 1, Tq, Tk) -> y (B, NH, Tq, hs)."""
    hs = q.shape[-1]
    scale = 1.0 / np.sqrt(hs)
    s = q @ k.swapaxes(-1, -2)                          # (B, NH, Tq, Tk)
    s *= scale
    s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m[~np.isfinite(m)] = 0.0                            # rows with no visible key
    with np.errstate(over="ignore"):                    # s - m = -inf where p is 0 anyway
        p = np.exp(s - m, out=s)                        # reuse the scores' memory
    z = p.sum(axis=-1, keepdims=True)
    z[z == 0] = 1.0                                     # such rows stay all zero
    p /= z
    y = p @ v                                           # (B, NH, Tq, hs)
    return y, AttentionCache(q, k, v, p)


def attention_backward(dy, cache):
    """dy (B, NH, Tq, hs) -> dq, dk, dv with the shapes of q, k, v."""
    q, k, v, p = cache
    scale = 1.0 / np.sqrt(q.shape[-1])
    dv = p.swapaxes(-1, -2) @ dy                        # (B, NH, Tk, hs)
    dp = dy @ v.swapaxes(-1, -2)                        # (B, NH, Tq, Tk)
    ds = dp
    ds -= np.sum(dp * p, axis=-1, keepdims=True)
    ds *= p                                             # softmax backward
    ds *= scale
    dq = ds @ k                                         # (B, NH, Tq, hs)
    dk = ds.swapaxes(-1, -2) @ q                        # (B, NH, Tk, hs)
    return dq, dk, dv
