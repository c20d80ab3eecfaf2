"""GPT-2's Conv1D: a linear layer whose weight is stored [in, out].

    out = x @ w + b          x (..., in), w (in, out), b (out,)

(Hugging Face keeps OpenAI's TensorFlow layout; torch's nn.Linear is the
transpose, which is why peft needs ``fan_in_fan_out=True`` for GPT-2.)
Backward: dx = dout @ w.T;  dw = x.T @ dout;  db = dout summed over tokens.
"""
from __future__ import annotations


def linear_forward(x, w, b):
    """x (..., in) -> (..., out); cache = x."""
    out = (x.reshape(-1, w.shape[0]) @ w).reshape(*x.shape[:-1], w.shape[1])  # one 2-D product:
    if b is not None:                                    # faster than a stack of (T, in) ones
        out += b
    return out, x


def linear_backward(dout, cache, w, need_params=True):
    """dout (..., out) -> (dx (..., in), dw (in, out), db (out,)).

    With ``need_params=False`` (a frozen layer) the two weight gradients, as
    costly as the forward itself, are skipped and returned as None.
    """
    x = cache
    n_in, n_out = w.shape
    dx = (dout.reshape(-1, n_out) @ w.T).reshape(*dout.shape[:-1], n_in)   # (..., in)
    dw = db = None
    if need_params:
        d2 = dout.reshape(-1, n_out)                    # (N, out)
        if x is not None:                               # None: the caller kept no x (frozen w)
            dw = x.reshape(-1, n_in).T @ d2             # (in, out)
        db = d2.sum(axis=0)                             # (out,)
    return dx, dw, db
