"""Softmax cross-entropy, mean over the counted tokens, ``-100`` ignored.

    loss = mean over {n : target[n] != -100} of  logsumexp(logits[n]) - logits[n, target[n]]
    dlogits[n] = (softmax(logits[n]) - onehot(target[n])) / count     (0 on ignored rows)

`shift_labels` does GPT2LMHeadModel's shift: position t is scored on labels[t + 1],
and the last position on nothing.

Extreme logits: the softmax subtracts the row's max, so exp never overflows; where
x - max itself overflows to -inf (float32 logits of ±3e38) the probability is 0, which
is right. The loss is a Python float, so logsumexp - logit and the mean are taken in
float64: float32 logits of ±3e38 give a finite loss of 6e38 (torch's float32 gives inf).
A target whose logit is -inf has probability 0 and loss inf, as in torch.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE_INDEX = -100


class CrossEntropyCache(NamedTuple):
    p: np.ndarray                           # (n, V) the softmax of the n counted rows
    rows: np.ndarray                        # (n,) their indices among the N = B·T rows
    targets: np.ndarray                     # (n,) their targets
    shape: tuple                            # (..., V) of the logits


def shift_labels(labels):
    """(B, T) labels -> (B, T) targets: targets[:, t] = labels[:, t + 1], last = -100."""
    targets = np.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets


def cross_entropy_forward(logits, targets):
    """logits (..., V), targets (...) ints -> (loss float, cache).

    The caller makes sure at least one target is counted.
    """
    V = logits.shape[-1]
    x = logits.reshape(-1, V)                           # (N, V)
    t = targets.reshape(-1)                             # (N,)
    rows = np.flatnonzero(t != IGNORE_INDEX)            # counted rows
    xs = x[rows]                                        # (n, V)
    m = xs.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore"):                    # x - m = -inf where p is 0 anyway
        p = np.exp(xs - m)
    z = p.sum(axis=-1, keepdims=True)
    p /= z                                              # softmax of counted rows
    lse = m[:, 0].astype(np.float64) + np.log(z[:, 0], dtype=np.float64)   # (n,) float64
    nll = lse - xs[np.arange(rows.size), t[rows]]       # (n,) float64
    loss = nll.sum() / rows.size
    return float(loss), CrossEntropyCache(p, rows, t[rows], logits.shape)


def cross_entropy_backward(dloss, cache):
    """dloss scalar -> dlogits with the shape of logits."""
    p, rows, t, shape = cache
    V = shape[-1]
    dlogits = np.zeros((int(np.prod(shape[:-1])), V), dtype=p.dtype)
    g = p * (dloss / rows.size)
    g[np.arange(rows.size), t] -= dloss / rows.size
    dlogits[rows] = g
    return dlogits.reshape(shape)


def cross_entropy(logits, targets):
    """-> (loss, dlogits): the forward and the backward for dloss = 1, in one call (the
    twin of the fused kernel in kernels/ops.py, which writes dlogits over the logits)."""
    loss, cache = cross_entropy_forward(logits, targets)
    return loss, cross_entropy_backward(1.0, cache)
