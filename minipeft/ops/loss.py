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

`lm_head_loss` is what training runs: the lm_head (logits = xf wteᵀ) and the loss
together, on the counted positions only. A position whose target is -100 adds nothing
to the loss, so its logits row, its softmax and its share of the lm_head's backward
need not be computed: with completion-only labels (the prompt's tokens -100) that is
most of the lm_head, the step's largest product. The loss and every gradient are those
of the full computation (tests/test_lm_head_loss.py); only the ignored rows' work goes.
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


def lm_head_loss(xf, wte, targets, need_dwte=False, grads=True):
    """The lm_head and the loss, on the counted positions only.

    xf (..., C) the lm_head's input (ln_f's output), wte (V, C) the tied embedding,
    targets (...) ints, -100 ignored -> (loss, dxf (..., C), dwte (V, C) or None):

        rows   = the positions whose target is not -100            n of N = B·T
        logits = xf[rows] @ wteᵀ                                   (n, V), not (N, V)
        loss, dlogits = cross_entropy(logits, targets[rows])      mean over the n rows
        dxf[rows] = dlogits @ wte;  dxf = 0 elsewhere              (N, C)
        dwte   = dlogitsᵀ @ xf[rows]                               only when wte trains

    ``grads=False``: the loss alone (dxf and dwte None).
    """
    C = xf.shape[-1]
    x, t = xf.reshape(-1, C), targets.reshape(-1)
    rows = np.flatnonzero(t != IGNORE_INDEX)            # the counted positions
    xs = x[rows]                                        # (n, C)
    loss, cache = cross_entropy_forward(xs @ wte.T, t[rows])
    if not grads:
        return loss, None, None
    dlogits = cross_entropy_backward(1.0, cache)        # (n, V)
    dx = np.zeros_like(x)
    dx[rows] = dlogits @ wte                            # ignored positions: no gradient
    dwte = dlogits.T @ xs if need_dwte else None
    return loss, dx.reshape(xf.shape), dwte
