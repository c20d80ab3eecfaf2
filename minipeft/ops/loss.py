"""Softmax cross-entropy, mean over the counted tokens, ``-100`` ignored.

    loss = mean over {n : target[n] != -100} of  logsumexp(logits[n]) - logits[n, target[n]]
    dlogits[n] = (softmax(logits[n]) - onehot(target[n])) / count     (0 on ignored rows)

`shift_labels` does GPT2LMHeadModel's shift: position t is scored on labels[t + 1],
and the last position on nothing.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100


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
    p = np.exp(xs - m)
    z = p.sum(axis=-1, keepdims=True)
    p /= z                                              # softmax of counted rows
    lse = (m + np.log(z))[:, 0]                         # (n,)
    nll = lse - xs[np.arange(rows.size), t[rows]]
    loss = nll.sum() / rows.size
    return float(loss), (p, rows, t[rows], logits.shape)


def cross_entropy_backward(dloss, cache):
    """dloss scalar -> dlogits with the shape of logits."""
    p, rows, t, shape = cache
    V = shape[-1]
    dlogits = np.zeros((int(np.prod(shape[:-1])), V), dtype=p.dtype)
    g = p * (dloss / rows.size)
    g[np.arange(rows.size), t] -= dloss / rows.size
    dlogits[rows] = g
    return dlogits.reshape(shape)
